"""Durations."""

import pytest

from connfix.config.units import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        (" 1.5m ", 90),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10", "ten minutes", "-5s", "5 minutes", "8d", "", True, None, 5])
def test_parse_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format() -> None:
    assert format_duration(0.42) == "420ms"
    assert format_duration(1.25) == "1.2s"
    assert format_duration(42) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(7800) == "2h10m"


def test_format_whole_seconds_without_decimals() -> None:
    assert format_duration(5) == "5s"
    assert format_duration(5.0) == "5s"
