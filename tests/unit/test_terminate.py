"""The shipped runbook's order of terminations, read without a lab."""

from __future__ import annotations


def test_default_runbook_terminates_idle_in_transaction_before_long_idle() -> None:
    from connfix.engine.runbook import resolve_runbook

    steps = resolve_runbook(None).steps
    ids = [s.id for s in steps]
    iit, idle = ids.index("terminate-idle-in-transaction"), ids.index("terminate-leaked-idle")
    assert iit < idle < ids.index("verify-after-terminate")
    assert steps[iit].params.states == [
        "idle_in_transaction",  # type: ignore[attr-defined]
        "idle_in_transaction_aborted",
    ]
    assert steps[idle].confirm and steps[iit].confirm
