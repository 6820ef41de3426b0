"""The lab's application: holds a pool of PostgreSQL connections and can be told to leak.

This simulates a customer's app server, so it talks to PostgreSQL directly; connfix's own
code reaches the database only through connfix.pg.

Every `traffic_seconds` it uses each pooled connection (a real app serves requests), so
the pool's sessions stay young and leaked ones grow old; a pooled connection that died is
replaced.

HTTP on the host's address:
  GET  /health                      200 when every pool connection answers
  GET  /status                      JSON: pid, pool and leaked backend pids
  POST /leak?count=K&mode=idle|idle_in_transaction   open K more connections and keep them
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


class App:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.faults = Path(config["faults_dir"])
        self.lock = threading.Lock()
        self.pool: list[psycopg.Connection[Any]] = []
        self.leaked: list[psycopg.Connection[Any]] = []

    def _open(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.config["dsn"],
            autocommit=True,
            application_name=self.config["application_name"],
            connect_timeout=5,
        )
        conn.execute("SELECT 1")
        return conn

    def fill_pool(self) -> None:
        with self.lock:
            self.pool = [c for c in self.pool if not c.closed and not c.broken]
            while len(self.pool) < int(self.config["pool_size"]):
                self.pool.append(self._open())

    def healthy(self) -> bool:
        with self.lock:
            for conn in self.pool:
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    return False
            return len(self.pool) == int(self.config["pool_size"])

    def serve_traffic(self, every: float) -> None:
        """Use every pooled connection each `every` seconds, as an app serving requests
        does, and replace one that died (terminated, say) as a real pool would.

        So the pool's sessions are never idle for long, and leaked ones grow old."""
        while True:
            time.sleep(every)
            with self.lock:
                for conn in self.pool:
                    with contextlib.suppress(psycopg.Error):  # closed or broken: replaced below
                        conn.execute("SELECT 1")
            with contextlib.suppress(psycopg.Error):  # the database is full or away: next time
                self.fill_pool()

    def leak(self, count: int, mode: str) -> list[int]:
        pids = []
        for _ in range(count):
            conn = self._open()
            if mode == "idle_in_transaction":
                conn.autocommit = False
                conn.execute("SELECT txid_current()")
            with self.lock:
                self.leaked.append(conn)
            pids.append(conn.info.backend_pid)
        return pids

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "pid": os.getpid(),
                "pool": [c.info.backend_pid for c in self.pool if not c.closed],
                "leaked": [c.info.backend_pid for c in self.leaked if not c.closed],
            }


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
                # lab fault: a file named `unhealthy` in the faults directory fails it
                ok = app.healthy() and not (app.faults / "unhealthy").exists()
                self._reply(200 if ok else 503, {"ok": ok})
            elif path == "/status":
                self._reply(200, app.status())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if url.path != "/leak":
                self._reply(404, {"error": "not found"})
                return
            query = parse_qs(url.query)
            count = int(query.get("count", ["1"])[0])
            mode = query.get("mode", ["idle"])[0]
            try:
                pids = app.leak(count, mode)
            except psycopg.Error as exc:
                self._reply(503, {"error": str(exc).strip()})
                return
            self._reply(200, {"leaked": pids})

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


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    app = App(config)
    if (app.faults / "fail-start").exists():  # lab fault: the app cannot start
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
    every = float(config.get("traffic_seconds", 0))
    if every > 0:
        threading.Thread(target=app.serve_traffic, args=(every,), daemon=True).start()
    notify(f"READY=1\nSTATUS=serving with {len(app.pool)} pooled connections")
    print(f"labapp pid {os.getpid()} up with {len(app.pool)} connections", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
