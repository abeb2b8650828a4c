"""Reading videos back: frames at a given size and count, audio at a given rate. For clips
made elsewhere (an inference service's output) and for clips that continue earlier ones."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image


def read_frames(path: Path, width: int, height: int, count: int) -> Iterator[np.ndarray]:
    """Exactly `count` RGB frames of `width` x `height` (the last one repeated if the file has
    fewer), one at a time."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        last = None
        n = 0
        for frame in container.decode(stream):
            if n == count:
                break
            last = frame.to_ndarray(format="rgb24", width=width, height=height)
            n += 1
            yield last
        if last is None:
            raise ValueError(f"{path.name} has no video frames")
        for _ in range(count - n):
            yield last


@dataclass(frozen=True, slots=True)
class Ending:
    """How a video ends, for continuing it."""

    frame: np.ndarray
    """Its last frame, RGB, at its own size."""
    seconds: int
    """Its length in whole seconds (frames over the stream's rate; at least 1)."""

    def png(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.frame).save(buf, format="PNG")
        return buf.getvalue()


def ending(path: Path) -> Ending:
    """Reads the file once, to its last frame."""
    last = None
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            last = frame
            count += 1
        if last is None:
            raise ValueError(f"{path.name} has no video frames")
        rate = float(stream.average_rate or stream.guessed_rate or 24)
        return Ending(last.to_ndarray(format="rgb24"), max(1, round(count / rate)))


def read_audio(path: Path, samples: int, rate: int) -> np.ndarray:
    """Stereo float32 at `rate`, exactly `samples` long (silence where the file has none)."""
    out = np.zeros((2, samples), dtype=np.float32)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return out
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        at = 0
        for frame in container.decode(container.streams.audio[0]):
            for chunk in resampler.resample(frame):
                data = chunk.to_ndarray()
                take = min(data.shape[1], samples - at)
                out[:, at : at + take] = data[:, :take]
                at += take
                if at >= samples:
                    return out
    return out
