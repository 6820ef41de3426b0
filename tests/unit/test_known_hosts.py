"""known_hosts marker lines and host certificates, checked without the lab.

Keys and certificates are made by OpenSSH's own `ssh-keygen`; the checks run on the
certificate blob exactly as the SSH transport hands it over. The lab tests
(`test_host_certificates.py`) run the same checks against a real sshd next to OpenSSH's
`ssh`."""

from __future__ import annotations

import base64
import contextlib
import re
import subprocess
from pathlib import Path

import paramiko
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connfix.hosts import known_hosts
from connfix.hosts.known_hosts import CertificateRefused, check_certificate, host_matches
from tests.builders import NAME, keygen, pub, sign


def offered(cert: Path) -> paramiko.PKey:
    """The key object the SSH transport builds from a certificate the server sends."""
    kind, blob = cert.read_text().split()[:2]
    raw = base64.b64decode(blob)
    key: paramiko.PKey = paramiko.Transport._key_info[kind](paramiko.Message(raw))
    return key


def known(tmp: Path, *lines: str) -> known_hosts.KnownHosts:
    path = tmp / "known_hosts"
    path.write_text("".join(line + "\n" for line in lines))
    return known_hosts.load(path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("keys")
    return {
        "ca": keygen(tmp / "ca"),
        "other_ca": keygen(tmp / "other_ca"),
        "rsa_ca": keygen(tmp / "rsa_ca", "rsa"),
        "host": keygen(tmp / "host"),
    }


@pytest.fixture(scope="module")
def host_pub(keys: dict[str, Path]) -> Path:
    return Path(f"{keys['host']}.pub")


def test_a_valid_host_certificate_is_accepted(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    cert = sign(tmp_path, keys["ca"], host_pub)
    kh = known(tmp_path, f"@cert-authority 10.231.7.* {pub(keys['ca'])}")
    signer = check_certificate(offered(cert), NAME, NAME, kh)
    assert signer.line == 1 and signer.key.asbytes() == kh.authorities[0].key.asbytes()


def test_an_rsa_authority_signing_with_sha2_is_accepted(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    cert = sign(tmp_path, keys["rsa_ca"], host_pub, "-t", "rsa-sha2-512")
    kh = known(tmp_path, f"@cert-authority * {pub(keys['rsa_ca'])}")
    check_certificate(offered(cert), NAME, NAME, kh)


@pytest.mark.parametrize(
    ("case", "sign_args", "lines", "message"),
    [
        (
            "expired",
            {"validity": "20200101:20200102"},
            ["@cert-authority * {ca}"],
            "has expired (valid 2020-01-01 00:00:00 UTC → 2020-01-02 00:00:00 UTC)",
        ),
        ("not yet valid", {"validity": "+1d:+2d"}, ["@cert-authority * {ca}"], "is not valid yet"),
        (
            "another principal",
            {"principals": "db1.example,10.231.7.12"},
            ["@cert-authority * {ca}"],
            f"is not valid for {NAME}: its principals are db1.example, 10.231.7.12",
        ),
        ("no principal", {"principals": None}, ["@cert-authority * {ca}"], "lists no principals"),
        (
            "a user certificate",
            {"host": False},
            ["@cert-authority * {ca}"],
            "is a user certificate, not a host certificate",
        ),
        (
            "another authority",
            {},
            ["@cert-authority * {other_ca}"],
            "signed by a key that no matching @cert-authority line",
        ),
        (
            "authority revoked",
            {},
            ["@cert-authority * {ca}", "@revoked * {ca}"],
            "is marked @revoked",
        ),
        (
            "host key revoked",
            {},
            ["@cert-authority * {ca}", "@revoked * {host}"],
            "its key (ssh-ed25519 SHA256:",
        ),
        (
            "SHA-1 RSA signature",
            {"ca": "rsa_ca", "options": ("-t", "ssh-rsa")},
            ["@cert-authority * {rsa_ca}"],
            "signed with SHA-1 RSA (ssh-rsa)",
        ),
        (
            "pattern negated",
            {},
            [f"@cert-authority 10.231.7.*,!{NAME} {{ca}}"],
            "signed by a key that no @cert-authority line",
        ),
        (
            "brackets are literal",
            {},
            ["@cert-authority [10.231.7.1]1 {ca}"],
            "signed by a key that no @cert-authority line",
        ),
    ],
)
def test_a_certificate_that_must_not_be_trusted_is_refused_saying_why(
    keys: dict[str, Path],
    host_pub: Path,
    tmp_path: Path,
    case: str,
    sign_args: dict[str, object],
    lines: list[str],
    message: str,
) -> None:
    ca = keys[str(sign_args.pop("ca", "ca"))]
    options = sign_args.pop("options", ())
    cert = sign(tmp_path, ca, host_pub, *options, **sign_args)  # type: ignore[arg-type]
    pubs = {k: pub(v) for k, v in keys.items()}
    kh = known(tmp_path, *(line.format(**pubs) for line in lines))
    with pytest.raises(CertificateRefused) as refused:
        check_certificate(offered(cert), NAME, NAME, kh)
    assert message in str(refused.value), case


def test_a_plain_key_where_only_an_authority_is_known_is_refused(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    plain = paramiko.Ed25519Key(data=base64.b64decode(host_pub.read_text().split()[1]))
    kh = known(tmp_path, "# a comment", f"@cert-authority 10.231.7.* {pub(keys['ca'])}")
    with pytest.raises(CertificateRefused, match=r"only through @cert-authority \(line 2\)"):
        check_certificate(plain, NAME, NAME, kh)


def test_critical_options_are_refused(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    """No critical option is defined for host certificates (ssh-keygen will not add one):
    a crafted certificate that carries one, signed by the real authority, is refused."""
    cert = known_hosts.parse_certificate(
        offered(sign(tmp_path, keys["ca"], host_pub)).public_blob.key_blob
    )  # type: ignore[union-attr]
    head = paramiko.Message(cert.signed)
    fields = [head.get_string() for _ in range(3)]  # type, nonce, key
    serial, kind, key_id = head.get_int64(), head.get_int(), head.get_string()
    principals, after, before = head.get_string(), head.get_int64(), head.get_int64()
    head.get_string()  # critical options: none
    rest = [head.get_string() for _ in range(3)]  # extensions, reserved, signature key
    body = paramiko.Message()
    for f in fields:
        body.add_string(f)
    body.add_int64(serial)
    body.add_int(kind)
    body.add_string(key_id)
    body.add_string(principals)
    body.add_int64(after)
    body.add_int64(before)
    options = paramiko.Message()
    options.add_string("force-command")
    options.add_string(paramiko.Message().add_string("/bin/true").asbytes())
    body.add_string(options.asbytes())
    for r in rest:
        body.add_string(r)
    ca = paramiko.Ed25519Key(filename=str(keys["ca"]))
    body.add_string(ca.sign_ssh_data(body.asbytes()).asbytes())
    crafted = paramiko.Ed25519Key(msg=paramiko.Message(body.asbytes()))
    kh = known(tmp_path, f"@cert-authority * {pub(keys['ca'])}")
    with pytest.raises(
        CertificateRefused, match="critical options connfix does not know: force-command"
    ):
        check_certificate(crafted, NAME, NAME, kh)


def test_a_forged_signature_is_refused(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    """A certificate whose fields were changed after signing (a principal swapped in)."""
    cert = sign(tmp_path, keys["ca"], host_pub, principals="10.231.7.99")
    blob = cert.read_text().split()[1]
    raw = base64.b64decode(blob).replace(b"10.231.7.99", NAME.encode())
    forged = paramiko.Ed25519Key(msg=paramiko.Message(raw))
    kh = known(tmp_path, f"@cert-authority * {pub(keys['ca'])}")
    with pytest.raises(CertificateRefused, match=r"signature .* does not verify"):
        check_certificate(forged, NAME, NAME, kh)


def test_text_from_a_certificate_reaches_the_terminal_defanged(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    cert = sign(
        tmp_path,
        keys["ca"],
        host_pub,
        key_id="\x1b]52;c;cm0gLXJmIH4=\x07app1",
        principals="a\u202eb",
    )
    kh = known(tmp_path, f"@cert-authority * {pub(keys['ca'])}")
    with pytest.raises(CertificateRefused) as refused:
        check_certificate(offered(cert), NAME, NAME, kh)
    text = str(refused.value)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]52" in text and "a<U+202E>b" in text


def test_hashed_names_match_as_openssh_hashes_them(tmp_path: Path, keys: dict[str, Path]) -> None:
    """`ssh-keygen -H` hashes a known_hosts file; the hashed name matches that host only."""
    path = tmp_path / "known_hosts"
    path.write_text(f"{NAME} {pub(keys['host'])}\n[db.example]:2222 {pub(keys['host'])}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    hashed = [line.split()[0] for line in path.read_text().splitlines()]
    assert all(h.startswith("|1|") for h in hashed)
    assert host_matches(NAME, hashed[0]) and not host_matches("10.231.7.1", hashed[0])
    assert host_matches("[db.example]:2222", hashed[1])
    assert not host_matches("db.example", hashed[1])
    assert not host_matches(NAME, "|1|not base64!|x") and not host_matches(NAME, "|2|a|b")


@pytest.mark.parametrize(
    ("name", "patterns", "matches"),
    [
        (NAME, "10.231.7.*", True),
        (NAME, "10.231.7.1?", True),
        (NAME, "10.231.7.1", False),
        (NAME, "10.231.7.?", False),
        ("App1.Corp.Example", "*.corp.example", True),
        ("app1.corp.example", "*.CORP.example", True),
        ("corp.example", "*.corp.example", False),
        (NAME, f"10.231.7.*,!{NAME}", False),
        (NAME, f"!{NAME},10.231.7.*", False),
        (NAME, "!10.231.7.12", False),  # a negation alone matches nothing
        ("[10.231.7.11]:2222", "[10.231.7.*]:2222", True),
        ("[10.231.7.11]:2222", "10.231.7.*", False),
        ("[10.231.7.11]:2222", "[10.231.7.1]1:2222", False),
        ("[10.231.7.11]:2222", "*", True),
        ("a.example\n", "a.example", False),
    ],
)
def test_host_patterns_match_as_openssh_matches_them(
    name: str, patterns: str, matches: bool
) -> None:
    assert host_matches(name, patterns) is matches


def test_marker_lines_that_cannot_be_read_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("# fleet CA\n@cert-authority *.example ssh-ed25519 not-base64!!\n")
    with pytest.raises(ValueError, match="line 2: @cert-authority line has no key"):
        known_hosts.load(path)
    path.write_text("@revoked\n")
    with pytest.raises(ValueError, match="line 1: @revoked line has no key"):
        known_hosts.load(path)
    path.write_text("@some-future-marker * ssh-ed25519 AAAA\nplain line\n")
    assert known_hosts.load(path).plain == ["plain line"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_as_a_certificate_are_refused_not_crashed(blob: bytes) -> None:
    with contextlib.suppress(CertificateRefused):
        known_hosts.parse_certificate(blob)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_truncated_or_garbled_certificate_is_never_trusted(
    keys: dict[str, Path],
    host_pub: Path,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    """Cut anywhere or one byte changed anywhere: refused with a reason, never accepted,
    never another exception (paramiko itself may refuse to build the key first)."""
    cert = _one_cert(keys, host_pub, tmp_path_factory)
    kh = _ca_known(keys, tmp_path_factory)
    cut = data.draw(st.integers(min_value=0, max_value=len(cert) - 1))
    at = data.draw(st.integers(min_value=0, max_value=len(cert) - 1))
    bit = data.draw(st.sampled_from([0x01, 0x80, 0xFF]))
    for blob in (cert[:cut], cert[:at] + bytes([cert[at] ^ bit]) + cert[at + 1 :]):
        try:
            key = paramiko.Ed25519Key(msg=paramiko.Message(blob))
        except Exception:
            continue  # the transport would refuse it before connfix sees it
        with pytest.raises(CertificateRefused):
            check_certificate(key, NAME, NAME, kh)


_MADE: dict[str, object] = {}


def _one_cert(keys: dict[str, Path], host_pub: Path, factory: pytest.TempPathFactory) -> bytes:
    if "blob" not in _MADE:
        cert = sign(factory.mktemp("cert"), keys["ca"], host_pub)
        _MADE["blob"] = base64.b64decode(cert.read_text().split()[1])
    blob = _MADE["blob"]
    assert isinstance(blob, bytes)
    return blob


def _ca_known(keys: dict[str, Path], factory: pytest.TempPathFactory) -> known_hosts.KnownHosts:
    if "known" not in _MADE:
        _MADE["known"] = known(factory.mktemp("known"), f"@cert-authority * {pub(keys['ca'])}")
    kh = _MADE["known"]
    assert isinstance(kh, known_hosts.KnownHosts)
    return kh


def test_known_hosts_are_parsed_once_per_process_and_again_when_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko's loading is quadratic in the file's lines: connfix parses a known_hosts
    file once and gives each connection its own copy of the keys; an edited file is read
    again; a client's copy can be changed without touching another's."""
    from connfix.hosts import remote

    def key(i: int) -> str:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / f"k{i}")],
            check=True,
        )
        return " ".join((tmp_path / f"k{i}.pub").read_text().split()[:2])

    lines = [f"10.0.0.{i} {key(i)}" for i in range(3)]
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    parsed = []
    real_load = known_hosts.load
    monkeypatch.setattr(known_hosts, "load", lambda p: parsed.append(p) or real_load(p))
    first, second = paramiko.SSHClient(), paramiko.SSHClient()
    remote._load_known_hosts(first, path)
    remote._load_known_hosts(second, path)
    assert len(parsed) == 1
    assert first.get_host_keys().lookup("10.0.0.2") is not None
    first.get_host_keys().clear()
    assert second.get_host_keys().lookup("10.0.0.2") is not None
    third = paramiko.SSHClient()
    remote._load_known_hosts(third, path)
    assert third.get_host_keys().lookup("10.0.0.1") is not None and len(parsed) == 1
    path.write_text(lines[0] + "\n")  # edited: another size
    fourth = paramiko.SSHClient()
    remote._load_known_hosts(fourth, path)
    assert len(parsed) == 2
    assert fourth.get_host_keys().lookup("10.0.0.2") is None
    assert fourth.get_host_keys().lookup("10.0.0.0") is not None


def test_principals_are_compared_exactly_as_openssh_does(
    keys: dict[str, Path], host_pub: Path, tmp_path: Path
) -> None:
    """ssh lowercases the host name it was given and compares it with the certificate's
    principals byte for byte: APP1.EXAMPLE is not a listed principal for app1.example."""
    kh = known(tmp_path, f"@cert-authority *.example {pub(keys['ca'])}")
    upper = sign(tmp_path, keys["ca"], host_pub, principals="APP1.EXAMPLE")
    with pytest.raises(CertificateRefused, match=r"its principals are APP1\.EXAMPLE"):
        check_certificate(offered(upper), "app1.example", "app1.example", kh)
    lower = sign(tmp_path, keys["ca"], host_pub, principals="app1.example")
    check_certificate(offered(lower), "app1.example", "APP1.example", kh)  # ssh lowercases


def test_a_pattern_of_many_stars_is_matched_at_once() -> None:
    """A regular expression of many `.*` backtracks exponentially on a name that almost
    matches; the matcher must not."""
    import threading

    answer: list[bool] = []
    worker = threading.Thread(
        target=lambda: answer.append(host_matches("a" * 60 + "b", "*a" * 40 + "*c")), daemon=True
    )
    worker.start()
    worker.join(10)
    assert answer == [False]


@given(
    name=st.text(alphabet="ab.*?[]:", max_size=12),
    pattern=st.text(alphabet="ab.*?[]:", max_size=8),
)
def test_the_matcher_agrees_with_a_plain_glob(name: str, pattern: str) -> None:
    """The reference: fnmatch with brackets escaped (OpenSSH has no character classes)."""
    import fnmatch

    if pattern.startswith("!") or "," in pattern:
        return
    reference = fnmatch.fnmatchcase(name, re.sub(r"([\[\]])", r"[\1]", pattern))
    assert known_hosts._glob(name, pattern) is reference
