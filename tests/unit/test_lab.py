"""The lab's spec, checked without building it: the default max_connections fits the pools."""

from __future__ import annotations

from connfix.lab import lab as core


def test_default_max_connections_fits_the_pools() -> None:
    assert core.default_max_connections(3, 3) == 20
    assert core.default_max_connections(8, 3) == 35
    assert core.default_max_connections(24, 3) == 24 * 3 + core.HEADROOM
