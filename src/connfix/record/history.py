"""The incident before the run: connections in use and the usable limit from the
environment's Prometheus (its HTTP API's query_range), for the report's chart and the
onset in its timeline.

Fetched in a background thread started with the run (a slow or absent Prometheus never
holds a run up) and journaled as one `history` event before `run_end`, so the report
stays a function of the journal alone. Series: connfix's own (`connfix_client_backends`,
`connfix_usable_connections`, `connfix_host_connections` — from `serve`'s /metrics or
the textfile), or the PromQL the inventory gives (e.g. postgres_exporter's
`pg_stat_activity_count`)."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connfix.config.inventory import PrometheusSource

MAX_POINTS = 240  # per series: a chart's worth
MAX_HOSTS = 10  # hosts' series kept (the chart draws the leak suspects among them)


def _label(value: str) -> str:
    """A PromQL label value, quoted (backslashes and quotes escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def queries(source: PrometheusSource, environment: str) -> dict[str, str]:
    """The PromQL of each series."""
    env = "{environment=" + _label(environment) + "}"
    return {
        "connections": source.connections or f"max(connfix_client_backends{env})",
        "limit": source.limit or f"min(connfix_usable_connections{env})",
        "hosts": f"sum by (host) (connfix_host_connections{env})",
    }


def fetch(source: PrometheusSource, environment: str, start: float, end: float) -> dict[str, Any]:
    """Every series over [start, end] (epoch seconds); what failed, said per series."""
    step = max(1, math.ceil((end - start) / MAX_POINTS))
    found: dict[str, Any] = {
        "source": "prometheus",
        "url": source.url,
        "start": start,
        "end": end,
        "step": step,
        "series": {},
        "hosts": {},
        "errors": {},
    }
    for name, query in queries(source, environment).items():
        try:
            result = _query_range(source, query, start, end, step)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            found["errors"][name] = str(exc)[:300]
            continue
        if name == "hosts":  # the MAX_HOSTS with the highest peak: a journal line, not a dump
            by_host = {str(i.get("metric", {}).get("host", "?")): _points(i) for i in result}
            peaks = sorted(by_host, key=lambda h: -max((v for _, v in by_host[h]), default=0))
            found["hosts"] = {h: by_host[h] for h in peaks[:MAX_HOSTS]}
        elif result:
            found["series"][name] = _points(result[0])
        else:
            found["errors"][name] = "no data in the range"
    return found


def _points(item: dict[str, Any]) -> list[list[float]]:
    points = []
    for ts, value in item.get("values", []):
        number = float(value)
        if math.isfinite(number):
            points.append([float(ts), number])
    return points


def _query_range(
    source: PrometheusSource, query: str, start: float, end: float, step: int
) -> list[dict[str, Any]]:
    import urllib.error
    import urllib.parse
    import urllib.request

    from connfix.config import http

    params = urllib.parse.urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
    )
    request = urllib.request.Request(
        f"{source.url}/api/v1/query_range?{params}", headers={"User-Agent": "connfix/1"}
    )
    try:
        with http.opener().open(request, timeout=source.timeout) as response:
            body = json.loads(response.read(10_000_000))
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise ValueError(f"Prometheus answered HTTP {exc.code}: {detail}") from None
    if body.get("status") != "success":
        raise ValueError(f"Prometheus: {body.get('error') or body.get('status')}")
    result = body["data"]["result"]
    if not isinstance(result, list):
        raise TypeError("not a matrix")
    return result


class Fetcher:
    """The history fetch of one run, in a daemon thread started with it."""

    def __init__(self, source: PrometheusSource, environment: str, started: float) -> None:
        self.source = source
        self.found: dict[str, Any] | None = None
        start, end = started - source.lookback, started
        self.thread = threading.Thread(
            target=self._run, args=(environment, start, end), daemon=True, name="history"
        )
        self.thread.start()

    def _run(self, environment: str, start: float, end: float) -> None:
        try:
            self.found = fetch(self.source, environment, start, end)
        except Exception as exc:  # never the run's failure: the report says why
            self.found = {"source": "prometheus", "url": self.source.url, "error": str(exc)}

    def result(self, wait: bool = True) -> dict[str, Any]:
        """What was fetched, waiting at most the source's timeout more (not at all with
        wait=False: a run that could not reach its database ends at once)."""
        self.thread.join(self.source.timeout if wait else 0)
        if self.found is None:
            return {
                "source": "prometheus",
                "url": self.source.url,
                "error": "no complete answer before the run ended",
            }
        return self.found
