"""connfix.config.digest: CPython's own SHA-256, the digest hashlib gives."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from connfix.config import digest


@pytest.mark.parametrize(
    "data",
    [b"", b"abc", b"a" * 1_000_003, "runbook: né\n".encode(), bytes(range(256)) * 64],
)
def test_the_digest_is_hashlib_s(data: bytes) -> None:
    assert digest.sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_it_does_not_load_openssl() -> None:
    """The point of the module: naming a cache entry does not import hashlib (and with
    it OpenSSL's library) where CPython has its own SHA-256."""
    code = (
        "import sys; from connfix.config import digest; digest.sha256_hex(b'x');"
        " print('_hashlib' in sys.modules, 'hashlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
