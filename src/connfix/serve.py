"""`connfix serve`: alerts in, triages out.

An HTTP receiver (Starlette on uvicorn: an ASGI server that is maintained, handles
slow and broken clients and shuts down gracefully, which http.server does not) for
Alertmanager's webhook and PagerDuty's v3 webhooks. An alert names an environment (a
label, `environment` by default; for PagerDuty, the service id the inventory maps); the
environment's `alerts:` policy says what connfix does:

- observe: diagnose and advise (the shipped `observe` runbook), report; changes nothing;
- dry-run: the runbook in a dry run: every step's plan, nothing changed;
- auto: the runbook with --yes, within caps: only the actions listed run (the others are
  left out of the run, said in its journal), a rolling restart of more hosts than
  max_hosts is refused, and a second change-making run within min_interval is run as a
  dry run instead.

Every request but /health must carry the bearer token (CONNFIX_SERVE_TOKEN) or, for
PagerDuty, a valid `X-PagerDuty-Signature` (HMAC-SHA256 with CONNFIX_SERVE_HMAC_SECRET);
anything else is refused (401) and nothing runs. Repeated notifications of one alert
(Alertmanager's repeat_interval: the same fingerprint and start) start one run. One run
per environment at a time in this process; across machines the advisory lock refuses a
second (journaled). The answer comes at once (202); the run goes on in the background.
/metrics serves the latest diagnosis of every environment with a policy, read when
scraped (at most once per --metrics-interval).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from connfix.diagnosis import Diagnosis
    from connfix.inventory_file import LoadedInventory

TOKEN_ENV = "CONNFIX_SERVE_TOKEN"
HMAC_ENV = "CONNFIX_SERVE_HMAC_SECRET"
MAX_BODY = 1_000_000  # bytes: an alert batch is far smaller
DEDUPE_SECONDS = 24 * 3600


@dataclass
class Decision:
    """What serve did with one alert."""

    environment: str | None
    alert: str
    action: str  # started, duplicate, refused, ignored
    reason: str = ""
    mode: str | None = None

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


@dataclass
class Server:
    """The receiver's state; one per `connfix serve` process."""

    loaded: LoadedInventory
    incidents_dir: str | None
    token: str | None
    hmac_secret: str | None
    label: str = "environment"
    metrics_interval: float = 10.0
    seen: dict[str, float] = field(default_factory=dict)  # alert key → when first seen
    running: dict[str, str] = field(default_factory=dict)  # environment → alert key
    last_change: dict[str, float] = field(default_factory=dict)  # env → last auto run
    threads: list[threading.Thread] = field(default_factory=list)
    latest: dict[str, tuple[float, Diagnosis | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- authentication --------------------------------------------------------------

    def authorized(self, request: Request, body: bytes) -> bool:
        header = request.headers.get("authorization", "")
        if self.token and header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].encode(), self.token.encode())
        signature = request.headers.get("x-pagerduty-signature", "")
        if self.hmac_secret and signature:
            digest = hmac.new(self.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
            offered = [s.strip()[3:] for s in signature.split(",") if s.strip().startswith("v1=")]
            return any(hmac.compare_digest(o, digest) for o in offered)
        return False

    # --- alerts ----------------------------------------------------------------------

    def alertmanager(self, payload: dict[str, Any]) -> list[Decision]:
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise ValueError("not an Alertmanager webhook: no alerts list")
        decisions = []
        for alert in alerts:
            if not isinstance(alert, dict):
                raise ValueError("not an Alertmanager webhook: an alert is not an object")
            labels = alert.get("labels") or {}
            name = str(labels.get("alertname", "?"))
            if alert.get("status") != "firing":
                decisions.append(Decision(None, name, "ignored", "resolved: nothing to do"))
                continue
            key = "am:" + str(alert.get("fingerprint") or json.dumps(labels, sort_keys=True))
            key += "@" + str(alert.get("startsAt", ""))
            decisions.append(self.start(labels.get(self.label), name, key))
        return decisions

    def pagerduty(self, payload: dict[str, Any]) -> list[Decision]:
        event = payload.get("event")
        if not isinstance(event, dict):
            raise ValueError("not a PagerDuty v3 webhook: no event object")
        data = event.get("data") or {}
        title = str(data.get("title") or event.get("event_type") or "?")
        if event.get("event_type") != "incident.triggered":
            return [Decision(None, title, "ignored", f"{event.get('event_type')}: not a trigger")]
        service = str((data.get("service") or {}).get("id") or "")
        env = next(
            (
                name
                for name, e in self.loaded.inventory.environments.items()
                if e.alerts is not None and service in e.alerts.pagerduty_services
            ),
            None,
        )
        if env is None:
            return [
                Decision(
                    None, title, "refused", f"no environment maps PagerDuty service {service!r}"
                )
            ]
        return [self.start(env, title, f"pd:{data.get('id')}")]

    def start(self, environment: object, alert: str, key: str) -> Decision:
        """Start the environment's run for an alert, unless it must not run."""
        inventory = self.loaded.inventory
        if not isinstance(environment, str) or environment not in inventory.environments:
            return Decision(
                None, alert, "refused",
                f"label {self.label}={environment!r} names no environment of the inventory",
            )  # fmt: skip
        env = inventory.environments[environment]
        if env.alerts is None:
            return Decision(environment, alert, "refused", "the environment has no alerts: policy")
        now = time.monotonic()
        with self.lock:
            self.seen = {k: t for k, t in self.seen.items() if now - t < DEDUPE_SECONDS}
            if key in self.seen:
                return Decision(environment, alert, "duplicate", "this alert already started a run")
            if environment in self.running:
                return Decision(
                    environment, alert, "refused",
                    "a run of this environment is in progress (one at a time)",
                )  # fmt: skip
            self.seen[key] = now
            mode = env.alerts.mode
            reason = ""
            if mode == "auto":
                since = now - self.last_change.get(environment, -1e12)
                if since < env.alerts.caps.min_interval:
                    mode, reason = (
                        "dry-run",
                        (
                            f"the last change-making run was {since:.0f}s ago (min_interval"
                            f" {env.alerts.caps.min_interval:.0f}s): a dry run instead"
                        ),
                    )
                else:
                    self.last_change[environment] = now
            self.running[environment] = key
        thread = threading.Thread(
            target=self._run, args=(environment, mode, alert), name=f"connfix-{environment}"
        )
        self.threads = [t for t in self.threads if t.is_alive()]  # a long-lived receiver
        self.threads.append(thread)
        thread.start()
        return Decision(environment, alert, "started", reason, mode)

    def _run(self, environment: str, mode: str, alert: str) -> None:
        from connfix.cli import render
        from connfix.cli.options import incidents_base
        from connfix.engine.loop import run_runbook
        from connfix.engine.run import RunMode, RunRequest
        from connfix.runbook import resolve_runbook

        env = self.loaded.inventory.environments[environment]
        assert env.alerts is not None
        try:
            if mode == "observe":
                book = resolve_runbook("observe")
            else:
                book = resolve_runbook(env.alerts.runbook)
                if mode == "auto":
                    allowed = set(env.alerts.caps.actions) | {"diagnose"}
                    book = _within_caps(book, allowed)
            request = RunRequest(
                environment=environment,
                env=env,
                runbook=book,
                incidents_dir=incidents_base(self.incidents_dir, env.incidents_dir),
                inventory_path=self.loaded.path,
                mode=RunMode.TRIAGE,
                dry_run=mode == "dry-run",
                yes=mode == "auto",
                interactive=False,
                max_restart_hosts=env.alerts.caps.max_hosts if mode == "auto" else None,
                trigger=f"alert {alert}",
            )
            term = render.Terminal.from_process(stdout=_stderr())
            result = run_runbook(request, render.RichUI(term))
            self._note(environment, alert, mode, result.status.value, str(result.incident_dir))
        except Exception as exc:  # a failed run must not take the receiver down
            self._note(environment, alert, mode, "error", str(exc))
        finally:
            with self.lock:
                self.running.pop(environment, None)

    def _note(self, environment: str, alert: str, mode: str, status: str, detail: str) -> None:
        entry = {
            "ts": time.time(),
            "environment": environment,
            "alert": alert,
            "mode": mode,
            "status": status,
            "detail": detail,
        }
        _stderr().write(json.dumps({"connfix_serve": entry}) + "\n")

    # --- metrics ---------------------------------------------------------------------

    def metrics(self) -> bytes:
        from connfix import metrics
        from connfix.analysis import diagnose
        from connfix.errors import ConnfixError

        names = [n for n, e in self.loaded.inventory.environments.items() if e.alerts]
        now = time.monotonic()
        for name in names:
            at, _ = self.latest.get(name, (-1e12, None))
            if now - at < self.metrics_interval:
                continue
            try:
                found: Diagnosis | None = diagnose(name, self.loaded.inventory.environments[name])
            except ConnfixError:
                found = None
            self.latest[name] = (now, found)
        good = [d for _, d in (self.latest.get(n, (0, None)) for n in names) if d is not None]
        down = [n for n in names if self.latest.get(n, (0, None))[1] is None]
        return metrics.text(good, down)


def _within_caps(book: Any, allowed: set[str]) -> Any:
    """The runbook with only the allowed actions' steps (the first, a diagnose, kept)."""
    import dataclasses

    kept = [s for s in book.steps if s.action in allowed]
    if len(kept) == len(book.steps):
        return book
    left_out = [s.id for s in book.steps if s.action not in allowed]
    summary = f"{book.summary} (alert policy caps: left out {', '.join(left_out)})"
    return dataclasses.replace(book, steps=kept, summary=summary)


def _stderr() -> Any:
    import sys

    return sys.stderr


def app(server: Server) -> Any:
    """The Starlette application."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def body_of(request: Request) -> bytes | None:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return None
        data = await request.body()
        return data if len(data) <= MAX_BODY else None

    def receiver(kind: str) -> Any:
        async def handle(request: Request) -> Response:
            body = await body_of(request)
            if body is None:
                return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
            if not server.authorized(request, body):
                server._note(
                    "-", "-", kind, "unauthorized", request.client.host if request.client else "?"
                )
                return JSONResponse(
                    {"error": "unauthorized: a bearer token or a valid signature is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                payload = json.loads(body)
                if not isinstance(payload, dict):
                    raise ValueError("the body is not a JSON object")
                decisions = (
                    server.alertmanager(payload)
                    if kind == "alertmanager"
                    else server.pagerduty(payload)
                )
            except ValueError as exc:
                return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
            for d in decisions:
                if d.action != "started":
                    server._note(d.environment or "-", d.alert, kind, d.action, d.reason)
            return JSONResponse({"decisions": [d.json() for d in decisions]}, status_code=202)

        return handle

    async def health(request: Request) -> Response:
        with server.lock:
            running = dict(server.running)
        return JSONResponse({"status": "ok", "running": sorted(running)})

    async def metrics(request: Request) -> Response:
        if not server.authorized(request, b""):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        import anyio

        text = await anyio.to_thread.run_sync(server.metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/alertmanager", receiver("alertmanager"), methods=["POST"]),
            Route("/pagerduty", receiver("pagerduty"), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def secrets_from_environment() -> tuple[str | None, str | None]:
    """The bearer token and the HMAC secret; at least one must be set."""
    return os.environ.get(TOKEN_ENV) or None, os.environ.get(HMAC_ENV) or None


def wait_for_runs(server: Server, timeout: float) -> None:
    """On shutdown: let the runs in progress finish (each leaves a complete journal)."""
    deadline = time.monotonic() + timeout
    for thread in list(server.threads):
        thread.join(max(0.0, deadline - time.monotonic()))


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: give HOST:PORT, e.g. 127.0.0.1:9187")
    return host.strip("[]"), int(port)
