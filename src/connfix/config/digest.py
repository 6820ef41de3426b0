"""SHA-256 of bytes, as hex, without loading OpenSSL's library at start-up.

`import hashlib` loads OpenSSL's libcrypto: 3.3 ms of every command that names a
cache entry or a runbook by its digest (measured after click and rich, the median of
21 fresh interpreters; docs/benchmarks.md). CPython builds its own SHA-256, the one
hashlib itself falls back to (`_sha256`, named `_sha2` from 3.12), in 0.3 ms. A digest
is the same whichever computes it (FIPS 180-4; tests/unit/test_digest.py checks it
against hashlib); where neither module is built, hashlib's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_sha256: Callable[[bytes], Any]
try:
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment,unused-ignore]


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data`, as 64 hex digits."""
    return str(_sha256(data).hexdigest())
