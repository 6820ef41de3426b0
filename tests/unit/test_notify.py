"""Notifications and metrics without a lab: a Slack URL never written in the inventory,
low-cardinality metrics, a send bounded by one deadline, no redirect followed."""

from __future__ import annotations

import pytest

from tests.receiver import receiver


def test_a_slack_url_is_never_written_in_the_inventory() -> None:
    from connfix.config.inventory import NotifyTarget
    from connfix.config.records import Invalid

    with pytest.raises(Invalid, match="secret: give it by environment variable"):
        NotifyTarget.validate({"kind": "slack", "url": "https://hooks.slack.com/x"})
    with pytest.raises(Invalid, match="give url or url_env"):
        NotifyTarget.validate({"kind": "webhook"})
    with pytest.raises(Invalid, match="http:// or https://"):
        NotifyTarget.validate({"kind": "webhook", "url": "file:///etc/passwd"})


def test_metrics_keep_cardinality_low() -> None:
    """50 application names become the 20 largest and (other); no pid, address or query."""
    from connfix.record import metrics
    from tests.builders import backend, diagnosis, environment, state

    env = environment()
    rows = []
    for i in range(50):
        b = backend(100 + i, "10.0.0.1")
        rows.append(type(b)(**{**b.__dict__, "application_name": f"app-{i}"}))
    d = diagnosis(env, rows, state([], []))
    text = metrics.text([d], ["other-env"]).decode()
    apps = [
        line for line in text.splitlines() if line.startswith("connfix_connections_by_application{")
    ]
    assert len(apps) == 21 and any('application="(other)"' in line for line in apps)
    assert 'connfix_up{environment="other-env"} 0.0' in text
    assert 'connfix_up{environment="prod"} 1.0' in text
    assert "10.0.0.1" not in text and "SELECT" not in text and "pid" not in text


def test_a_trickling_target_cannot_hold_a_send_past_its_timeout() -> None:
    """The target answers one byte every 0.2 s for 20 s; the send's 1 s timeout is the
    whole send's, not each read's."""
    import time

    from connfix.record.notify import post

    with receiver() as rx:
        rx.trickle["/slow"] = 20
        started = time.monotonic()
        error = post(rx.url + "/slow", {"text": "x"}, 1.0)
        took = time.monotonic() - started
    assert error is not None and "no complete answer within 1s" in error
    assert took < 2.5, took


def test_a_redirect_is_not_followed_and_not_called_delivered() -> None:
    from connfix.record.notify import post

    with receiver() as rx:
        rx.redirect["/moved"] = rx.url + "/elsewhere"
        error = post(rx.url + "/moved", {"text": "x"}, 3.0)
        followed = [p for p in rx.posts if p["path"] == "/elsewhere"]
    assert error is not None and "HTTP 302, a redirect; connfix does not follow it" in error
    assert not followed
