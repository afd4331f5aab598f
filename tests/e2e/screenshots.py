"""Reading the pixels of Chromium's PNG screenshots without an imaging library.

Chromium writes 8-bit RGB or RGBA, non-interlaced PNGs: inflate the IDAT data and undo each
row's filter (PNG spec, section 9), nothing more.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter

_CHANNELS = {2: 3, 6: 4}  # colour type: RGB, RGBA


def png_pixels(png: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """(width, height, pixels row by row as RGB(A) tuples)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    position, idat, header = 8, b"", b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        body = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour_type not in _CHANNELS or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour_type}, interlace {interlace}")
    channels = _CHANNELS[colour_type]
    stride = width * channels
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - up_left
                distances = (abs(estimate - left), abs(estimate - up), abs(estimate - up_left))
                predictor = (left, up, up_left)[distances.index(min(distances))]
                line[i] = (line[i] + predictor) & 0xFF
        pixels.extend(tuple(line[i : i + channels]) for i in range(0, stride, channels))
        previous = line
    return width, height, pixels


def colour_census(png: bytes) -> Counter[tuple[int, int, int]]:
    """How many pixels of each RGB colour the screenshot has."""
    _, _, pixels = png_pixels(png)
    return Counter((pixel[0], pixel[1], pixel[2]) for pixel in pixels)
