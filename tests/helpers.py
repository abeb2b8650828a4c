"""Small builders shared by tests: images, PNG bombs, decoding outputs, a model run stopped
at a step, an edit through the API."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
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


def picture(seed: int = 0) -> bytes:
    """A 48x40 PNG with structure (ramps and a block) that `seed` shifts."""
    y, x = np.mgrid[0:40, 0:48]
    rgb = np.stack([(x * 5) % 256, (y * 6) % 256, ((x + y) * 3 + seed * 40) % 256], -1)
    rgb[10:25, 12:30] = (250, 240, 20)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class Stopped(Exception):
    """Raised from a step callback, as a preempt would be."""


def stopped_at(model: Any, spec: Any, step: int) -> bytes:
    """Runs `model` on `spec` until `step`, stops it there and returns that step's
    checkpoint."""
    saved: list[bytes] = []

    def stop(info: Any) -> None:
        if info.step == step:
            assert info.snapshot is not None
            saved.append(info.snapshot())
            raise Stopped

    try:
        model.generate(spec, stop)
    except Stopped:
        return saved[0]
    raise AssertionError(f"the run ended before step {step}")


def edited_through_the_api(start_server: Any, model: Any) -> int:
    """Serves `model` as the test server's model, edits an uploaded 1 s clip at its rate
    through `POST /v1/videos/edits`, checks the edit completed at the clip's size and
    length, and returns how many frames its MP4 has."""
    import av

    from .cog_standin import make_mp4

    def prepare(platform: Any) -> None:
        model.name = "reference"
        platform.models["reference"] = model

    live = start_server(prepare=prepare)
    with live.client() as http:
        made = http.post(
            "/v1/videos/edits",
            files={"video": ("clip.mp4", make_mp4(64, 64, model.fps, model.fps), "video/mp4")},
            data={"prompt": "the same boat at night"},
        )
        assert made.status_code == 200, made.text
        video = live.wait_for(made.json()["id"], timeout=120)
        assert video["status"] == "completed", video
        assert (video["size"], video["seconds"]) == ("64x64", "1")
        data = http.get(f"/v1/videos/{video['id']}/content", follow_redirects=True).content
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))
