"""Small builders shared by tests: images, PNG bombs, decoding outputs."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_bytes(
    width: int = 32, height: int = 32, color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge canvas (IHDR patched, CRC fixed)."""
    data = bytearray(png_bytes(8, 8))
    ihdr_start = 8 + 8  # signature, then length+type of the IHDR chunk
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)
