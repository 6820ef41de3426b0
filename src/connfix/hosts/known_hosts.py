"""known_hosts as OpenSSH reads it: plain keys, `@revoked` keys, `@cert-authority` lines
and the host certificates those authorities sign.

paramiko reads plain lines only and does not check host certificates, so this module
does, following OpenSSH (`PROTOCOL.certkeys`, `sshd(8)` "SSH_KNOWN_HOSTS FILE FORMAT"):
a host certificate is accepted when a `@cert-authority` line whose host patterns match
the host's known_hosts name holds the key that signed it, the signature verifies, it is
a host certificate (not a user one), one of its principals is the host name or address
connfix connects to, the current time is inside its validity interval, it carries no
critical option (none is defined for host certificates), and neither the authority's
key nor the host's own key is marked `@revoked`. Two points are stricter than OpenSSH:
a certificate with no principals is refused (OpenSSH accepts it for any host), and a
signature made with SHA-1 RSA (`ssh-rsa`) is refused as OpenSSH's default
`CASignatureAlgorithms` does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paramiko

from connfix.config.text import defang

CERT_SUFFIX = "-cert-v01@openssh.com"
HOST_CERT = 2  # SSH2_CERT_TYPE_HOST; 1 is a user certificate
FOREVER = 0xFFFF_FFFF_FFFF_FFFF
MAX_BYTES = 50_000_000  # a known_hosts file larger than this is refused, not read

# The public-key fields each certificate type carries between its nonce and its serial.
_KEY_FIELDS = {
    "ssh-ed25519": ("string",),
    "ecdsa-sha2-nistp256": ("string", "string"),
    "ecdsa-sha2-nistp384": ("string", "string"),
    "ecdsa-sha2-nistp521": ("string", "string"),
    "ssh-rsa": ("mpint", "mpint"),
}


class CertificateRefused(Exception):
    """A host certificate that must not be trusted; the message says why."""


def fingerprint(key: paramiko.PKey) -> str:
    """Return a key's OpenSSH SHA256 fingerprint (as `ssh-keygen -lf` shows it)."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


@dataclass(frozen=True)
class Authority:
    """One `@cert-authority` line: the hosts it vouches for and its key."""

    patterns: str
    key: paramiko.PKey
    line: int


@dataclass
class KnownHosts:
    """A known_hosts file, split the way connfix uses it."""

    path: Path
    plain: list[str] = field(default_factory=list)  # the lines paramiko reads itself
    revoked: list[paramiko.PKey] = field(default_factory=list)
    authorities: list[Authority] = field(default_factory=list)

    def authorities_for(self, name: str) -> list[Authority]:
        """Return the authorities whose host patterns match a known_hosts name."""
        return [a for a in self.authorities if host_matches(name, a.patterns)]

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return any(k.asbytes() == key.asbytes() for k in self.revoked)


def load(path: Path) -> KnownHosts:
    """Read a known_hosts file; raise ValueError naming the line of a marker line that
    cannot be read, OSError/FileNotFoundError as reading does."""
    from connfix.config import files

    known = KnownHosts(path)
    text = files.read_text(path, MAX_BYTES)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped.startswith("@"):
            known.plain.append(line)
            continue
        marker, _, rest = stripped.partition(" ")
        if marker not in ("@revoked", "@cert-authority"):
            continue  # a marker OpenSSH may add later: it ignores lines it does not know
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(rest.strip(), number)
        except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError):
            entry = None
        if entry is None or entry.key is None:
            raise ValueError(f"line {number}: {marker} line has no key connfix can read")
        if marker == "@revoked":
            known.revoked.append(entry.key)
        else:
            patterns = rest.strip().split(None, 1)[0]
            known.authorities.append(Authority(patterns, entry.key, number))
    return known


def _glob(name: str, pattern: str) -> bool:
    """OpenSSH's host patterns: `*` any run of characters, `?` one, every other character
    literal (brackets included: `[host]:2222` is a name, not a character class). Matched
    without a regular expression, in O(len(name) × len(pattern)) at worst: a pattern of
    many `*` cannot make it backtrack exponentially."""
    p, n, star, mark = 0, 0, -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, n, p + 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == name[n]):
            p, n = p + 1, n + 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            n = mark
        else:
            return False
    return all(c == "*" for c in pattern[p:])


def _hashed_matches(name: str, hashed: str) -> bool:
    """Match a hashed known_hosts name, `|1|salt|hash` (HMAC-SHA1 of the name)."""
    parts = hashed.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
    except ValueError:
        return False
    got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return hmac.compare_digest(got, want)


def host_matches(name: str, patterns: str) -> bool:
    """Tell whether a known_hosts name matches a host field as OpenSSH matches it: a
    comma-separated list; a `!pattern` that matches excludes the host whatever else
    matches; a hashed field is one exact name."""
    if patterns.startswith("|"):
        return _hashed_matches(name, patterns)
    lowered, positive = name.lower(), False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _glob(lowered, (pattern[1:] if negated else pattern).lower()):
            if negated:
                return False
            positive = True
    return positive


@dataclass(frozen=True)
class Certificate:
    """The fields of an OpenSSH certificate that a host check needs."""

    key_type: str
    serial: int
    cert_type: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: tuple[str, ...]
    signature_key: bytes
    signature: bytes
    signed: bytes  # everything the signature covers

    def validity(self) -> str:
        def when(seconds: int, never: str) -> str:
            if seconds in (0, FOREVER):
                return never
            return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

        return f"{when(self.valid_after, 'always')} → {when(self.valid_before, 'forever')}"


class _Reader:
    """Read SSH wire fields strictly: a length past the end is an error, not padding
    (paramiko's Message pads short reads with zeros or returns fewer bytes)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise CertificateRefused("the certificate is truncated or a length is wrong")
        part = self.data[self.at : self.at + n]
        self.at += n
        return part

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def uint64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise CertificateRefused("the certificate holds text that is not UTF-8") from None

    def done(self) -> bool:
        return self.at == len(self.data)


def _names(blob: bytes) -> tuple[str, ...]:
    """Read a packed list of strings (principals)."""
    reader, names = _Reader(blob), []
    while not reader.done():
        names.append(reader.text())
    return tuple(names)


def _options(blob: bytes) -> tuple[str, ...]:
    """Read the names of packed name/data pairs (critical options)."""
    reader, names = _Reader(blob), []
    while not reader.done():
        names.append(reader.text())
        reader.string()
    return tuple(names)


def parse_certificate(blob: bytes) -> Certificate:
    """Parse an OpenSSH certificate blob; raise CertificateRefused if it is not one."""
    reader = _Reader(blob)
    key_type = reader.text()
    if not key_type.endswith(CERT_SUFFIX):
        raise CertificateRefused(f"{defang(key_type)} is not a certificate type")
    fields = _KEY_FIELDS.get(key_type[: -len(CERT_SUFFIX)])
    if fields is None:
        raise CertificateRefused(f"certificate type {defang(key_type)} is not supported")
    reader.string()  # nonce
    for _ in fields:
        reader.string()  # an mpint is a string on the wire
    serial, cert_type = reader.uint64(), reader.uint32()
    key_id = reader.text()
    principals = _names(reader.string())
    valid_after, valid_before = reader.uint64(), reader.uint64()
    critical = _options(reader.string())
    reader.string()  # extensions: none is defined for host certificates
    reader.string()  # reserved
    signature_key = reader.string()
    signed = blob[: reader.at]
    signature = reader.string()
    if not signature or not reader.done():
        raise CertificateRefused("the certificate has no signature or trailing data")
    return Certificate(
        key_type,
        serial,
        cert_type,
        key_id,
        principals,
        valid_after,
        valid_before,
        critical,
        signature_key,
        signature,
        signed,
    )


# Over 80 lines: OpenSSH's checks of a host certificate, in OpenSSH's order, each
# refusing with its own reason (sshkey_cert_check_authority).
def check_certificate(
    server_key: paramiko.PKey,
    name: str,
    host: str,
    known: KnownHosts,
    now: float | None = None,
) -> Authority:
    """Check the host certificate a server offered, the way OpenSSH does.

    `name` is the host's known_hosts name (`host` or `[host]:port`) the authorities'
    patterns are matched against; `host` is the name or address connfix connects to,
    which must be one of the certificate's principals. Return the authority that signed
    it; raise CertificateRefused saying why it is not trusted."""
    blob = getattr(server_key, "public_blob", None)
    if blob is None or not blob.key_type.endswith(CERT_SUFFIX):
        lines = ", ".join(str(a.line) for a in known.authorities_for(name))
        raise CertificateRefused(
            f"{known.path} knows {name} only through @cert-authority (line {lines}) and"
            f" the host offered a plain key ({fingerprint(server_key)}), no certificate"
            " (is HostCertificate set in its sshd_config?)"
        )
    cert = parse_certificate(blob.key_blob)
    about = f"serial {cert.serial}, id {defang(repr(cert.key_id))}"
    authorities = known.authorities_for(name)
    signer = next((a for a in authorities if a.key.asbytes() == cert.signature_key), None)
    if signer is None:
        where = "no" if not authorities else "no matching"
        raise CertificateRefused(
            f"its certificate ({about}) is signed by a key that {where} @cert-authority"
            f" line for {name} in {known.path} holds"
        )
    if known.is_revoked(signer.key):
        raise CertificateRefused(
            f"the authority that signed its certificate ({fingerprint(signer.key)},"
            f" {known.path} line {signer.line}) is marked @revoked"
        )
    if known.is_revoked(server_key):
        raise CertificateRefused(
            f"its key ({fingerprint(server_key)}) is marked @revoked, certificate or not"
        )
    sig = _Reader(cert.signature)
    algorithm = sig.text()
    if not sig.string() or not sig.done():
        raise CertificateRefused(f"its certificate's signature ({about}) is malformed")
    if algorithm == "ssh-rsa":
        raise CertificateRefused(
            f"its certificate ({about}) is signed with SHA-1 RSA (ssh-rsa), which OpenSSH"
            " refuses by default; sign it again with rsa-sha2-512 or an ed25519 authority"
        )
    try:
        verified = signer.key.verify_ssh_sig(cert.signed, paramiko.Message(cert.signature))
    except Exception:  # a malformed signature: the crypto library refuses it its own way
        verified = False
    if not verified:
        raise CertificateRefused(f"its certificate's signature ({about}) does not verify")
    if cert.cert_type != HOST_CERT:
        raise CertificateRefused(
            f"its certificate ({about}) is a user certificate, not a host certificate"
            " (sign host keys with `ssh-keygen -h`)"
        )
    if not cert.principals:
        raise CertificateRefused(
            f"its certificate ({about}) lists no principals; connfix requires the host's"
            f" name ({host}) among them"
        )
    # as OpenSSH: the host name as ssh uses it (lowercased) must be one of the principals
    # exactly ("not a listed principal" otherwise); principals are not case-folded
    if host.lower() not in cert.principals:
        raise CertificateRefused(
            f"its certificate ({about}) is not valid for {host}: its principals are"
            f" {defang(', '.join(cert.principals))}"
        )
    moment = time.time() if now is None else now
    if moment < cert.valid_after:
        raise CertificateRefused(
            f"its certificate ({about}) is not valid yet (valid {cert.validity()})"
        )
    if moment >= cert.valid_before:
        raise CertificateRefused(f"its certificate ({about}) has expired (valid {cert.validity()})")
    if cert.critical_options:
        raise CertificateRefused(
            f"its certificate ({about}) carries critical options connfix does not know:"
            f" {defang(', '.join(cert.critical_options))}"
        )
    return signer


class CertificateFirstTransport(paramiko.Transport):
    """A transport that asks for a host certificate before a plain key.

    paramiko lists certificate host-key types after the plain ones, so a server that has
    both always sends the plain key. For a host that known_hosts vouches for only through
    a `@cert-authority` line, OpenSSH asks for the certificate first; so does this."""

    @property
    def preferred_keys(self) -> tuple[str, ...]:
        keys = tuple(super().preferred_keys)
        certs = tuple(k for k in keys if k.endswith(CERT_SUFFIX) and k.count(CERT_SUFFIX) == 1)
        return certs + tuple(k for k in keys if not k.endswith(CERT_SUFFIX))
