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

import contextlib
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connfix.record.journal import last_change

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from connfix.config.inventory_file import LoadedInventory
    from connfix.diagnosis.model import Diagnosis

TOKEN_ENV = "CONNFIX_SERVE_TOKEN"
HMAC_ENV = "CONNFIX_SERVE_HMAC_SECRET"
MAX_BODY = 1_000_000  # bytes: an alert batch is far smaller
BODY_SECONDS = 10.0  # the whole body must arrive within this
HEADER_SECONDS = 10.0  # a connection must send a whole request head within this
MAX_CONNECTIONS = 256  # open connections at once, whatever their state (below the fd limit)
DEDUPE_SECONDS = 24 * 3600
SLACK_WINDOW = 300  # seconds: Slack's documented replay window for a signed request
SLACK_ENV = "CONNFIX_SLACK_SIGNING_SECRET"


@contextlib.contextmanager
def shared_state(base: Path) -> Iterator[dict[str, Any]]:
    """The state every serve replica writing to one incidents directory shares — the
    alerts seen (duplicates) and each environment's last change (min_interval) — read
    and written under an exclusive lock on a file beside it (flock: every replica on
    the machine, or on a file system that honours it)."""
    import fcntl

    folder = base / ".serve"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(folder / "lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = folder / "state.json"
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict):
                state = {}
        except (FileNotFoundError, ValueError):
            state = {}
        for name in ("seen", "last_change"):
            if not isinstance(state.get(name), dict):
                state[name] = {}
        yield state
        scratch = folder / f"state.{os.getpid()}.{threading.get_ident()}"
        scratch.write_text(json.dumps(state))
        os.replace(scratch, path)


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
    running: dict[str, str] = field(default_factory=dict)  # environment → alert key
    slack_secret: str | None = None  # Slack's signing secret, for its buttons
    threads: list[threading.Thread] = field(default_factory=list)
    latest: dict[str, tuple[float, list[Diagnosis] | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- authentication --------------------------------------------------------------

    def bearer_ok(self, request: Request) -> bool:
        """The bearer token: it opens every endpoint."""
        header = request.headers.get("authorization", "")
        if not self.token or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode("utf-8", "replace"), self.token.encode())

    def signature_ok(self, request: Request, body: bytes) -> bool:
        """PagerDuty's signature (v1=HMAC-SHA256 of the body): it opens /pagerduty only."""
        signature = request.headers.get("x-pagerduty-signature", "")
        if not self.hmac_secret or not signature or not signature.isascii():
            return False
        digest = hmac.new(self.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
        offered = [s.strip()[3:] for s in signature.split(",") if s.strip().startswith("v1=")]
        return any(hmac.compare_digest(o.encode(), digest.encode()) for o in offered)

    # --- alerts ----------------------------------------------------------------------

    def alertmanager(self, payload: dict[str, Any]) -> list[Decision]:
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise ValueError("not an Alertmanager webhook: no alerts list")
        decisions = []
        for alert in alerts:
            if not isinstance(alert, dict):
                raise ValueError("not an Alertmanager webhook: an alert is not an object")
            labels = alert.get("labels", {})
            if not isinstance(labels, dict):
                raise ValueError("not an Alertmanager webhook: an alert's labels are not an object")
            name = str(labels.get("alertname", "?"))
            if alert.get("status") != "firing":
                decisions.append(Decision(None, name, "ignored", "resolved: nothing to do"))
                continue
            fingerprint, starts = alert.get("fingerprint"), alert.get("startsAt")
            if not isinstance(starts, str) or not starts:
                decisions.append(
                    Decision(None, name, "refused", "no startsAt: one firing cannot be told apart")
                )
                continue
            ident = fingerprint if isinstance(fingerprint, str) and fingerprint else None
            key = "am:" + (ident or json.dumps(labels, sort_keys=True, default=str)) + "@" + starts
            decisions.append(self.start(labels.get(self.label), name, key, starts))
        return decisions

    def pagerduty(self, payload: dict[str, Any]) -> list[Decision]:
        event = payload.get("event")
        if not isinstance(event, dict):
            raise ValueError("not a PagerDuty v3 webhook: no event object")
        data = event.get("data", {})
        if not isinstance(data, dict):
            raise ValueError("not a PagerDuty v3 webhook: event.data is not an object")
        title = str(data.get("title") or event.get("event_type") or "?")
        if event.get("event_type") != "incident.triggered":
            return [Decision(None, title, "ignored", f"{event.get('event_type')}: not a trigger")]
        incident = data.get("id")
        if not isinstance(incident, str) or not incident:
            why = "no data.id: one incident cannot be told apart"
            return [Decision(None, title, "refused", why)]
        service_of = data.get("service", {})
        if not isinstance(service_of, dict):
            raise ValueError("not a PagerDuty v3 webhook: event.data.service is not an object")
        service = str(service_of.get("id") or "")
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
        return [self.start(env, title, f"pd:{incident}")]

    def start(
        self, environment: object, alert: str, key: str, starts_at: str | None = None
    ) -> Decision:
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
        with self.lock:
            if environment in self.running:
                return Decision(
                    environment, alert, "refused",
                    "a run of this environment is in progress (one at a time)",
                )  # fmt: skip
            # what every replica sharing the incidents directory has seen, under its lock
            with shared_state(self.incidents_of(environment)) as state:
                now = time.time()
                seen = {k: t for k, t in state["seen"].items() if now - t < DEDUPE_SECONDS}
                state["seen"] = seen
                if key in seen:
                    return Decision(
                        environment, alert, "duplicate", "this alert already started a run"
                    )
                seen[key] = now
                mode = env.alerts.mode
                reason = ""
                if mode == "auto":
                    since = now - state["last_change"].get(environment, -1e12)
                    # and what every runner journaled (a restarted serve, operators' --yes
                    # runs in the same incidents directory)
                    on_disk = last_change(self.incidents_of(environment), environment)
                    if on_disk is not None:
                        since = min(since, now - on_disk)
                    if since < env.alerts.caps.min_interval:
                        mode, reason = (
                            "dry-run",
                            (
                                f"the last change-making run was {since:.0f}s ago"
                                f" (min_interval {env.alerts.caps.min_interval:.0f}s):"
                                " a dry run instead"
                            ),
                        )
                    else:
                        state["last_change"][environment] = now
            self.running[environment] = key
        thread = threading.Thread(
            target=self._run,
            args=(environment, mode, alert, starts_at),
            name=f"connfix-{environment}",
        )
        self.threads = [t for t in self.threads if t.is_alive()]  # a long-lived receiver
        self.threads.append(thread)
        thread.start()
        return Decision(environment, alert, "started", reason, mode)

    def incidents_of(self, environment: str) -> Path:
        from connfix.record.journal import incidents_base

        env = self.loaded.inventory.environments[environment]
        return Path(incidents_base(self.incidents_dir, env.incidents_dir))

    def _run(self, environment: str, mode: str, alert: str, starts_at: str | None = None) -> None:
        from connfix.engine.runbook import resolve_runbook
        from connfix.engine.start import start_run

        env = self.loaded.inventory.environments[environment]
        assert env.alerts is not None
        try:
            if mode == "observe":
                book = resolve_runbook("observe")
            else:
                book = resolve_runbook(env.alerts.runbook)
                if mode == "auto":
                    book = _within_caps(book, env.alerts.caps.effects())
            result = start_run(
                environment,
                env,
                book,
                LogUI(environment),
                incidents_dir=self.incidents_dir,
                inventory_path=self.loaded.path,
                dry_run=mode == "dry-run",
                yes=mode in ("auto", "approve"),
                trigger=f"alert {alert}",
                max_restart_hosts=env.alerts.caps.max_hosts if mode == "auto" else None,
                # approve: what the caps allow goes alone, the rest waits for a person
                approve_alone=(frozenset(env.alerts.caps.effects()) if mode == "approve" else None),
                alert_starts_at=starts_at,
            )
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

    # --- approvals -------------------------------------------------------------------

    def incident_bases(self) -> list[Path]:
        """Where every environment's incidents go (an approval names an incident there)."""
        bases: list[Path] = []
        for name in self.loaded.inventory.environments:
            base = self.incidents_of(name)
            if base not in bases:
                bases.append(base)
        return bases

    def decide(
        self,
        incident: str,
        decision: str,
        identity: str,
        via: str,
        plan: str | None,
        reason: str = "",
        request_id: str | None = None,
    ) -> Any:
        """Decide on the request an incident's run waits for (in this replica or any
        other sharing the incidents directory): approvals.decide under its rules."""
        from connfix.record import approvals

        req = approvals.pending(approvals.find_incident(incident, self.incident_bases()))
        if request_id is not None and request_id != req.id:
            raise approvals.ApprovalRefused(
                f"request {request_id} is closed; the run now waits on {req.id} (plan"
                f" {req.short}): decide on that one"
            )
        made = approvals.decide(req, decision, identity, via, plan, reason)
        self._note(req.environment, req.step, via, f"{made.decision}d", made.by)
        return made

    def slack_ok(self, request: Request, body: bytes, now: float | None = None) -> bool:
        """Slack's request signature: v0=HMAC-SHA256(signing secret, "v0:ts:body"), the
        timestamp within SLACK_WINDOW of now."""
        ts = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        if not self.slack_secret or not ts.isdigit() or not signature.isascii():
            return False
        if abs((time.time() if now is None else now) - int(ts)) > SLACK_WINDOW:
            return False
        base = b"v0:" + ts.encode() + b":" + body
        digest = "v0=" + hmac.new(self.slack_secret.encode(), base, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature.encode(), digest.encode())

    def connfix_signature_ok(self, request: Request, body: bytes) -> bool:
        """`X-Connfix-Signature: v1=HMAC-SHA256(CONNFIX_SERVE_HMAC_SECRET, body)`, as
        PagerDuty signs: for a caller that signs rather than holds the token."""
        signature = request.headers.get("x-connfix-signature", "")
        if not self.hmac_secret or not signature.isascii():
            return False
        digest = hmac.new(self.hmac_secret.encode(), body, hashlib.sha256).hexdigest()
        offered = [s.strip()[3:] for s in signature.split(",") if s.strip().startswith("v1=")]
        return any(hmac.compare_digest(o.encode(), digest.encode()) for o in offered)

    # --- metrics ---------------------------------------------------------------------

    def metrics(self) -> bytes:
        from connfix import ConnfixError
        from connfix.diagnosis.analysis import diagnose
        from connfix.diagnosis.cluster import diagnose_all
        from connfix.record import metrics

        names = [n for n, e in self.loaded.inventory.environments.items() if e.alerts]
        now = time.monotonic()
        for name in names:
            at, _ = self.latest.get(name, (-1e12, None))
            if now - at < self.metrics_interval:
                continue
            env = self.loaded.inventory.environments[name]
            found: list[Diagnosis] | None
            try:
                if env.database.several:  # every node, each labelled with its name
                    found = diagnose_all(name, env).nodes or None
                else:
                    found = [diagnose(name, env)]
            except ConnfixError:
                found = None
            self.latest[name] = (now, found)
        good = [d for _, ds in (self.latest.get(n, (0, None)) for n in names) for d in ds or []]
        down = [n for n in names if self.latest.get(n, (0, None))[1] is None]
        return metrics.text(good, down)


class LogUI:
    """What a background run tells: one line per step and note on stderr, prefixed with
    its environment (the journal holds everything; nobody is there to be asked)."""

    def __init__(self, environment: str) -> None:
        self.prefix = f"connfix serve [{environment}]"

    def _say(self, text: str) -> None:
        from connfix.config.text import defang

        _stderr().write(f"{self.prefix} {defang(text)}\n")

    def started(self, journal: Path, dry_run: bool) -> None:
        self._say(f"journal {journal}" + (" (dry run)" if dry_run else ""))

    def diagnosis(self, d: Any) -> None:
        self._say(f"diagnosis: {d.client_backends} of {d.usable_connections}, {d.severity}")

    def step(self, index: int, total: int, step: Any, status: str, detail: str) -> None:
        self._say(f"[{index}/{total}] {step.id}: {status} — {detail}")

    def plan(self, step: Any, plan: Any, applied: bool) -> None:
        self._say(f"{step.id} plan: {plan.summary}")

    def confirm(self, question: str) -> bool:
        return False  # never asked: serve runs with --yes or as a dry run

    def note(self, message: str) -> None:
        self._say(message)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        self._say(f"{title}: {len(rows)} row(s)")

    def ended(self, result: Any) -> None:
        self._say(f"{result.status.value}: {result.message}")


def _within_caps(book: Any, allowed: set[str]) -> Any:
    """The runbook with only the steps whose effect the caps allow (read-only steps
    always), each judged by what it will do with its parameters — not by its action's
    name."""
    import dataclasses

    from connfix.actions import ACTIONS

    def fits(step: Any) -> bool:
        effect = ACTIONS[step.action].effect(step.params)
        return effect is None or effect in allowed

    kept = [s for s in book.steps if fits(s)]
    if len(kept) == len(book.steps):
        return book
    left_out = [f"{s.id} ({ACTIONS[s.action].effect(s.params)})" for s in book.steps if not fits(s)]
    summary = f"{book.summary} (alert policy caps: left out {', '.join(left_out)})"
    return dataclasses.replace(book, steps=kept, summary=summary)


def _stderr() -> Any:
    import sys

    return sys.stderr


# Over 80 lines: the route table, each route a short closure over the server's state;
# read top to bottom it is the HTTP surface of serve.
def app(server: Server) -> Any:
    """The Starlette application."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def body_of(request: Request) -> bytes | str:
        """The body, read with its size enforced as it arrives and a deadline for the
        whole of it; or why not (too large, too slow, the client went away)."""
        import anyio
        from starlette.requests import ClientDisconnect

        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return "too large"
        chunks, size = [], 0
        try:
            with anyio.fail_after(BODY_SECONDS):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_BODY:
                        return "too large"
                    chunks.append(chunk)
        except TimeoutError:
            return "too slow"
        except ClientDisconnect:
            return "gone"
        return b"".join(chunks)

    def refused(status: int, error: str) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    def receiver(kind: str) -> Any:
        async def handle(request: Request) -> Response:
            who = request.client.host if request.client else "?"
            bearer = server.bearer_ok(request)
            signed = kind == "pagerduty" and "x-pagerduty-signature" in request.headers
            if not bearer and not signed:  # refused before a byte of the body is read
                server._note("-", "-", kind, "unauthorized", who)
                return refused(401, "unauthorized: a bearer token or a valid signature is required")
            body = await read(request)
            if not isinstance(body, bytes):
                return body
            if not bearer and not server.signature_ok(request, body):
                server._note("-", "-", kind, "unauthorized", who)
                return refused(401, "unauthorized: a bearer token or a valid signature is required")
            try:
                payload = json.loads(body)
                if not isinstance(payload, dict):
                    raise ValueError("the body is not a JSON object")
                decisions = (
                    server.alertmanager(payload)
                    if kind == "alertmanager"
                    else server.pagerduty(payload)
                )
            except RecursionError:
                return refused(400, "bad request: JSON nested too deeply")
            except (ValueError, TypeError, AttributeError) as exc:
                return refused(400, f"bad request: {exc}")
            for d in decisions:
                if d.action != "started":
                    server._note(d.environment or "-", d.alert, kind, d.action, d.reason)
            return JSONResponse({"decisions": [d.json() for d in decisions]}, status_code=202)

        return handle

    async def read(request: Request) -> bytes | Response:
        """The body, or the answer to a body that could not be read."""
        body = await body_of(request)
        if body == "gone":
            return refused(400, "the client went away mid-body")
        if body == "too slow":
            return refused(408, f"the body did not arrive within {BODY_SECONDS:g}s")
        if not isinstance(body, bytes):
            return refused(413, f"body over {MAX_BODY} bytes")
        return body

    async def decided(
        incident: str, decision: object, who: str, via: str, plan: object, **more: Any
    ) -> Response:
        import anyio

        from connfix.record.approvals import ApprovalRefused, NoRequest

        if decision not in ("approve", "reject"):
            return refused(400, "bad request: decision must be approve or reject")
        if plan is not None and not isinstance(plan, str):
            return refused(400, "bad request: plan must be the plan's hash (a string)")
        try:
            made = await anyio.to_thread.run_sync(
                lambda: server.decide(incident, str(decision), who, via, plan, **more)
            )
        except NoRequest as exc:
            return refused(404, str(exc))
        except ApprovalRefused as exc:
            server._note("-", incident, via, "refused", f"{who}: {exc}")
            return refused(exc.http_status, str(exc))
        return JSONResponse({"decision": made.fields()})

    async def approval(request: Request) -> Response:
        """POST /approvals/INCIDENT {"decision", "approver", "plan"?, "reason"?}: the
        bearer token, or the body signed (X-Connfix-Signature, as PagerDuty signs)."""
        who = request.client.host if request.client else "?"
        bearer = server.bearer_ok(request)
        if not bearer and "x-connfix-signature" not in request.headers:
            server._note("-", "-", "approval", "unauthorized", who)
            return refused(401, "unauthorized: a bearer token or a valid signature is required")
        body = await read(request)
        if not isinstance(body, bytes):
            return body
        if not bearer and not server.connfix_signature_ok(request, body):
            server._note("-", "-", "approval", "unauthorized", who)
            return refused(401, "unauthorized: a bearer token or a valid signature is required")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return refused(400, "bad request: not JSON")
        if not isinstance(payload, dict):
            return refused(400, "bad request: the body is not a JSON object")
        approver, reason = payload.get("approver"), payload.get("reason", "")
        if not _printable(approver, 100) or not str(approver).strip():
            return refused(400, "bad request: approver must name who decides (≤ 100 characters)")
        if not _printable(reason, 500):
            return refused(400, "bad request: reason must be text (≤ 500 characters)")
        return await decided(
            request.path_params["incident"],
            payload.get("decision"),
            str(approver).strip(),
            "http",
            payload.get("plan"),
            reason=str(reason),
        )

    async def slack(request: Request) -> Response:
        """Slack's interactivity request (a button of an approval notification): its
        signature checked before anything is read from it; the clicker's user id is the
        approver."""
        who = request.client.host if request.client else "?"
        if "x-slack-signature" not in request.headers:
            server._note("-", "-", "slack", "unauthorized", who)
            return refused(401, "unauthorized: Slack's request signature is required")
        body = await read(request)
        if not isinstance(body, bytes):
            return body
        if not server.slack_ok(request, body):
            server._note("-", "-", "slack", "unauthorized", who)
            return refused(401, "unauthorized: Slack's request signature is wrong or stale")
        try:
            action, user = _slack_action(body)
            value = json.loads(action["value"])
            decision = SLACK_ACTIONS[action["action_id"]]
            incident, plan, request_id = value["incident"], value["plan"], value["request"]
            if not all(isinstance(v, str) for v in (incident, plan, request_id)):
                raise ValueError("the button's value is not connfix's")
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            return refused(400, f"bad request: not a connfix button ({exc})")
        return await decided(incident, decision, user, "slack", plan, request_id=request_id)

    async def health(request: Request) -> Response:
        with server.lock:
            running = dict(server.running)
        return JSONResponse({"status": "ok", "running": sorted(running)})

    async def metrics(request: Request) -> Response:
        if not server.bearer_ok(request):  # the bearer token only: a signature is PagerDuty's
            return refused(401, "unauthorized: the bearer token is required")
        import anyio

        text = await anyio.to_thread.run_sync(server.metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(
        routes=[
            Route("/alertmanager", receiver("alertmanager"), methods=["POST"]),
            Route("/pagerduty", receiver("pagerduty"), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/approvals/{incident}", approval, methods=["POST"]),
            Route("/slack/interactive", slack, methods=["POST"]),
        ]
    )


SLACK_ACTIONS = {"connfix_approve": "approve", "connfix_reject": "reject"}


def _printable(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit and value.isprintable()


def _slack_action(body: bytes) -> tuple[dict[str, Any], str]:
    """The first action of a Slack `block_actions` payload (form field `payload`) and
    the clicker: `slack:USER_ID (username)`."""
    from urllib.parse import parse_qs

    form = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
    payload = json.loads(form["payload"][0])
    if payload.get("type") != "block_actions":
        raise ValueError(f"a {payload.get('type')!r} payload, not block_actions")
    user = payload["user"]
    uid = user["id"]
    name = user.get("username") or user.get("name") or ""
    if not _printable(uid, 40) or not uid or not _printable(name, 100):
        raise ValueError("no usable user id")
    action = payload["actions"][0]
    if not isinstance(action, dict):
        raise TypeError("an action is not an object")
    return action, f"slack:{uid}" + (f" ({name})" if name else "")


PER_CLIENT = 32  # open connections from one address at once


def bounded_protocol() -> type:
    """uvicorn's h11 protocol, bounded: a connection must send a whole request head
    within HEADER_SECONDS of connecting or of its last response (uvicorn has no such
    timeout: unfinished heads were held forever); at most MAX_CONNECTIONS connections,
    and PER_CLIENT from one address, are kept (beyond: closed at once, holding no file
    descriptor), so one client cannot take the slots real alerts arrive on."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    per_client: dict[str, int] = {}

    class BoundedH11(H11Protocol):
        head_timer: Any = None
        counted: str | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            host = self.client[0] if self.client else "?"
            if len(self.connections) > MAX_CONNECTIONS or per_client.get(host, 0) >= PER_CLIENT:
                transport.close()
                return
            per_client[host] = per_client.get(host, 0) + 1
            self.counted = host
            self._arm()

        def _arm(self) -> None:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(HEADER_SECONDS, self._expired)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _expired(self) -> None:
            self.head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # no request head in time

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # a new request head is due
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a whole head arrived: the body has its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.counted is not None:
                left = per_client.get(self.counted, 1) - 1
                if left > 0:
                    per_client[self.counted] = left
                else:
                    per_client.pop(self.counted, None)
                self.counted = None
            super().connection_lost(exc)

    return BoundedH11


class RateLimitedLog:
    """A logging filter: at most `burst` records per `window` seconds per logger, then
    one line saying how many were left out (a flood of bad requests or accept errors
    must not fill the disk with tracebacks)."""

    def __init__(self, burst: int = 20, window: float = 60.0) -> None:
        self.burst, self.window = burst, window
        self.since: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def filter(self, record: Any) -> bool:
        now = time.monotonic()
        name = record.name
        if now - self.since.get(name, -1e12) > self.window:
            dropped = self.dropped.pop(name, 0)
            self.since[name], self.count[name] = now, 0
            if dropped:
                record.msg = f"({dropped} log records left out in the last minute) {record.msg}"
        self.count[name] = self.count.get(name, 0) + 1
        if self.count[name] > self.burst:
            self.dropped[name] = self.dropped.get(name, 0) + 1
            return False
        if record.exc_info and self.count[name] > 1:  # one traceback per window is enough
            record.exc_info, record.exc_text = None, None
        return True


def bound_logs() -> None:
    """Rate-limit what uvicorn and asyncio may log."""
    import logging

    limit = RateLimitedLog()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        logging.getLogger(name).addFilter(limit)


def secrets_from_environment() -> tuple[str | None, str | None]:
    """The bearer token and the HMAC secret; at least one must be set."""
    return os.environ.get(TOKEN_ENV) or None, os.environ.get(HMAC_ENV) or None


def wait_for_runs(server: Server, timeout: float) -> None:
    """On shutdown: let the runs in progress finish (each leaves a complete journal); a
    run waiting for an approval stops waiting and ends, nothing of that step applied."""
    from connfix.engine import approval

    approval.STOP.set()
    deadline = time.monotonic() + timeout
    for thread in list(server.threads):
        thread.join(max(0.0, deadline - time.monotonic()))


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: give HOST:PORT, e.g. 127.0.0.1:9187")
    return host.strip("[]"), int(port)
