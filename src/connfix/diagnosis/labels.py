"""How connfix shows an application_name, everywhere (tables, reports, metrics): a
module of its own, so that printing one does not load the diagnosis's model."""

from __future__ import annotations

NO_APPLICATION = "(none)"  # how every table, report and metric shows an empty application_name


def app_label(name: str | None) -> str:
    """An application_name as connfix shows it: the empty one as (none), everywhere."""
    return name or NO_APPLICATION
