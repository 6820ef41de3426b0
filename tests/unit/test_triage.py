"""The journal's redactor on its own: secrets and password patterns removed."""

from __future__ import annotations


def test_redactor_removes_secrets_and_password_patterns() -> None:
    from connfix.record.journal import Redactor

    redact = Redactor(["s3cr3t-value"])
    assert redact("x s3cr3t-value y") == "x *** y"
    assert redact("host=db password=hunter2 user=x") == "host=db password=*** user=x"
    assert redact("postgresql://u:hunter2@db/app") == "postgresql://u:***@db/app"
