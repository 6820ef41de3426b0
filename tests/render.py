"""The report's chart in a real renderer: Debian's Chromium, headless, takes a
screenshot of the SVG; the PNG is decoded here (8-bit RGB/RGBA, as Chromium writes it)
so a test can ask which colours were actually drawn."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def screenshot(page: Path, png: Path, width: int = 900, height: int = 420) -> None:
    """Render `page` (an SVG or HTML file) in headless Chromium into `png`."""
    subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={png.parent / 'chromium-profile'}",
            f"--screenshot={png}", f"--window-size={width},{height}", page.as_uri(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
        check=True,
    )  # fmt: skip


def pixels(png: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and every pixel's RGB of a non-interlaced 8-bit RGB(A) PNG."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    out: list[tuple[int, int, int]] = []
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[i] = (line[i] + pred) & 0xFF
        out += [tuple(line[i : i + 3]) for i in range(0, stride, channels)]  # type: ignore[misc]
        previous = line
    return width, height, out


def near(colour: tuple[int, int, int], pixels: list[tuple[int, int, int]], within: int = 40) -> int:
    """How many pixels are within `within` (per channel) of `colour`."""
    r, g, b = colour
    return sum(
        1
        for p in pixels
        if abs(p[0] - r) <= within and abs(p[1] - g) <= within and abs(p[2] - b) <= within
    )
