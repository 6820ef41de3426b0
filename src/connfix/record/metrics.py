"""A diagnosis as Prometheus metrics: `connfix serve`'s /metrics and `diagnose
--prometheus-textfile PATH` (node_exporter's textfile collector).

Names follow Prometheus' conventions (a `connfix_` prefix, base units, `_ratio` and
`_seconds` suffixes; every metric a gauge). Labels stay low-cardinality: environment,
inventory host (or a PgBouncer's row), session state, PgBouncer name; the application
and user breakdowns keep the largest TOP_LABELS and sum the rest under "(other)". Never
a pid, an address or query text.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, generate_latest, write_to_textfile

from connfix.diagnosis.labels import app_label

if TYPE_CHECKING:
    from connfix.diagnosis.model import Diagnosis

TOP_LABELS = 20
SEVERITY = {"ok": 0, "warning": 1, "critical": 2}
OTHER = "(other)"


def _top(counts: dict[str, int]) -> dict[str, int]:
    """The largest TOP_LABELS entries, the rest summed under (other)."""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    kept = dict(ranked[:TOP_LABELS])
    rest = sum(v for _, v in ranked[TOP_LABELS:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    return kept


# Over 80 lines: each gauge declared with its help text, then set; a table in code.
def registry(diagnoses: list[Diagnosis], down: list[str] | None = None) -> CollectorRegistry:
    """A registry holding the metrics of the latest diagnosis of each environment (of
    each node, labelled `node`, when an environment has several); `down`: environments
    whose database could not be diagnosed (connfix_up 0)."""
    reg = CollectorRegistry()
    per_node = any(d.node for d in diagnoses)
    base = ("environment", "node") if per_node else ("environment",)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, (*base, *labels), registry=reg)

    def key(d: Diagnosis) -> tuple[str, ...]:
        return (d.environment, d.node or "") if per_node else (d.environment,)

    usable = gauge("connfix_usable_connections", "Connections ordinary roles may open.")
    backends = gauge("connfix_client_backends", "Client backends open, connfix's own included.")
    utilization = gauge("connfix_utilization_ratio", "Client backends ÷ usable connections.")
    severity = gauge("connfix_severity", "Severity of the diagnosis: 0 ok, 1 warning, 2 critical.")
    by_state = gauge("connfix_connections_by_state", "Client backends by state.", ("state",))
    by_host = gauge(
        "connfix_host_connections",
        "Sessions per inventory host (or PgBouncer row), by state.",
        ("host", "state"),
    )
    pooled = gauge(
        "connfix_host_pgbouncer_clients",
        "Client connections a host holds open in PgBouncers.",
        ("host",),
    )
    suspect = gauge("connfix_host_leak_suspect", "1 when the host is a leak suspect.", ("host",))
    by_app = gauge(
        "connfix_connections_by_application",
        "Client backends by application_name.",
        ("application",),
    )
    by_user = gauge("connfix_connections_by_user", "Client backends by role.", ("user",))
    suspects = gauge("connfix_leak_suspects", "Hosts suspected of leaking connections.")
    oldest_iit = gauge(
        "connfix_idle_in_transaction_oldest_seconds",
        "Age of the oldest transaction left idle (0: none).",
    )
    iit = gauge("connfix_idle_in_transaction_sessions", "Sessions idle in transaction.")
    waiting = gauge(
        "connfix_pgbouncer_clients_waiting",
        "Clients waiting for a server connection.",
        ("pgbouncer",),
    )
    bouncer_up = gauge(
        "connfix_pgbouncer_up",
        "1 when the PgBouncer's admin console could be read.",
        ("pgbouncer",),
    )
    taken = gauge(
        "connfix_diagnosis_timestamp_seconds", "When the diagnosis was taken (Unix time)."
    )
    seconds = gauge("connfix_diagnosis_duration_seconds", "How long the snapshot took.")
    up = gauge("connfix_up", "1 when the environment's database could be diagnosed.")
    primary = (
        gauge("connfix_node_primary", "1 for the primary, 0 for a hot standby.")
        if per_node
        else None
    )
    for name in down or []:
        up.labels(name, *([""] if per_node else [])).set(0)
    for d in diagnoses:
        up.labels(*key(d)).set(1)
        env = key(d)
        if primary is not None:
            primary.labels(*env).set(1 if d.role == "primary" else 0)
        usable.labels(*env).set(d.usable_connections)
        backends.labels(*env).set(d.client_backends)
        utilization.labels(*env).set(d.utilization)
        severity.labels(*env).set(SEVERITY.get(d.severity, 2))
        for state, n in d.by_state.items():
            by_state.labels(*env, state).set(n)
        for h in d.by_host:
            for state, n in (
                ("idle", h.idle),
                ("idle in transaction", h.idle_in_transaction),
                ("active", h.active),
            ):
                by_host.labels(*env, h.host, state).set(n)
            if h.pool_size is not None:  # an inventory host
                suspect.labels(*env, h.host).set(1 if h.suspect else 0)
                if d.pgbouncers:
                    pooled.labels(*env, h.host).set(h.pooled)
        for app, n in _top({app_label(k): v for k, v in d.by_application.items()}).items():
            by_app.labels(*env, app).set(n)
        for user, n in _top({k or "(hidden)": v for k, v in d.by_user.items()}).items():
            by_user.labels(*env, user).set(n)
        suspects.labels(*env).set(len(d.suspects))
        ages = [s.xact_seconds or 0 for s in d.idle_in_transaction]
        oldest_iit.labels(*env).set(max(ages, default=0))
        iit.labels(*env).set(sum(v for k, v in d.by_state.items() if "in transaction" in k))
        for b in d.pgbouncers:
            bouncer_up.labels(*env, b["name"]).set(0 if "error" in b else 1)
            if "error" not in b:
                waiting.labels(*env, b["name"]).set(b.get("clients_waiting", 0))
        taken.labels(*env).set(datetime.fromisoformat(d.taken_at).timestamp())
        seconds.labels(*env).set(d.seconds)
    return reg


def text(diagnoses: list[Diagnosis], down: list[str] | None = None) -> bytes:
    """The exposition format, as /metrics serves it."""
    return generate_latest(registry(diagnoses, down))


def write_textfile(path: Path, diagnoses: list[Diagnosis]) -> None:
    """Write the metrics for node_exporter's textfile collector (atomically: a temporary
    file renamed into place, as the collector expects)."""
    write_to_textfile(str(path), registry(diagnoses))
