"""The incident on one chart: connections in use against the usable limit (and each
leak suspect's connections) over the whole incident — from the environment's
Prometheus before the run, and from the run's own diagnoses during it — as an SVG file
beside report.md (it renders wherever Markdown does, GitHub and GitLab included, and in
any browser). Drawn with pygal: a small, pure-Python SVG chart library; no script in
the SVG (js=[]), no text cut short. Built from the journal alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CHART = "incident.svg"
MAX_HOSTS = 4  # suspects drawn (the leakiest first)


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass
class Curve:
    """The points to draw, each (epoch seconds, value)."""

    environment: str
    connections: list[tuple[float, float]] = field(default_factory=list)
    limit: list[tuple[float, float]] = field(default_factory=list)
    hosts: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    warning: float | None = None  # the warning utilization, as a fraction of the limit
    history_from: float | None = None  # the first point from Prometheus
    run_from: float | None = None  # connfix's start

    @property
    def empty(self) -> bool:
        return len(self.connections) < 1


def curve(events: list[dict[str, Any]]) -> Curve:
    """The chart's points from a journal: the history before the run (its `history`
    event), then every diagnosis of the run."""
    start = events[0]
    found = Curve(str(start.get("environment", "?")))
    found.run_from = _epoch(start["ts"])
    history = next((e for e in events if e.get("event") == "history"), None)
    diagnoses = [e for e in events if e.get("event") == "diagnosis"]
    suspects: dict[str, int] = {}
    for e in diagnoses:
        for u in e["diagnosis"].get("by_host", []):
            if u.get("suspect"):
                suspects[u["host"]] = max(suspects.get(u["host"], 0), int(u.get("count", 0)))
    drawn = sorted(suspects, key=lambda h: -suspects[h])[:MAX_HOSTS]
    if history and not history.get("error"):
        before = found.run_from
        series = history.get("series") or {}
        found.connections += [(t, v) for t, v in series.get("connections", []) if t < before]
        found.limit += [(t, v) for t, v in series.get("limit", []) if t < before]
        for host in drawn:
            points = (history.get("hosts") or {}).get(host, [])
            found.hosts[host] = [(t, v) for t, v in points if t < before]
        found.warning = history.get("warning")
        if found.connections:
            found.history_from = found.connections[0][0]
    for e in diagnoses:
        d, at = e["diagnosis"], _epoch(e["ts"])
        found.connections.append((at, float(d["client_backends"])))
        found.limit.append((at, float(d["usable_connections"])))
        by_host = {u["host"]: u for u in d.get("by_host", [])}
        for host in drawn:
            count = by_host.get(host, {}).get("count", 0)
            found.hosts.setdefault(host, []).append((at, float(count)))
    return found


def load() -> Any:
    """Import pygal, without the import hook it adds for its map plugins (a finder
    without find_spec: every failed import in the process would then warn; connfix draws
    no maps)."""
    import sys

    import pygal

    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "PluginImportFixer"]
    return pygal


def svg(c: Curve) -> str:
    """The chart as an SVG document."""
    pygal = load()
    from pygal.style import Style

    style = Style(
        background="#ffffff",
        plot_background="#ffffff",
        foreground="#333333",
        foreground_strong="#111111",
        foreground_subtle="#888888",
        colors=("#1f77b4", "#d62728", "#ff7f0e", "#9467bd", "#2ca02c", "#8c564b", "#e377c2"),
        font_family="DejaVu Sans, Arial, sans-serif",
        opacity="1",
        opacity_hover="1",
        stroke_width="2.5",
        stroke_width_hover="2.5",
        stroke_opacity="1",
        guide_stroke_color="#e5e5e5",
        major_guide_stroke_color="#cccccc",
    )
    first = min(t for t, _ in c.connections)
    last = max(t for t, _ in c.connections)
    chart = pygal.DateTimeLine(
        js=[],
        style=style,
        width=900,
        height=420,
        show_dots=False,
        truncate_label=-1,
        truncate_legend=-1,
        legend_at_bottom=True,
        legend_at_bottom_columns=3,
        x_label_rotation=0,
        x_value_formatter=lambda when: when.strftime("%H:%M:%S"),
        title=(
            f"{c.environment}: connections in use against the usable limit,"
            f" {_clock(first)}–{_clock(last)} UTC"
        ),
        y_title="connections",
        range=(0, max(v for _, v in c.connections + c.limit) * 1.1 + 1),
    )
    chart.add(
        "connections in use",
        [(_dt(t), v) for t, v in c.connections],
        stroke_style={"width": 3},
    )
    chart.add(
        "usable limit",
        [(_dt(t), v) for t, v in c.limit],
        stroke_style={"width": 3, "dasharray": "8,4"},
    )
    if c.warning and c.limit:
        chart.add(
            f"warning ({c.warning:.0%} of usable)",
            [(_dt(t), v * c.warning) for t, v in c.limit],
            stroke_style={"dasharray": "3,3", "width": 2},
        )
    if c.run_from is not None and first <= c.run_from <= last:
        top = max(v for _, v in c.limit) if c.limit else 1
        chart.add(
            "connfix started",
            [(_dt(c.run_from), 0), (_dt(c.run_from), top)],
            stroke_style={"width": 2},
        )
    for host, points in c.hosts.items():
        if points:
            chart.add(
                f"{host} (suspect)", [(_dt(t), v) for t, v in points], stroke_style={"width": 2}
            )
    return _without_scripts(chart.render_tree())


def _without_scripts(tree: Any) -> str:
    """The SVG with pygal's inline script (its tooltips' configuration) and comments
    taken out: the picture is static, a file that runs nothing is one any viewer may
    open, and the same journal draws the same bytes."""
    from xml.etree import ElementTree

    for parent in list(tree.iter()):
        for child in list(parent):
            comment = not isinstance(child.tag, str)  # pygal's banner, with today's date
            if comment or child.tag.rsplit("}", 1)[-1] == "script":
                parent.remove(child)
    text = ElementTree.tostring(tree, encoding="unicode")
    # pygal names each chart with a random uuid: the same journal draws the same file
    text = text.replace(str(tree.get("id")), "connfix-incident")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + text


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _clock(ts: float) -> str:
    return _dt(ts).strftime("%H:%M:%S")
