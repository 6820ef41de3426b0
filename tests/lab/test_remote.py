"""The SSH layer against the lab's real sshd: results per host, strict host keys."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connfix.config.inventory import Host
from connfix.hosts import remote
from tests.helpers import Lab


def _remote(lab_env: Any, index: int = 0, **ssh: Any) -> remote.Remote:
    return remote.Remote(lab_env.hosts[index], lab_env.ssh.replace(**ssh))


def test_run_returns_exit_code_output_and_duration(lab_env: Any) -> None:
    conn = _remote(lab_env)
    try:
        ok = conn.run("echo hello; hostname")
        assert ok.ok and ok.exit_code == 0
        assert ok.stdout.split() == ["hello", "app1"]
        assert ok.host == "app1" and ok.duration > 0
        failed = conn.run("echo some output; echo oops >&2; exit 7")
        assert not failed.ok and failed.exit_code == 7 and failed.error is None
        assert "oops" in failed.output_tail and "some output" in failed.output_tail
        assert "app1: `echo some output; echo oops >&2; exit 7` exited with status 7" in (
            failed.describe()
        )
    finally:
        conn.close()


def test_command_timeout(lab_env: Any) -> None:
    conn = _remote(lab_env)
    try:
        result = conn.run("sleep 5", timeout=1)
        assert result.exit_code is None and result.error == "timed out after 1s"
        assert result.duration < 4
    finally:
        conn.close()


def test_output_tail_keeps_the_last_lines(lab_env: Any) -> None:
    conn = _remote(lab_env)
    try:
        result = conn.run("seq 1 100; exit 1")
        assert result.output_tail.splitlines() == [str(n) for n in range(91, 101)]
    finally:
        conn.close()


def test_parallel_results_keep_host_order(lab_env: Any) -> None:
    conns = [remote.Remote(h, lab_env.ssh) for h in lab_env.hosts]
    try:
        results = remote.parallel(conns, lambda c: c.run("hostname"))
    finally:
        for conn in conns:
            conn.close()
    assert [r.stdout.strip() for r in results] == ["app1", "app2", "app3"]


def test_unknown_host_key_is_refused(lab_env: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    conn = _remote(lab_env, known_hosts_file=str(empty))
    with pytest.raises(remote.HostKeyRefused, match=r"is unknown .*ssh-keyscan"):
        conn.open()
    result = conn.run("true")
    assert not result.ok and result.error is not None and "unknown" in result.error
    assert empty.read_text() == ""  # never added silently


def test_changed_host_key_is_refused(lab: Lab, lab_env: Any, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keytype, blob = other.with_suffix(".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"{lab_env.hosts[0].ssh_address} {keytype} {blob}\n")
    conn = _remote(lab_env, known_hosts_file=str(known))
    with pytest.raises(remote.HostKeyRefused, match=r"has CHANGED.*ssh-keygen -R") as refused:
        conn.open()
    assert known.read_text() == f"{lab_env.hosts[0].ssh_address} {keytype} {blob}\n"

    # both keys as OpenSSH shows them (`ssh-keygen -lf`), the offered one first
    def openssh_fingerprint(pub: Path) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True)
        return out.stdout.split()[1]

    offered = openssh_fingerprint(lab.paths.host_dir("app1") / "ssh_host_ed25519_key.pub")
    expected = openssh_fingerprint(other.with_suffix(".pub"))
    assert offered.startswith("SHA256:") and offered != expected
    assert f"it offered ssh-ed25519 {offered}, {known} expects ssh-ed25519 {expected}" in str(
        refused.value
    )


def test_unreachable_host_is_a_result_not_an_exception(lab_env: Any) -> None:
    ghost = Host(name="ghost", ssh_address=lab_env.hosts[0].ssh_address.rsplit(".", 1)[0] + ".99")
    conn = remote.Remote(ghost, lab_env.ssh.replace(connect_timeout=1.0))
    result = conn.run("true")
    assert result.exit_code is None and not result.ok
    assert result.error is not None and "ghost" not in result.error  # names the address
    assert ghost.ssh_address in result.error


def test_ssh_config_is_honoured(
    lab: Lab, lab_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """User, identity and known_hosts from ~/.ssh/config when the inventory leaves them out."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    ssh_dir = lab.paths.lab_dir() / "ssh"
    (home / ".ssh" / "config").write_text(
        f"Host {lab_env.hosts[1].ssh_address}\n"
        "  User deploy\n"
        f"  IdentityFile {ssh_dir / 'id_ed25519'}\n"
        f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    conn = remote.Remote(
        lab_env.hosts[1],
        lab_env.ssh.replace(user=None, identity_file=None, known_hosts_file=None),
    )
    try:
        assert conn.known_hosts == ssh_dir / "known_hosts"
        result = conn.run("id -un")
        assert result.ok, result.describe()
        assert result.stdout.strip() == "deploy"
    finally:
        conn.close()


def test_connection_acks_promptly(lab_env: Any) -> None:
    """Own TCP socket: Nagle off from the first packet, delayed ACKs off on Linux."""
    import socket

    conn = _remote(lab_env)
    try:
        conn.open()
        transport = conn.conn.client.get_transport()
        assert transport is not None
        sock = transport.sock
        assert isinstance(sock, remote._PromptAckSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert conn.run("true").ok
        assert "sock" not in conn.conn.connect_kwargs  # a reconnect makes a fresh one
    finally:
        conn.close()


def _ssh_home(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(config)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return lab.paths.lab_dir() / "ssh"


def test_ssh_config_host_alias_connects_to_its_hostname(
    lab: Lab, lab_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inventory may name an ~/.ssh/config alias; the socket goes to its HostName."""
    address = lab_env.hosts[2].ssh_address
    _ssh_home(lab, tmp_path, monkeypatch, f"Host app-three\n  HostName {address}\n")
    alias = Host(name="app3", ssh_address="app-three")
    conn = remote.Remote(alias, lab_env.ssh)
    try:
        result = conn.run("hostname")
        assert result.ok, result.describe()
        assert result.stdout.strip() == "app3"
    finally:
        conn.close()


def test_ssh_config_proxy_command_is_honoured(
    lab: Lab, lab_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ProxyCommand (here: through app1 with `ssh -W`) brings its own socket."""
    ssh_dir = lab.paths.lab_dir() / "ssh"
    jump = (
        f"ssh -o BatchMode=yes -o GSSAPIAuthentication=no -i {ssh_dir / 'id_ed25519'}"
        f" -o UserKnownHostsFile={ssh_dir / 'known_hosts'} -o StrictHostKeyChecking=yes"
        f" -l deploy {lab_env.hosts[0].ssh_address} -W %h:%p"
    )
    target = lab_env.hosts[1].ssh_address
    _ssh_home(lab, tmp_path, monkeypatch, f"Host {target}\n  ProxyCommand {jump}\n")
    conn = remote.Remote(lab_env.hosts[1], lab_env.ssh)
    try:
        result = conn.run("hostname")
        assert result.ok, result.describe()
        assert result.stdout.strip() == "app2"
        transport = conn.conn.client.get_transport()
        assert transport is not None
        assert not isinstance(transport.sock, remote._PromptAckSocket)
    finally:
        conn.close()


def _jump_config(lab: Lab, lab_env: Any, known_hosts: Path) -> str:
    """~/.ssh/config reaching app2 through app1 with ProxyJump."""
    ssh_dir = lab.paths.lab_dir() / "ssh"
    jump, target = lab_env.hosts[0].ssh_address, lab_env.hosts[1].ssh_address
    return (
        f"Host {target}\n  ProxyJump deploy@{jump}\n"
        f"Host {jump}\n  User deploy\n  IdentityFile {ssh_dir / 'id_ed25519'}\n"
        f"  UserKnownHostsFile {known_hosts}\n"
    )


def test_ssh_config_proxy_jump_is_honoured_and_closed(
    lab: Lab, lab_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh_dir = lab.paths.lab_dir() / "ssh"
    _ssh_home(lab, tmp_path, monkeypatch, _jump_config(lab, lab_env, ssh_dir / "known_hosts"))
    conn = remote.Remote(lab_env.hosts[1], lab_env.ssh)
    assert len(conn.hops) == 1
    try:
        result = conn.run("hostname")
        assert result.ok, result.describe()
        assert result.stdout.strip() == "app2"
        assert conn.hops[0].is_connected
    finally:
        conn.close()
    assert not conn.hops[0].is_connected


def test_unknown_jump_host_key_is_refused(
    lab: Lab, lab_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fabric would add a jump host's key silently; connfix refuses it and names the hop."""
    ssh_dir = lab.paths.lab_dir() / "ssh"
    jump_known = tmp_path / "jump_known_hosts"
    jump_known.write_text("")  # the jump host's key is not known
    _ssh_home(lab, tmp_path, monkeypatch, _jump_config(lab, lab_env, jump_known))
    conn = remote.Remote(lab_env.hosts[1], lab_env.ssh.replace(known_hosts_file=None))
    conn.known_hosts = ssh_dir / "known_hosts"  # the target's key is known
    jump = lab_env.hosts[0].ssh_address
    with pytest.raises(
        remote.HostKeyRefused,
        match=rf"host key for jump host {jump} \(on the way to {lab_env.hosts[1].ssh_address}\)"
        rf" is unknown \(not in {jump_known}\).*ssh-keyscan -p 22 {jump} >> {jump_known}",
    ):
        conn.open()
    assert jump_known.read_text() == ""  # nothing was added
    assert not conn.hops[0].is_connected


def test_changed_jump_host_key_is_refused(
    lab: Lab, lab_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh_dir = lab.paths.lab_dir() / "ssh"
    jump = lab_env.hosts[0].ssh_address
    other = lab_env.hosts[2].ssh_address
    lines = (ssh_dir / "known_hosts").read_text().splitlines()
    other_key = next(line for line in lines if line.split()[0] == other).split(None, 1)[1]
    jump_known = tmp_path / "jump_known_hosts"
    jump_known.write_text(f"{jump} {other_key}\n")  # app3's key, claimed for app1
    _ssh_home(lab, tmp_path, monkeypatch, _jump_config(lab, lab_env, jump_known))
    conn = remote.Remote(lab_env.hosts[1], lab_env.ssh.replace(known_hosts_file=None))
    conn.known_hosts = ssh_dir / "known_hosts"
    result = conn.run("true")
    assert not result.ok and result.error is not None
    assert f"host key for jump host {jump} (on the way to" in result.error
    assert (
        "has CHANGED" in result.error and f"ssh-keygen -R '{jump}' -f {jump_known}" in result.error
    )


def _gone_stale(conn: remote.Remote, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Open conn, then make its connection refuse new channels, as a stale one does.

    A connection that looks open but no longer carries anything cannot be made on demand:
    the fault is injected by making the channel open fail."""
    import paramiko

    assert conn.run("true").ok
    stale = conn.conn.client.get_transport()
    assert stale is not None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise paramiko.SSHException("Timeout opening channel.")

    monkeypatch.setattr(stale, "open_session", refuse)
    return stale


def test_a_stale_connection_is_reopened_when_the_command_was_not_sent(
    lab_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No session channel on the old connection (a dropped idle flow): reconnect, send once."""
    conn = _remote(lab_env)
    try:
        stale = _gone_stale(conn, monkeypatch)
        marker = f"/tmp/sent-{tmp_path.name}"  # in the host's own /tmp
        result = conn.run(f"echo x >> {marker}; wc -l < {marker}; rm {marker}")
        assert result.ok, result.describe()
        assert result.stdout.strip() == "1"  # sent exactly once
        assert conn.reconnects == ["Timeout opening channel."]
        assert conn.conn.client.get_transport() is not stale
        assert not stale.is_active()
    finally:
        conn.close()


def test_a_command_lost_after_it_was_sent_is_not_sent_again(
    lab_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the command went out, a lost connection is reported, never retried."""
    import paramiko

    conn = _remote(lab_env)
    try:
        assert conn.run("true").ok
        transport = conn.conn.client.get_transport()
        assert transport is not None
        real_open = transport.open_session

        def open_then_lose(*args: Any, **kwargs: Any) -> Any:
            channel = real_open(*args, **kwargs)

            def lost(*a: Any, **k: Any) -> None:
                raise paramiko.SSHException("connection lost")

            channel.exec_command = lost
            return channel

        monkeypatch.setattr(transport, "open_session", open_then_lose)
        result = conn.run("true")
        assert not result.ok and result.error is not None
        assert result.error.startswith("SSH connection lost")
    finally:
        conn.close()


def test_keepalive_is_set_from_the_inventory(lab_env: Any) -> None:
    conn = _remote(lab_env, keepalive=7.0)
    off = _remote(lab_env, keepalive=0.0)
    try:
        conn.open()
        off.open()
        on_transport, off_transport = (
            conn.conn.client.get_transport(),
            off.conn.client.get_transport(),
        )
        assert on_transport is not None and off_transport is not None
        assert on_transport.packetizer._Packetizer__keepalive_interval == 7
        assert off_transport.packetizer._Packetizer__keepalive_interval == 0
    finally:
        conn.close()
        off.close()


def test_a_stale_connection_whose_host_key_changed_is_not_reopened(
    lab_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reconnect checks the host key again: a key no longer known is refused."""
    conn = _remote(lab_env)
    try:
        _gone_stale(conn, monkeypatch)
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        conn.known_hosts = empty
        conn.conn.client.get_host_keys().clear()
        result = conn.run("true")
        assert not result.ok and result.exit_code is None
        assert result.error is not None and "is unknown" in result.error
        assert empty.read_text() == ""
    finally:
        conn.close()


def test_known_hosts_with_marker_lines_as_organisations_write_them(
    lab: Lab, lab_env: Any, tmp_path: Path
) -> None:
    """A @cert-authority line for other hosts does not get in the way (no traceback); a key
    marked @revoked is refused whichever host offers it, with its SHA256 fingerprint; the
    other hosts still work. (Certificates themselves: test_host_certificates.py.)"""
    known = (lab.paths.lab_dir() / "ssh" / "known_hosts").read_text().splitlines()
    app1_key = known[0].split(" ", 1)[1]
    hosts = tmp_path / "known_hosts"
    hosts.write_text(
        f"@cert-authority *.corp.example {app1_key}\n"
        f"# a comment\n@revoked * {app1_key}\n" + "\n".join(known) + "\n"
    )
    revoked = _remote(lab_env, 0, known_hosts_file=str(hosts))
    result = revoked.run("true")
    assert not result.ok and result.error is not None
    assert "is marked @revoked in" in result.error and "SHA256:" in result.error
    fine = _remote(lab_env, 1, known_hosts_file=str(hosts))
    try:
        assert fine.run("hostname").stdout.strip() == "app2"
    finally:
        fine.close()
    broken = tmp_path / "broken"
    broken.write_text("10.231.7.11 ssh-ed25519 not-base64!!\n")
    bad = _remote(lab_env, 0, known_hosts_file=str(broken))
    failed = bad.run("true")
    assert not failed.ok and failed.error is not None
    assert "cannot read known_hosts" in failed.error


def test_a_login_begun_early_is_the_connection_the_command_uses(lab_env: Any) -> None:
    """log_in_early() logs in in the background; the first command waits for it and runs
    on that connection (one login), and the host's session setup is then behind it."""
    conn = _remote(lab_env)
    try:
        remote.log_in_early([conn])
        early = conn._early
        assert early is not None and early.wait(timeout=10)
        transport = conn.conn.client.get_transport()
        assert transport is not None and transport.is_active()
        result = conn.run("hostname")
        assert result.ok and result.stdout.strip() == "app1"
        assert conn.conn.client.get_transport() is transport  # no second login
        assert conn._early is None
    finally:
        conn.close()


def test_an_early_login_that_fails_is_the_first_command_s_answer_then_tried_again(
    lab_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that refused the early login is not tried twice for the same command (its
    error is the command's result, worded as open() words it); the next command tries."""
    ghost = Host(name="ghost", ssh_address=lab_env.hosts[0].ssh_address.rsplit(".", 1)[0] + ".99")
    conn = remote.Remote(ghost, lab_env.ssh.replace(connect_timeout=1.0))
    attempts: list[float] = []
    real_open = remote.Remote._open

    def counted(self: remote.Remote) -> None:
        attempts.append(time.monotonic())
        real_open(self)

    monkeypatch.setattr(remote.Remote, "_open", counted)
    remote.log_in_early([conn])
    assert conn._early is not None
    assert conn._early.wait(timeout=10)  # it failed in the background
    first = conn.run("true")
    assert not first.ok and first.error is not None and ghost.ssh_address in first.error
    assert len(attempts) == 1  # the early attempt's answer, not a second attempt
    second = conn.run("true")
    assert not second.ok and second.error is not None and ghost.ssh_address in second.error
    assert len(attempts) == 2  # the next command tried again
    conn.close()


def test_an_early_login_closed_while_under_way_leaves_nothing_open(lab_env: Any) -> None:
    """The run can end while a login begun early is still under way (the database was
    unreachable): close() then, and the login closes what it opened when it is done."""
    conn = _remote(lab_env)
    remote.log_in_early([conn])
    conn.close()  # at once: the handshake has hardly begun
    early = conn._early
    assert early is not None and early.wait(timeout=10)
    transport = conn.conn.client.get_transport()
    assert transport is None or not transport.is_active()


def test_commands_run_ahead_on_an_early_login_are_taken_once_while_fresh(
    lab_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_in_early(ahead=...) runs a host's read-only commands on its login as soon as
    it is made, in the login's worker; take_ahead() waits for them and gives each result
    once, failures as they are; a command not run ahead, or taken twice, runs when asked."""
    ran: list[tuple[str, str]] = []
    real = remote.Remote._exec

    def counted(self: remote.Remote, command: str, limit: float, sent: Any = None) -> Any:
        ran.append((threading.current_thread().name, command))
        return real(self, command, limit, sent)

    monkeypatch.setattr(remote.Remote, "_exec", counted)
    conn = _remote(lab_env)
    try:
        remote.log_in_early([conn], ahead={"app1": ["hostname", "echo no >&2; exit 3"]}, limit=5)
        first = conn.take_ahead("hostname", fresh=30)
        assert first is not None and first.ok and first.stdout.strip() == "app1"
        assert first.host == "app1" and first.command == "hostname"
        failing = conn.take_ahead("echo no >&2; exit 3", fresh=30)
        assert failing is not None and not failing.ok
        assert failing.exit_code == 3 and failing.stderr.strip() == "no"
        assert [c for _, c in ran] == ["hostname", "echo no >&2; exit 3"]
        assert all(name.startswith("connfix-login-") for name, _ in ran)
        assert conn.take_ahead("hostname", fresh=30) is None  # taken once
        assert conn.take_ahead("uptime", fresh=30) is None  # never run ahead
        transport = conn.conn.client.get_transport()
        assert conn.run("hostname").ok
        assert conn.conn.client.get_transport() is transport  # on the same login
        assert [c for _, c in ran][2:] == ["hostname"]
    finally:
        conn.close()


def test_a_result_run_ahead_longer_ago_than_fresh_is_not_taken(lab_env: Any) -> None:
    """A result run ahead stands for the caller's only when it began at most `fresh`
    seconds before: an older one is dropped, and the caller runs the command itself."""
    conn = _remote(lab_env)
    try:
        remote.log_in_early([conn], ahead={"app1": ["hostname"]})
        assert conn._early is not None and conn._early.wait(timeout=10)
        time.sleep(0.3)
        assert conn.take_ahead("hostname", fresh=0.2) is None
        assert conn.take_ahead("hostname", fresh=30) is None  # dropped, not kept
    finally:
        conn.close()


def test_closing_while_a_command_runs_ahead_leaves_nothing_open(lab_env: Any) -> None:
    """The run can end (the database unreachable) while a command runs ahead on an
    early login: close() cuts it, the worker keeps no result and leaves nothing open."""
    conn = _remote(lab_env)
    remote.log_in_early([conn], ahead={"app1": ["sleep 20"]}, limit=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # logged in: the command is under way
        transport = conn.conn.client.get_transport()
        if transport is not None and transport.is_active():
            break
        time.sleep(0.01)
    time.sleep(0.2)
    closed = time.monotonic()
    conn.close()
    early = conn._early
    assert early is not None and early.wait(timeout=15)
    assert time.monotonic() - closed < 5  # cut, not waited out
    transport = conn.conn.client.get_transport()
    assert transport is None or not transport.is_active()
    assert conn.take_ahead("sleep 20", fresh=60) is None


def test_a_command_whose_connection_is_closed_under_it_ends_at_once(lab_env: Any) -> None:
    """The connection closed while a command runs (the run ending, the transport lost):
    the command ends then, without an exit status, instead of waiting out its timeout."""
    conn = _remote(lab_env)
    try:
        assert conn.run("true").ok
        transport = conn.conn.client.get_transport()
        assert transport is not None
        threading.Timer(0.5, transport.close).start()
        began = time.monotonic()
        result = conn.run("sleep 20", timeout=30)
        assert time.monotonic() - began < 5
        assert not result.ok and result.exit_code is None
        assert result.error == "ended without an exit status (connection closed?)"
    finally:
        conn.close()


def test_early_logins_are_at_most_workers_at_once(
    lab_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_in_early bounds the logins under way as parallel() does (16 by default): 200
    endpoints are not 200 handshakes at once."""
    lock = threading.Lock()
    inside, most = [0], [0]
    real = remote.Remote._connect

    def counted(self: remote.Remote) -> None:
        if not threading.current_thread().name.startswith("connfix-login-"):
            return real(self)
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            real(self)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(remote.Remote, "_connect", counted)
    conns = [_remote(lab_env, i % 3) for i in range(6)]
    try:
        remote.log_in_early(conns, workers=2)
        assert all(c.run("true").ok for c in conns)
    finally:
        for conn in conns:
            conn.close()
    assert most[0] == 2
