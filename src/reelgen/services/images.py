"""Checks a reference image before anything is stored: type, byte size, pixel count."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from reelgen.domain.errors import InvalidRequest

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}


def validate_reference_image(data: bytes, *, max_bytes: int, max_pixels: int) -> bytes:
    param = "input_reference"
    if not data:
        raise InvalidRequest("input_reference is empty.", param=param)
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"input_reference is {len(data)} bytes; the limit is {max_bytes} bytes.", param=param
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            width, height = image.size
            if fmt not in ALLOWED_FORMATS:
                raise InvalidRequest(
                    f"input_reference must be a PNG, JPEG or WebP image; got {fmt or 'unknown'}.",
                    param=param,
                )
            if width * height > max_pixels:
                raise InvalidRequest(
                    f"input_reference is {width}x{height} pixels; the limit is "
                    f"{max_pixels} pixels in all (decompression bomb guard).",
                    param=param,
                )
            image.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"input_reference is too large to decode: {exc}", param=param) from exc
    except Exception as exc:
        raise InvalidRequest(
            "input_reference is not a readable image (PNG, JPEG or WebP).", param=param
        ) from exc
    return data
