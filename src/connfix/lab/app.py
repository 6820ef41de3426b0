"""The lab's application: a small web service on SQLAlchemy's QueuePool, and its leaks.

This stands for a customer's app server, so it talks to PostgreSQL directly; connfix's
own code reaches the database only through connfix.db.pg.

Why SQLAlchemy's QueuePool: it is what most Python web apps run on, and it behaves the
way the incidents need: `pool_size` connections kept, up to `max_overflow` more opened
for a burst and closed when returned, a checkout that waits `pool_timeout` and then
fails when every connection is out, and connections checked out and never returned stay
counted as checked out whatever happens to their sessions. (psycopg_pool checks and
replaces connections itself, which hides the very failure this lab must show.)

Every `traffic_seconds` it serves a request on each pooled connection, so the pool's
sessions stay young and leaked ones grow old; a pooled connection that died is replaced
by the pool on its next use.

HTTP on the host's address:
  GET  /health     200 when a request can check out a connection and use it
  GET  /status     JSON: pid, pool numbers and the leaked backend pids
  POST /leak?count=K&mode=M      M: idle, idle_in_transaction (K connections opened
                   outside the pool and never closed: a code path with its own
                   connections), checkout, checkout_in_transaction (K connections
                   checked out of the pool and never returned)
  POST /burst?count=K&seconds=S  K concurrent requests holding a connection for S seconds:
                   a legitimate burst into max_overflow
  POST /traffic?every=S          serve traffic every S seconds from now on (0: a quiet app,
                   whose pool sits idle: its connections are the oldest idle ones)

/status also gives each connection's local TCP port (`pool_ports`, `leaked_ports`): the
port PgBouncer's SHOW CLIENTS shows, so a test can tell which clients connfix ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool


class App:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.faults = Path(config["faults_dir"])
        self.lock = threading.Lock()
        self.serving = threading.Lock()  # one request at a time
        self.pool_size = int(config["pool_size"])
        self.max_overflow = int(config.get("max_overflow", 0))
        self.engine = sqlalchemy.create_engine(
            "postgresql+psycopg://",
            creator=self._open,
            poolclass=QueuePool,
            pool_size=self.pool_size,
            max_overflow=self.max_overflow,
            # a request (health included) waits this long for a connection, then fails
            pool_timeout=float(config.get("pool_timeout", 1.0)),
        )
        self.leaked: list[Any] = []  # raw connections, or checked-out pool connections
        self.pool_pids: set[int] = set()  # backend pids of the pool's connections
        self.pool_ports: dict[int, int] = {}  # backend pid → the connection's local port
        self.traffic_every = float(config.get("traffic_seconds", 0))
        self.traffic_changed = threading.Event()
        sqlalchemy.event.listen(self.engine.pool, "connect", self._pool_connect)
        for gone in ("close", "invalidate", "close_detached"):
            sqlalchemy.event.listen(self.engine.pool, gone, self._pool_gone)

    def _pool_connect(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            self.pool_pids.add(dbapi_connection.info.backend_pid)
            self.pool_ports[dbapi_connection.info.backend_pid] = _local_port(dbapi_connection)
        record.info["pid"] = dbapi_connection.info.backend_pid

    def _pool_gone(self, dbapi_connection: Any, *args: Any) -> None:
        pid = args[0].info.get("pid") if args and hasattr(args[0], "info") else None
        if pid is None:
            with contextlib.suppress(Exception):  # a closed connection may not say
                pid = dbapi_connection.info.backend_pid
        with self.lock:
            self.pool_pids.discard(pid)
            self.pool_ports.pop(pid, None)  # type: ignore[arg-type]

    def _open(self, autocommit: bool = False) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.config["dsn"],
            autocommit=autocommit,
            application_name=self.config["application_name"],
            connect_timeout=5,
        )
        if self.config.get("pooled"):
            conn.prepare_threshold = None  # transaction pooling: never prepare
        return conn

    def fill_pool(self) -> None:
        """Open pool_size connections (check them out together, then give them back)."""
        held = [self.engine.connect() for _ in range(self.pool_size)]
        for conn in held:
            conn.exec_driver_sql("SELECT 1")
        for conn in held:
            conn.close()

    def request(self) -> None:
        """Serve one request: check a connection out of the pool and use it. Requests are
        served one at a time, as by one synchronous worker (bursts are the exception, on
        purpose), so the pool only overflows when a test asks it to."""
        with self.serving, self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            conn.commit()

    def healthy(self) -> tuple[bool, str]:
        try:
            self.request()
        except sa_exc.TimeoutError:
            return False, "no connection available: the pool is exhausted"
        except sa_exc.SQLAlchemyError as exc:
            return False, f"database error: {str(exc).splitlines()[0]}"
        return True, "ok"

    def serve_traffic(self) -> None:
        """Use each pooled connection every `traffic_every` seconds, as an app serving
        requests does (none while it is 0: a quiet app); a dead one fails its request
        and the pool replaces it."""
        while True:
            every = self.traffic_every
            self.traffic_changed.wait(every if every > 0 else None)
            if self.traffic_changed.is_set():
                self.traffic_changed.clear()
                continue
            for _ in range(self.pool_size):
                with contextlib.suppress(sa_exc.SQLAlchemyError):
                    self.request()

    def set_traffic(self, every: float) -> None:
        self.traffic_every = every
        self.traffic_changed.set()

    def leak(self, count: int, mode: str) -> list[int]:
        pids = []
        for _ in range(count):
            if mode.startswith("checkout"):
                conn = self.engine.connect()
                if mode == "checkout_in_transaction":
                    conn.exec_driver_sql("SELECT txid_current()")  # autobegin: stays open
                else:
                    conn.exec_driver_sql("SELECT 1")
                    conn.commit()
                raw = conn.connection.dbapi_connection
                assert raw is not None
                pid = raw.info.backend_pid
                with self.lock:
                    self.leaked.append(conn)
            else:
                raw_conn = self._open(autocommit=mode != "idle_in_transaction")
                if mode == "idle_in_transaction":
                    raw_conn.execute("SELECT txid_current()")
                pid = raw_conn.info.backend_pid
                with self.lock:
                    self.leaked.append(raw_conn)
            pids.append(pid)
        return pids

    def burst(self, count: int, seconds: float) -> list[int]:
        """Serve `count` concurrent requests that each hold a connection `seconds`."""
        pids: list[int] = []
        ready = threading.Barrier(count + 1, timeout=30)

        def one() -> None:
            with self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                with self.lock:
                    pids.append(raw.info.backend_pid)
                ready.wait()
                conn.exec_driver_sql(f"SELECT pg_sleep({float(seconds)})")
                conn.commit()

        for _ in range(count):
            threading.Thread(target=one, daemon=True).start()
        ready.wait()
        return pids

    def status(self) -> dict[str, Any]:
        pool = self.engine.pool
        assert isinstance(pool, QueuePool)
        with self.lock:
            leaked, leaked_ports = [], []
            for conn in self.leaked:
                raw = conn if isinstance(conn, psycopg.Connection) else None
                if raw is None:
                    with contextlib.suppress(Exception):
                        raw = conn.connection.dbapi_connection
                if raw is not None and not raw.closed:
                    leaked.append(raw.info.backend_pid)
                    leaked_ports.append(_local_port(raw))
        with self.lock:
            pool_pids = sorted(self.pool_pids)
            pool_ports = sorted(p for pid, p in self.pool_ports.items() if pid in self.pool_pids)
        return {
            "pid": os.getpid(),
            "pool": pool_pids,  # every connection the pool holds, in use or not
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "checked_out": pool.checkedout(),
            "idle_in_pool": pool.checkedin(),
            "overflow": pool.overflow(),
            "leaked": leaked,
            "pool_ports": pool_ports,
            "leaked_ports": leaked_ports,
            "traffic_seconds": self.traffic_every,
        }


def _local_port(conn: Any) -> int:
    """The local TCP port of a connection (0 over a Unix socket, or once closed)."""
    try:
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            name = sock.getsockname()
    except (OSError, psycopg.Error):
        return 0
    return int(name[1]) if isinstance(name, tuple) else 0


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: object) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/health":
                ok, why = app.healthy()
                if ok and (app.faults / "unhealthy").exists():  # lab fault
                    ok, why = False, "lab fault: unhealthy"
                self._reply(200 if ok else 503, {"ok": ok, "detail": why})
            elif path == "/status":
                self._reply(200, app.status())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            count = int(query.get("count", ["1"])[0])
            try:
                if url.path == "/leak":
                    pids = app.leak(count, query.get("mode", ["idle"])[0])
                    self._reply(200, {"leaked": pids})
                elif url.path == "/traffic":
                    app.set_traffic(float(query.get("every", ["0"])[0]))
                    self._reply(200, {"traffic_seconds": app.traffic_every})
                elif url.path == "/burst":
                    seconds = float(query.get("seconds", ["5"])[0])
                    self._reply(200, {"burst": app.burst(count, seconds)})
                else:
                    self._reply(404, {"error": "not found"})
            except (psycopg.Error, sa_exc.SQLAlchemyError, threading.BrokenBarrierError) as exc:
                self._reply(503, {"error": str(exc).strip().splitlines()[0]})

    return Handler


def notify(state: str) -> None:
    """Tell systemd our state (sd_notify), when it runs us as a Type=notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def _failing_start(fault: Path) -> bool:
    """The fail-start fault: every start fails, or (`times=N`) the first N starts after
    the fault was set: a transient failure the unit's Restart=on-failure heals. The
    starts are counted in the unit's runtime directory (kept across restarts)."""
    try:
        text = fault.read_text().strip()
        stamp = fault.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    if not text.startswith("times="):
        return True
    counter = Path(os.environ.get("RUNTIME_DIRECTORY", "/run/labapp")) / f"failed-starts-{stamp}"
    failed = int(counter.read_text()) if counter.exists() else 0
    if failed >= int(text.removeprefix("times=")):
        return False
    counter.write_text(str(failed + 1))
    return True


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    app = App(config)
    if _failing_start(app.faults / "fail-start"):  # lab fault: the app cannot start
        print("labapp: cannot start (lab fault fail-start)", file=sys.stderr, flush=True)
        return 1
    notify("STATUS=booting")
    time.sleep(float(config.get("boot_seconds", 0)))  # a real app server takes a while to boot
    app.fill_pool()
    server = ThreadingHTTPServer(("0.0.0.0", int(config["http_port"])), make_handler(app))
    server.daemon_threads = True

    def on_term(signum: int, frame: object) -> None:
        # Exit at once: the OS closes the sockets, the server sees the sessions end.
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    leak_on_start = app.faults / "leak-on-start"
    if leak_on_start.exists():  # lab fault: the new process leaks at once
        app.leak(int(leak_on_start.read_text().strip() or "3"), "idle")
    threading.Thread(target=app.serve_traffic, daemon=True).start()
    notify(f"READY=1\nSTATUS=serving with a pool of {app.pool_size}")
    print(f"labapp pid {os.getpid()} up with a pool of {app.pool_size}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
