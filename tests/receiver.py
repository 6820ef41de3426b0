"""A local HTTP receiver for the tests: records every POST (path, headers, JSON body);
answers with a status chosen per path. Loopback only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status: dict[str, int] = {}  # path → status to answer (default 200)
        self.redirect: dict[str, str] = {}  # path → Location of a 302 answer
        self.trickle: dict[str, float] = {}  # path → seconds to trickle the answer over
        self.lock = threading.Lock()
        self.url = ""

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [p["body"] for p in self.posts if p["path"] == path]


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            with state.lock:
                state.posts.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path in state.trickle:  # one byte of the answer every 0.2 s
                import time

                deadline = time.monotonic() + state.trickle[self.path]
                answer = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * 10_000 + b"\r\n\r\n"
                for byte in answer:
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
                self.close_connection = True
                return
            code = state.status.get(self.path, 200)
            self.send_response(302 if self.path in state.redirect else code)
            if self.path in state.redirect:
                self.send_header("Location", state.redirect[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with state.lock:
                state.posts.append({"path": self.path, "headers": dict(self.headers), "body": None})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
