"""Host certificates on the lab's real sshd, checked by connfix and by OpenSSH's `ssh`.

app1's sshd is given a host certificate (`HostCertificate`, reloaded through the host's
own systemctl) signed by a test authority; known_hosts holds only `@cert-authority`
lines. Each case asks connfix and `ssh` the same question and expects the same answer
(one documented difference: connfix refuses a certificate without principals)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connfix.cli import cli
from connfix.hosts import remote
from tests.builders import keygen, pub, sign
from tests.helpers import Lab, assert_complete, connfix_run, retry

pytestmark = pytest.mark.lab

CERT = "/etc/ssh/connfix_lab_host_ed25519_key-cert.pub"
CONF = "/etc/ssh/sshd_config.d/zz-host-certificate.conf"


def _offered_certificates(address: str) -> str:
    """The certificates sshd offers now, as `ssh-keyscan -c` prints them."""
    out = subprocess.run(
        ["ssh-keyscan", "-c", "-T", "2", address], capture_output=True, text=True, timeout=10
    )
    return out.stdout


@pytest.fixture
def certify(lab: Lab, lab_env: Any) -> Iterator[Callable[[Path | None], None]]:
    """Install a host certificate on app1's sshd (None: no certificate) and reload it;
    take it away afterwards."""
    address = lab_env.hosts[0].ssh_address

    def install(cert: Path | None) -> None:
        if cert is None:
            lab.remove_file(1, CONF)
            lab.remove_file(1, CERT)
        else:
            lab.write_file(1, CERT, cert.read_text())
            lab.write_file(1, CONF, f"HostCertificate {CERT}\n")
        lab.systemctl(1, "reload", "ssh.service")
        blob = cert.read_text().split()[1] if cert is not None else None
        retry(
            lambda: (
                (blob in _offered_certificates(address))
                if blob
                else "cert" not in _offered_certificates(address)
            ),
            timeout=10,
        )

    yield install
    install(None)


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("authorities")
    return {
        "ca": keygen(tmp / "ca"),
        "other_ca": keygen(tmp / "other_ca"),
        "rsa_ca": keygen(tmp / "rsa_ca", "rsa"),
    }


def _host_pub(lab: Lab) -> Path:
    """app1's host public key, as the lab made it."""
    return lab.paths.host_dir("app1") / "ssh_host_ed25519_key.pub"


def _openssh_accepts(lab: Lab, lab_env: Any, known: Path) -> bool:
    """Does OpenSSH's own client connect with this known_hosts (strict, no prompts)?"""
    proc = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-i", str(lab.paths.lab_dir() / "ssh" / "id_ed25519"),
            "-o", "ConnectTimeout=5", f"{lab_env.ssh.user}@{lab_env.hosts[0].ssh_address}",
            "hostname",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip() == "app1"


def _connfix(lab_env: Any, known: Path) -> tuple[bool, str]:
    conn = remote.Remote(lab_env.hosts[0], lab_env.ssh.replace(known_hosts_file=str(known)))
    try:
        result = conn.run("hostname")
        transport = conn.conn.client.get_transport()
        kind = transport.host_key_type if transport is not None else None
    finally:
        conn.close()
    if result.ok:
        assert result.stdout.strip() == "app1"
        return True, str(kind)
    return False, str(result.error)


def _hashed(name: str) -> str:
    """A hashed known_hosts name for `name`, made by `ssh-keygen -H` itself."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "known_hosts"
        path.write_text(
            f"{name} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNvbm5maXggbGFiIHRlc3Qga2V5IG5v"
            "dCByZWFsISE=\n"
        )
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
        return path.read_text().split()[0]


CASES = [
    # (case, signing, known_hosts lines, both accept, connfix's reason when refused)
    ("valid", {}, ["@cert-authority 10.231.*.1? {ca}"], True, ""),
    ("hashed host name", {}, ["@cert-authority {hashed} {ca}"], True, ""),
    (
        "rsa-sha2-512 authority",
        {"ca": "rsa_ca", "options": ("-t", "rsa-sha2-512")},
        ["@cert-authority * {rsa_ca}"],
        True,
        "",
    ),
    (
        "expired",
        {"validity": "20200101:20200102"},
        ["@cert-authority * {ca}"],
        False,
        "has expired",
    ),
    (
        "not yet valid",
        {"validity": "+1d:+2d"},
        ["@cert-authority * {ca}"],
        False,
        "is not valid yet",
    ),
    (
        "another principal",
        {"principals": "db1.example"},
        ["@cert-authority * {ca}"],
        False,
        "its principals are db1.example",
    ),
    (
        "a user certificate",
        {"host": False},
        ["@cert-authority * {ca}"],
        False,
        "is a user certificate",
    ),
    (
        "another authority",
        {},
        ["@cert-authority * {other_ca}"],
        False,
        "signed by a key that no matching @cert-authority line",
    ),
    (
        "authority revoked",
        {},
        ["@cert-authority * {ca}", "@revoked * {ca}"],
        False,
        "is marked @revoked",
    ),
    (
        "SHA-1 RSA signature",
        {"ca": "rsa_ca", "options": ("-t", "ssh-rsa")},
        ["@cert-authority * {rsa_ca}"],
        False,
        "SHA-1 RSA",
    ),
    (
        "pattern excludes the host",
        {},
        ["@cert-authority 10.231.*,!{address} {ca}"],
        False,
        "is unknown",
    ),
    ("pattern for other hosts", {}, ["@cert-authority *.corp.example {ca}"], False, "is unknown"),
]


@pytest.mark.parametrize(
    ("case", "signing", "lines", "accepted", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_connfix_and_openssh_agree_on_host_certificates(
    lab: Lab,
    lab_env: Any,
    certify: Callable[[Path | None], None],
    authorities: dict[str, Path],
    tmp_path: Path,
    case: str,
    signing: dict[str, Any],
    lines: list[str],
    accepted: bool,
    reason: str,
) -> None:
    address = lab_env.hosts[0].ssh_address
    signing = dict(signing)
    ca = authorities[signing.pop("ca", "ca")]
    options = signing.pop("options", ())
    host_pub = _host_pub(lab)
    signing.setdefault("principals", address)
    certify(sign(tmp_path, ca, host_pub, *options, **signing))
    values = {k: pub(v) for k, v in authorities.items()}
    values |= {"address": address, "hashed": _hashed(address)}
    known = tmp_path / "known_hosts"
    known.write_text("".join(line.format(**values) + "\n" for line in lines))
    ok, detail = _connfix(lab_env, known)
    assert _openssh_accepts(lab, lab_env, known) is accepted, case
    assert ok is accepted, detail
    if accepted:
        assert detail.endswith("-cert-v01@openssh.com")  # it was the certificate's doing
    else:
        assert reason in detail and "refusing to connect" in detail
    assert known.read_text() == "".join(line.format(**values) + "\n" for line in lines)


def test_a_certificate_without_principals_is_refused_where_openssh_accepts_it(
    lab: Lab,
    lab_env: Any,
    certify: Callable[[Path | None], None],
    authorities: dict[str, Path],
    tmp_path: Path,
) -> None:
    """The one documented difference: OpenSSH takes such a certificate for any host."""
    host_pub = _host_pub(lab)
    certify(sign(tmp_path, authorities["ca"], host_pub, principals=None))
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority * {pub(authorities['ca'])}\n")
    assert _openssh_accepts(lab, lab_env, known)
    ok, detail = _connfix(lab_env, known)
    assert not ok and "lists no principals" in detail


def test_a_host_known_only_by_its_authority_that_offers_no_certificate(
    lab: Lab,
    lab_env: Any,
    certify: Callable[[Path | None], None],
    authorities: dict[str, Path],
    tmp_path: Path,
) -> None:
    certify(None)
    known = tmp_path / "known_hosts"
    known.write_text(f"# fleet CA\n@cert-authority * {pub(authorities['ca'])}\n")
    assert not _openssh_accepts(lab, lab_env, known)
    ok, detail = _connfix(lab_env, known)
    assert not ok
    assert "knows 10.231.7.11 only through @cert-authority (line 2)" in detail
    assert "offered a plain key (ssh-ed25519 SHA256:" in detail and "HostCertificate" in detail


def test_a_plain_key_next_to_the_authority_is_used_as_before(
    lab: Lab,
    lab_env: Any,
    certify: Callable[[Path | None], None],
    authorities: dict[str, Path],
    tmp_path: Path,
) -> None:
    """With the host's own key known, connfix asks for the plain key (as OpenSSH does)."""
    host_pub = _host_pub(lab)
    certify(
        sign(tmp_path, authorities["other_ca"], host_pub, principals=lab_env.hosts[0].ssh_address)
    )
    known = tmp_path / "known_hosts"
    known.write_text(
        f"@cert-authority * {pub(authorities['ca'])}\n"
        f"{lab_env.hosts[0].ssh_address} {' '.join(host_pub.read_text().split()[:2])}\n"
    )
    ok, kind = _connfix(lab_env, known)
    assert ok and kind == "ssh-ed25519"
    assert _openssh_accepts(lab, lab_env, known)


def test_commands_refuse_a_host_whose_certificate_is_refused(
    clean_lab: Lab,
    lab_env: Any,
    certify: Callable[[Path | None], None],
    authorities: dict[str, Path],
    tmp_path: Path,
) -> None:
    """`inventory check` passes with a valid certificate and fails with an expired one;
    `restart` then refuses the host and restarts nothing."""
    lab = clean_lab
    known = (lab.paths.lab_dir() / "ssh" / "known_hosts").read_text().splitlines()
    address = lab_env.hosts[0].ssh_address
    fleet = tmp_path / "known_hosts"
    fleet.write_text(
        "\n".join([f"@cert-authority 10.231.* {pub(authorities['ca'])}", *known[1:]]) + "\n"
    )

    def change(env: dict[str, Any]) -> None:
        env["ssh"]["known_hosts_file"] = str(fleet)

    inventory = lab.inventory_with(tmp_path, change)
    host_pub = _host_pub(lab)
    certify(sign(tmp_path, authorities["ca"], host_pub, principals=address))
    check = ["inventory", "check", "lab", "-i", str(inventory)]
    passed = CliRunner().invoke(cli, check)
    assert passed.exit_code == 0, passed.output
    assert "all checks passed (3 hosts)" in passed.output

    certify(
        sign(
            tmp_path, authorities["ca"], host_pub, principals=address, validity="20200101:20200102"
        )
    )
    failed = CliRunner().invoke(cli, check)
    assert failed.exit_code == 3, failed.output
    assert f"host key for {address} is not trusted: its certificate" in failed.output
    assert "has expired" in failed.output and "checks failed: 1 of 3 hosts" in failed.output

    pids = lab.main_pids()
    refused = connfix_run("restart", inventory, tmp_path / "incidents", "--yes")
    assert refused.exit_code == 3, refused.output
    assert f"app1: host key for {address} is not trusted" in refused.output
    assert lab.main_pids() == pids  # nothing restarted anywhere
    assert_complete(tmp_path / "incidents", "halted")
