"""The only module that talks SSH (fabric / paramiko).

Host keys are checked strictly: an unknown or changed key is refused, never added.
Every call returns a CommandResult per host instead of raising from deep inside.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import paramiko
from fabric import Connection

from connfix.config.defaults import HEALTH_CHECK_S
from connfix.hosts import known_hosts

if TYPE_CHECKING:
    from connfix.config.inventory import Host, Ssh

T = TypeVar("T")
TAIL_LINES = 10
# paramiko logs a failed handshake with a traceback from its transport thread; with no
# handler configured, Python prints it on stderr. connfix reports the failure itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """Return the last lines of some output, stripped."""
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class CommandResult:
    """What one command did on one host."""

    host: str
    command: str
    exit_code: int | None  # None: it never ran to completion (no connection, timeout)
    stdout: str
    stderr: str
    duration: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Tell whether the command ran and exited 0."""
        return self.error is None and self.exit_code == 0

    @property
    def output_tail(self) -> str:
        """Return the last lines of stderr and stdout, for messages."""
        return tail("\n".join(part for part in (self.stdout, self.stderr) if part.strip()))

    def describe(self) -> str:
        """Describe a failure as the operator needs it: host, command, status, output."""
        if self.ok:
            return f"{self.host}: `{self.command}` succeeded"
        head = f"{self.host}: `{self.command}` "
        head += self.error if self.error else f"exited with status {self.exit_code}"
        return head + (f"\n{self.output_tail}" if self.output_tail else "")


def known_hosts_path(ssh: Ssh, conn: Connection) -> Path:
    """Return the known_hosts file: the inventory's, then ~/.ssh/config's, then the default."""
    if ssh.known_hosts_file:
        return Path(ssh.known_hosts_file).expanduser()
    from_config = conn.ssh_config.get("userknownhostsfile")
    if from_config:
        first = str(from_config).split()[0]
        return Path(os.path.expanduser(first))
    return Path("~/.ssh/known_hosts").expanduser()


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


class _PromptAckSocket(socket.socket):
    """A TCP socket for short SSH exchanges: no Nagle, and on Linux no delayed ACKs.

    sshd leaves Nagle on for non-interactive sessions. Its small replies then wait for
    the client's ACK of whatever it sent just before (after authentication, an
    unsolicited host-keys message), and the client delays that ACK by 40 ms. Measured on
    the lab: connect + authenticate 62 ms → 17 ms (TCP_NODELAY from the first packet),
    the first command on a fresh connection 45 ms → 4 ms (TCP_QUICKACK after each read).
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return data


def prompt_ack_socket(host: str, port: int, timeout: float) -> socket.socket:
    """Connect a _PromptAckSocket to host:port (any address family), within timeout."""
    plain = socket.create_connection((host, port), timeout=timeout)
    sock = _PromptAckSocket(fileno=plain.detach())
    sock.settimeout(timeout)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


_Parsed = tuple[known_hosts.KnownHosts, paramiko.HostKeys]
_KNOWN_CACHE: dict[tuple[str, int, int, int, int], _Parsed] = {}
_KNOWN_LOCK = threading.Lock()


def _parsed_known_hosts(path: Path) -> _Parsed:
    """Read a known_hosts file once per process (again only if it changes): connfix's
    markers (`@revoked`, `@cert-authority`) and paramiko's plain lines. paramiko's own
    loading is quadratic in the number of lines (each line is checked against all the
    ones before); read per connection, a 200-host file cost 24 ms of CPU per host."""
    import tempfile

    st = path.stat()  # FileNotFoundError: the caller's
    key = (str(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    with _KNOWN_LOCK:
        cached = _KNOWN_CACHE.get(key)
        if cached is not None:
            return cached
        known = known_hosts.load(path)
        keys = paramiko.HostKeys()
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".known_hosts") as plain:
            plain.write("\n".join(known.plain) + "\n")
            plain.flush()
            keys.load(plain.name)
        _KNOWN_CACHE[key] = (known, keys)
        return known, keys


def _load_known_hosts(client: paramiko.SSHClient, path: Path) -> known_hosts.KnownHosts:
    """Load a known_hosts file as OpenSSH reads it into a client."""
    known, parsed = _parsed_known_hosts(path)
    # paramiko's public load_host_keys would parse the file again: give the client its
    # own HostKeys over the parsed entries (a list copy; the entries are only read)
    keys = paramiko.HostKeys()
    keys._entries = list(parsed._entries)  # type: ignore[attr-defined]
    client._host_keys = keys  # type: ignore[attr-defined]
    return known


def _key_name(conn: Connection) -> str:
    """Return the name a host's key has in known_hosts: `host`, or `[host]:port`."""
    port = int(conn.port)
    return conn.host if port == 22 else f"[{conn.host}]:{port}"


def _jump(key_name: str, target: str) -> str:
    return key_name if key_name == target else f"jump host {key_name} (on the way to {target})"


class HostKeyRefused(Exception):
    """The host's key is unknown or differs from the known one."""


class _NotSent(EOFError):
    """The command could not be sent: no session channel could be opened."""


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, key_name: str) -> None:
        super().__init__(f"{key_name} is not in known_hosts")
        self.key_name = key_name


class _CertificateRefused(paramiko.SSHException):
    def __init__(self, key_name: str, reason: str) -> None:
        super().__init__(f"host certificate for {key_name} refused: {reason}")
        self.key_name = key_name
        self.reason = reason


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not known, saying which host (a jump host, maybe),
    unless it offers a host certificate that a `@cert-authority` line vouches for."""

    def __init__(self, host: str) -> None:
        self.host = host  # the name or address connected to: a principal to look for
        self.known: known_hosts.KnownHosts | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        known = self.known
        offered = getattr(key, "public_blob", None) is not None
        if known is None or not (offered or known.authorities_for(hostname)):
            raise _UnknownHostKey(hostname)
        try:
            known_hosts.check_certificate(key, hostname, self.host, known)
        except known_hosts.CertificateRefused as exc:
            raise _CertificateRefused(hostname, str(exc)) from None


def _address_and_port(key_name: str) -> tuple[str, int]:
    """Split a known_hosts name, `host` or `[host]:port`."""
    if key_name.startswith("[") and "]:" in key_name:
        host, port = key_name[1:].rsplit("]:", 1)
        return host, int(port)
    return key_name, 22


class Remote:
    """One SSH connection to one inventory host, opened with strict host-key checking."""

    def __init__(self, host: Host, ssh: Ssh) -> None:
        self.host = host
        self.ssh = ssh
        connect_kwargs: dict[str, Any] = {
            "banner_timeout": ssh.connect_timeout,
            "auth_timeout": ssh.connect_timeout,
        }
        if ssh.identity_file:
            connect_kwargs["key_filename"] = [str(Path(ssh.identity_file).expanduser())]
        self.conn = Connection(
            host.ssh_address,
            user=ssh.user,
            port=ssh.port,
            connect_timeout=max(1, round(ssh.connect_timeout)),
            connect_kwargs=connect_kwargs,
        )
        self.known_hosts = known_hosts_path(ssh, self.conn)
        # ProxyJump hosts from ~/.ssh/config, nearest the target first. fabric opens them
        # with AutoAddPolicy and no known_hosts: connfix checks their keys as strictly.
        self.reconnects: list[str] = []  # why a stale connection was reopened, in order
        self.known: known_hosts.KnownHosts | None = None  # the target's, once read
        self.hops: list[Connection] = []
        gateway = self.conn.gateway
        while isinstance(gateway, Connection):
            self.hops.append(gateway)
            gateway = gateway.gateway
        self.policies: dict[int, _RefuseUnknown] = {}
        for conn in (self.conn, *self.hops):
            self.policies[id(conn)] = _RefuseUnknown(conn.host)
            conn.client.set_missing_host_key_policy(self.policies[id(conn)])
        # set when a login begun ahead is done, with the commands run ahead on it
        self._early: threading.Event | None = None
        self._early_error: HostKeyRefused | ConnectionError | None = None
        self._abandoned = False  # closed before that login was done
        self._early_lock = threading.Lock()
        self._ahead: dict[str, tuple[float, CommandResult]] = {}  # command → (began, result)

    def _log_in(self, done: threading.Event, ahead: Sequence[str], limit: float) -> None:
        """The login begun ahead, in a worker of log_in_early, then the commands `ahead`
        on it; its outcome is kept for the next open(), which waits for `done`, and each
        command's result for take_ahead()."""
        try:
            with self._early_lock:
                if self._abandoned:  # closed before its turn came: no login at all
                    return
            self._connect()
        except (HostKeyRefused, ConnectionError) as exc:
            self._early_error = exc
        except Exception as exc:  # what a transport may raise beyond those: as open() words it
            self._early_error = ConnectionError(f"SSH to {_key_name(self.conn)} failed: {exc}")
        else:
            self._run_ahead(ahead, limit)
        finally:
            with self._early_lock:
                abandoned = self._abandoned
                done.set()
        if abandoned:  # the run ended while this logged in: nothing may stay open
            self._close()

    def _run_ahead(self, commands: Sequence[str], limit: float) -> None:
        """Run read-only commands the run will ask for first, on the login just made,
        before anyone else may use it. A command that did not run to an end of its own
        here (the connection failed under it, or the run closed it) keeps no result: when
        asked for, it runs then, as any command."""
        for command in commands:
            with self._early_lock:
                if self._abandoned:
                    return
            began = time.monotonic()
            try:
                ended = self._exec(command, limit)
            except (_NotSent, paramiko.SSHException, OSError, EOFError):
                return
            transport = self.conn.client.get_transport()
            if transport is None or not transport.is_active():  # lost or closed under it
                return
            self._ahead[command] = (began, self._result(command, began, limit, *ended))

    def take_ahead(self, command: str, fresh: float) -> CommandResult | None:
        """The result of `command` run ahead on the login begun early (waiting for it if
        it is still under way), when it began at most `fresh` seconds ago; else None (and
        the caller runs it). Each result is taken once."""
        early = self._early
        if early is not None:
            early.wait()
        kept = self._ahead.pop(command, None)
        if kept is None or time.monotonic() - kept[0] > fresh:
            return None
        return kept[1]

    def open(self) -> None:
        """Connect and authenticate; raise HostKeyRefused or a ConnectionError with a reason."""
        early, self._early = self._early, None
        if early is not None:
            early.wait()
            error, self._early_error = self._early_error, None
            if error is not None:
                raise error
        self._connect()

    def _connect(self) -> None:
        if self.conn.is_connected:
            return
        try:
            self._open()
        except (HostKeyRefused, ConnectionError):
            self._close()  # a half-open transport must not linger
            raise

    # Over 80 lines: the known_hosts of every host on the way (jump hosts too) loaded and
    # its certificate policy set, then one connect whose every failure (changed or unknown
    # host key, authentication, timeout) becomes its own message.
    def _open(self) -> None:
        files: dict[str, Path] = {}  # known_hosts name of each host on the way → its file
        for conn in (self.conn, *self.hops):
            path = self.known_hosts if conn is self.conn else known_hosts_path(self.ssh, conn)
            files[_key_name(conn)] = path
            try:
                known = _load_known_hosts(conn.client, path)
            except FileNotFoundError:
                known = known_hosts.KnownHosts(path)
            except (
                OSError,
                ValueError,
                paramiko.SSHException,
                paramiko.hostkeys.InvalidHostKey,
            ) as exc:
                raise HostKeyRefused(f"cannot read known_hosts {path}: {exc}") from None
            self.policies[id(conn)].known = known
            if conn is self.conn:
                self.known = known
            # A host known only through a @cert-authority line is asked for its
            # certificate first, as OpenSSH asks; otherwise paramiko's order stands.
            key_name = _key_name(conn)
            if known.authorities_for(key_name) and not conn.client.get_host_keys().lookup(key_name):
                conn.connect_kwargs["transport_factory"] = known_hosts.CertificateFirstTransport
            else:
                conn.connect_kwargs.pop("transport_factory", None)
        name = _key_name(self.conn)
        sock: socket.socket | None = None
        try:
            if not self.conn.gateway:  # a ProxyJump/ProxyCommand makes its own socket
                sock = prompt_ack_socket(self.conn.host, self._port(), self.ssh.connect_timeout)
                self.conn.connect_kwargs["sock"] = sock
            self.conn.open()
            sock = None  # the transport owns it now
        except paramiko.BadHostKeyException as exc:
            # paramiko names the host without its port: find the known_hosts name
            changed = next(
                (_key_name(c) for c in (self.conn, *self.hops) if c.host == exc.hostname),
                exc.hostname,
            )
            who = _jump(changed, name)
            path = files.get(changed, self.known_hosts)
            raise HostKeyRefused(
                f"host key for {who} has CHANGED: it offered"
                f" {known_hosts.fingerprint(exc.key)}, {path} expects"
                f" {known_hosts.fingerprint(exc.expected_key)}; refusing to connect. If the"
                f" host was rebuilt on purpose, remove the old key with `ssh-keygen -R"
                f" '{changed}' -f {path}` and add the new one after checking it"
            ) from None
        except _CertificateRefused as exc:
            who = _jump(exc.key_name, name)
            raise HostKeyRefused(
                f"host key for {who} is not trusted: {exc.reason}; refusing to connect"
            ) from None
        except _UnknownHostKey as exc:
            who = _jump(exc.key_name, name)
            path = files.get(exc.key_name, self.known_hosts)
            address, port = _address_and_port(exc.key_name)
            raise HostKeyRefused(
                f"host key for {who} is unknown (not in {path}); refusing to"
                f" connect. Check the key out of band, then add it, e.g. `ssh-keyscan"
                f" -p {port} {address} >> {path}`"
            ) from None
        except paramiko.SSHException as exc:
            raise ConnectionError(f"SSH to {name} failed: {exc}") from None
        except TimeoutError:
            raise ConnectionError(
                f"SSH to {name} timed out after {self.ssh.connect_timeout:.0f}s"
            ) from None
        except OSError as exc:
            raise ConnectionError(f"SSH to {name} failed: {exc.strerror or exc}") from None
        finally:
            self.conn.connect_kwargs.pop("sock", None)  # a reconnect makes a new one
            if sock is not None and self.conn.client.get_transport() is None:
                sock.close()
        transport = self.conn.client.get_transport()
        server_key = transport.get_remote_server_key() if transport is not None else None
        if server_key is not None and self.known is not None and self.known.is_revoked(server_key):
            self.conn.close()
            raise HostKeyRefused(
                f"host key for {name} is marked @revoked in {self.known_hosts}"
                f" ({known_hosts.fingerprint(server_key)}); refusing to connect"
            )
        if transport is not None and self.ssh.keepalive:
            transport.set_keepalive(max(1, round(self.ssh.keepalive)))
        if transport is not None and self.conn.gateway:
            # Short commands back to back: without this, Nagle and delayed ACKs add about
            # 40 ms to each one (measured on the lab).
            with contextlib.suppress(OSError, AttributeError):
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _port(self) -> int:
        return int(self.conn.port)

    def run(
        self, command: str, timeout: float | None = None, sent: Callable[[], None] | None = None
    ) -> CommandResult:
        """Run one command; never raises for remote failures, returns what happened.
        `sent` is called once the host has the command, before its end is waited for."""
        started = time.monotonic()
        limit = timeout if timeout is not None else self.ssh.command_timeout

        def failed(error: str) -> CommandResult:
            elapsed = time.monotonic() - started
            return CommandResult(self.host.name, command, None, "", "", elapsed, error)

        for attempt in (1, 2):
            try:
                self.open()
            except (HostKeyRefused, ConnectionError) as exc:
                return failed(str(exc))
            try:
                ended = self._exec(command, limit, sent)
                break
            except _NotSent as stale:
                if attempt == 2:
                    self.close()
                    return failed(f"SSH connection lost: {stale}")
                # The connection went stale (a long wait in a roll, a dropped idle flow)
                # and the command never reached the host: reconnect once and send it.
                self.reconnects.append(str(stale) or "the connection was closed")
                self.close()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.close()
                return failed(f"SSH connection lost: {exc}")
        return self._result(command, started, limit, *ended)

    def _result(
        self,
        command: str,
        started: float,
        limit: float,
        exit_code: int | None,
        stdout: str,
        stderr: str,
        timed_out: bool,
    ) -> CommandResult:
        """What a command that ran on a channel did, as _exec returned it."""
        elapsed = time.monotonic() - started
        error = None
        if timed_out:
            exit_code, error = None, f"timed out after {limit:.0f}s"
        elif exit_code is None or exit_code < 0:
            exit_code, error = None, "ended without an exit status (connection closed?)"
        return CommandResult(self.host.name, command, exit_code, stdout, stderr, elapsed, error)

    def _exec(
        self, command: str, limit: float, sent: Callable[[], None] | None = None
    ) -> tuple[int | None, str, str, bool]:
        """Run a command on a channel of the open connection, with a deadline.

        The timeout is kept here, in the calling thread: invoke's runner enforces it with
        a timer thread that may still be closing the channel after the call returned.
        """
        transport = self.conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise _NotSent("the SSH connection is closed")
        try:
            channel = transport.open_session(timeout=self.ssh.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _NotSent(str(exc)) from None
        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + limit
        try:
            channel.exec_command(command)
            if sent is not None:
                sent()
            while True:
                while channel.recv_ready():
                    stdout += channel.recv(65536)
                while channel.recv_stderr_ready():
                    stderr += channel.recv_stderr(65536)
                if channel.exit_status_ready() and not (
                    channel.recv_ready() or channel.recv_stderr_ready()
                ):
                    # drain what arrived with the exit status, then stop; a channel
                    # closed under it (the connection lost or closed) sends nothing more
                    while (
                        not channel.eof_received
                        and not channel.closed
                        and time.monotonic() < deadline
                    ):
                        if channel.recv_ready():
                            stdout += channel.recv(65536)
                        elif channel.recv_stderr_ready():
                            stderr += channel.recv_stderr(65536)
                        else:
                            select.select([channel], [], [], 0.01)
                    stdout += channel.recv(65536) if channel.recv_ready() else b""
                    stderr += channel.recv_stderr(65536) if channel.recv_stderr_ready() else b""
                    code = channel.recv_exit_status()
                    return code, _text(stdout), _text(stderr), False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, _text(stdout), _text(stderr), True
                select.select([channel], [], [], min(remaining, 0.05))
        finally:
            channel.close()

    def close(self) -> None:
        """Close the connection, and reap the ProxyCommand process if one carried it; a
        login begun ahead and still under way closes what it opens when it is done."""
        with self._early_lock:
            early = self._early
            if early is not None and not early.is_set():
                self._abandoned = True
        self._close()

    def _close(self) -> None:
        transport = self.conn.client.get_transport()
        sock = transport.sock if transport is not None else None
        with contextlib.suppress(Exception):
            self.conn.close()
        for hop in self.hops:  # fabric leaves the jump hosts' connections open
            with contextlib.suppress(Exception):
                hop.close()
        if isinstance(sock, paramiko.ProxyCommand):  # paramiko signals it, never waits
            assert transport is not None
            transport.join(timeout=5)  # its thread still closes the proxy's pipes on exit
            process = sock.process
            with contextlib.suppress(Exception):
                process.wait(timeout=5)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()


def open_checked(host: Host, ssh: Ssh) -> tuple[Remote, bool, str, str | None]:
    """Open a connection as a read-only check does: return it (closed when it failed),
    whether the host answered, its host key ("known", "refused", "n/a") and the error."""
    conn = Remote(host, ssh)
    try:
        conn.open()
    except HostKeyRefused as exc:
        return conn, True, "refused", str(exc)
    except ConnectionError as exc:
        return conn, False, "n/a", str(exc)
    return conn, True, "known", None


def log_in_early(
    conns: Iterable[Remote],
    workers: int = 16,
    ahead: Mapping[str, Sequence[str]] | None = None,
    limit: float = HEALTH_CHECK_S,
) -> None:
    """Begin these connections' logins now, for commands that come later, at most
    `workers` at once (as `parallel`), in daemon threads: a run that ends before it needs
    them does not wait for them. Each connection's next open() waits for its own login
    and takes its outcome (a host refused or unreachable is not tried twice in a row for
    one command). After a login the host's sshd still sets the session up (PAM, logind:
    30–90 ms on the lab's hosts) before it runs the first command: begun ahead, that
    happens while connfix does other work.

    `ahead` (host name → commands): read-only commands run on each login as soon as it
    is made (each with `limit` seconds), their results kept for take_ahead(); the next
    open() waits for them too, so no one else uses the connection meanwhile."""
    commands = ahead or {}
    waiting = collections.deque((conn, threading.Event()) for conn in conns)
    for conn, done in waiting:
        conn._early = done

    def work() -> None:
        while True:
            try:
                conn, done = waiting.popleft()
            except IndexError:
                return
            conn._log_in(done, commands.get(conn.host.name, ()), limit)

    for number in range(min(workers, len(waiting))):
        threading.Thread(target=work, name=f"connfix-login-{number + 1}", daemon=True).start()


def parallel(items: Iterable[T], fn: Callable[[T], Any], workers: int = 16) -> list[Any]:
    """Run `fn` on every item in threads, keeping the input order in the result."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))
