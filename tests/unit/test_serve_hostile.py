"""`connfix serve` is an HTTP service on a network: a real `connfix serve` process on
loopback, fed what an attacker sends — huge and endless bodies, unfinished request
heads, malformed payloads, credentials for the wrong endpoint. The inventory's one
environment observes only, its database unreachable: nothing here needs the lab."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, process, request, retry

TOKEN = "t0ken-for-the-hostile-tests"
SECRET = "pd-signing-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("serve")
    inventory = tmp / "inventory.yaml"
    inventory.write_text(
        "version: 1\nenvironments:\n  prod:\n    database:\n"
        '      dsn: "host=127.0.0.1 port=1 dbname=app user=connfix connect_timeout=1"\n'
        "    service: {unit: app.service, pool_size: 3}\n"
        "    hosts: [{name: web1, ssh_address: 127.0.0.1}]\n"
        "    alerts: {mode: observe, pagerduty_services: [PSVC1]}\n"
    )
    port = free_port()
    env = {**os.environ, "CONNFIX_SERVE_TOKEN": TOKEN, "CONNFIX_SERVE_HMAC_SECRET": SECRET}
    argv = [
        sys.executable, "-m", "connfix", "serve", "-i", str(inventory),
        "--listen", f"127.0.0.1:{port}", "--incidents-dir", str(tmp / "incidents"),
        "--request-timeout", "2s",
    ]  # fmt: skip
    log = tmp / "serve.log"
    with process(argv, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        retry(lambda: _up(base), timeout=30, interval=0.2)
        yield {"base": base, "port": port, "pid": proc.pid, "log": log}


def _up(base: str) -> bool:
    try:
        return request(base + "/health", token=None)[0] == 200
    except OSError:
        return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw(port: int, head: bytes, body_chunks: int = 0, chunk: bytes = b"") -> bytes:
    """Send a request head, then `body_chunks` chunks of a chunked body; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(body_chunks):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server answered and closed: what we want
        sock.settimeout(10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
        except OSError:
            pass
        return data


CHUNKED = (
    b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n"
)


def test_an_unauthenticated_endless_body_is_refused_before_it_is_read(
    server: dict[str, Any],
) -> None:
    before = rss_mb(server["pid"])
    answer = raw(server["port"], CHUNKED + b"\r\n", body_chunks=400, chunk=b"x" * 256_000)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert rss_mb(server["pid"]) - before < 40


def test_an_authenticated_body_over_the_limit_is_refused_while_read(
    server: dict[str, Any],
) -> None:
    before = rss_mb(server["pid"])
    head = CHUNKED + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    answer = raw(server["port"], head, body_chunks=400, chunk=b"x" * 256_000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert rss_mb(server["pid"]) - before < 40


def test_each_credential_opens_only_its_own_endpoint(server: dict[str, Any]) -> None:
    base = server["base"]
    body = json.dumps({"alerts": []}).encode()
    signature = "v1=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    status, _ = request(base + "/alertmanager", body, token=None,
                        headers={"X-PagerDuty-Signature": signature})  # fmt: skip
    assert status == 401
    empty = "v1=" + hmac.new(SECRET.encode(), b"", hashlib.sha256).hexdigest()
    req = request(base + "/metrics", None, token=None, headers={"X-PagerDuty-Signature": empty})
    assert req[0] == 401
    assert request(base + "/metrics", None, token="wrong")[0] == 401


APPROVAL = "/approvals/20261205T021500Z-prod"


@pytest.mark.parametrize(
    ("path", "body", "token", "headers", "expected"),
    [
        (APPROVAL, b'{"decision": "approve", "approver": "bob"}', None, {}, 401),
        (APPROVAL, b'{"decision": "approve", "approver": "bob"}', "wrong", {}, 401),
        (APPROVAL, b'{"decision": "approve", "approver": "bob"}', None,
         {"X-Connfix-Signature": "v1=" + "0" * 64}, 401),
        (APPROVAL, b'{"decision": "approve", "approver": "bob"}', None,
         {"X-PagerDuty-Signature": "v1=" + "0" * 64}, 401),  # PagerDuty's opens /pagerduty only
        ("/slack/interactive", b"payload=%7B%7D", None, {}, 401),
        # no signing secret configured: no signature is ever right
        ("/slack/interactive", b"payload=%7B%7D", TOKEN,
         {"X-Slack-Signature": "v0=" + "0" * 64, "X-Slack-Request-Timestamp": "1"}, 401),
        (APPROVAL, b"not json", TOKEN, {}, 400),
        (APPROVAL, b'["approve"]', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "maybe", "approver": "bob"}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve"}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve", "approver": "  "}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve", "approver": "bob\\nroot"}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve", "approver": "' + b"b" * 101 + b'"}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve", "approver": "bob", "plan": 7}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve", "approver": "bob", "reason": []}', TOKEN, {}, 400),
        (APPROVAL, b'{"decision": "approve", "approver": "bob"}', TOKEN, {}, 404),
        ("/approvals/..%2F..%2Fetc", b'{"decision": "approve", "approver": "bob"}', TOKEN, {},
         404),
        ("/approvals/20261205T021500Z-prod%2F..%2F..", b'{"decision": "approve",'
         b' "approver": "bob"}', TOKEN, {}, 404),
    ],
)  # fmt: skip
def test_approvals_refuse_the_unauthenticated_and_the_malformed(
    server: dict[str, Any],
    path: str,
    body: bytes,
    token: str | None,
    headers: dict[str, str],
    expected: int,
) -> None:
    """Nothing waits on this server: every request is refused for what it is, never
    decided, never a 500."""
    status, answer = request(server["base"] + path, body, token=token, headers=headers)
    assert status == expected, (status, answer)


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/pagerduty", b"{}", {"X-PagerDuty-Signature": "v1=\u00e9\u00e9"}),
        ("/alertmanager", b'{"alerts": [{"status": "firing", "labels": "prod"}]}', {}),
        ("/alertmanager", b'{"alerts": [{"status": "firing", "labels": ["a"]}]}', {}),
        ("/pagerduty", b'{"event": {"event_type": "incident.triggered", "data": []}}', {}),
        ("/alertmanager", b'{"alerts": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
        ("/alertmanager", b"\xff\xfe not json", {}),
    ],
    ids=["non-ascii-signature", "labels-string", "labels-list", "data-list", "deep", "binary"],
)
def test_malformed_input_is_a_4xx_never_a_500(
    server: dict[str, Any], path: str, body: bytes, headers: dict[str, str]
) -> None:
    token = None if "X-PagerDuty-Signature" in headers else TOKEN
    encoded = {k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()}
    status, answer = request(server["base"] + path, body, token=token, headers=encoded)
    assert 400 <= status < 500, (status, answer)


def test_alerts_that_cannot_be_told_apart_are_refused_not_merged(server: dict[str, Any]) -> None:
    base = server["base"]
    status, answer = request(
        base + "/alertmanager",
        {"alerts": [{"status": "firing", "labels": {"environment": "prod"}}]},
        token=TOKEN,
    )
    assert status == 202 and answer["decisions"][0]["action"] == "refused"
    assert "no startsAt" in answer["decisions"][0]["reason"]
    trigger = {"event": {"event_type": "incident.triggered",
                         "data": {"service": {"id": "PSVC1"}, "title": "x"}}}  # fmt: skip
    status, answer = request(base + "/pagerduty", trigger, token=TOKEN)
    assert status == 202 and "no data.id" in answer["decisions"][0]["reason"]


def test_unfinished_request_heads_are_closed_and_real_alerts_still_answered(
    server: dict[str, Any],
) -> None:
    """60 connections from one address send half a request head and stop: at most 32 are
    kept, each closed after the request timeout (2s here); meanwhile a request from
    another address is answered."""
    held = []
    for _ in range(60):
        sock = socket.create_connection(("127.0.0.1", server["port"]), timeout=5)
        sock.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        held.append(sock)
    try:
        other = socket.create_connection(
            ("127.0.0.1", server["port"]), timeout=5, source_address=("127.0.0.2", 0)
        )
        with other:
            other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert other.recv(100).startswith(b"HTTP/1.1 200")
        time.sleep(3)  # past the request timeout
        closed = 0
        for sock in held:
            sock.settimeout(2)
            try:
                closed += sock.recv(10) == b""
            except OSError:
                closed += 1
        assert closed == len(held)
    finally:
        for sock in held:
            sock.close()


def test_a_flood_of_garbage_and_broken_clients_keeps_the_log_small(
    server: dict[str, Any],
) -> None:
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=5) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            sock.settimeout(2)
            with contextlib.suppress(OSError):
                sock.recv(100)
    # a client that goes away mid-body
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=5) as sock:
        sock.sendall(CHUNKED + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode() + b"10\r\n0123")
    time.sleep(0.5)
    log = server["log"].read_text(errors="replace")
    assert "Traceback" not in log, log[-2000:]
    assert len(log) < 20_000, len(log)
    assert _up(server["base"])
