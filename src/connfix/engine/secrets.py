"""The secret values a run must never journal, print or report, found from the
environment's configuration."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connfix.config.inventory import Environment


def secrets_of(env: Environment) -> list[str]:
    """Return the secret values this environment's configuration points at: every
    `*_password_env` and `*_dsn_env` (ordinary, reserved, admin, PgBouncer), the
    passwords inside those DSNs, and PGPASSWORD."""
    from connfix.config import redact

    found = []
    db = env.database
    password_vars = [db.password_env, db.reserved_password_env, db.admin_password_env]
    for bouncer in env.pgbouncers:
        password_vars.append(bouncer.admin_password_env)
    for target in env.notify:  # a webhook URL is a capability: never journaled
        password_vars.append(target.url_env)
        if target.url:
            found.append(target.url)
    for var in password_vars:
        if var and os.environ.get(var):
            found.append(os.environ[var])
    for var in (db.reserved_dsn_env, db.admin_dsn_env):
        if var and os.environ.get(var):
            dsn = os.environ[var]
            found.append(dsn)
            found += redact.dsn_secrets(dsn)  # read tolerantly: malformed or not
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    return [s for s in found if s]
