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


def read_frames(
    path: Path, width: int, height: int, count: int, *, fps: float | None = None
) -> Iterator[np.ndarray]:
    """Exactly `count` RGB frames of `width` x `height` (the last one repeated if the file has
    fewer), one at a time. `fps`: the file sampled at that rate by its timestamps (each frame
    the one on screen at that time, so a 30 fps file read at 24 skips some); None: the
    file's frames in order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if fps is None:
            yield from _consecutive(container.decode(stream), width, height, count)
        else:
            yield from _resampled(container.decode(stream), width, height, count, fps)


def _consecutive(
    frames: Iterator[av.VideoFrame], width: int, height: int, count: int
) -> Iterator[np.ndarray]:
    last = None
    n = 0
    for frame in frames:
        if n == count:
            break
        last = frame.to_ndarray(format="rgb24", width=width, height=height)
        n += 1
        yield last
    if last is None:
        raise ValueError("the video has no frames")
    for _ in range(count - n):
        yield last


def _resampled(
    frames: Iterator[av.VideoFrame], width: int, height: int, count: int, fps: float
) -> Iterator[np.ndarray]:
    shown: av.VideoFrame | None = None
    """The frame on screen until the next one's time."""
    image: np.ndarray | None = None
    first: float | None = None
    n = 0
    for frame in frames:
        at = frame.time if frame.time is not None else 0.0
        first = at if first is None else first
        # A microsecond of slack: times from pts are floats, and at equal rates frame k's
        # time must not count as later than output frame k's.
        while shown is not None and n < count and n / fps + 1e-6 < at - first:
            if image is None:
                image = shown.to_ndarray(format="rgb24", width=width, height=height)
            yield image
            n += 1
        if n == count:
            return
        shown, image = frame, None
    if shown is None:
        raise ValueError("the video has no frames")
    if n < count:
        last = (
            image
            if image is not None
            else shown.to_ndarray(format="rgb24", width=width, height=height)
        )
        for _ in range(count - n):
            yield last


@dataclass(frozen=True, slots=True)
class Ending:
    """How a video ends, for continuing it, and what it shows along the way."""

    frame: np.ndarray
    """Its last frame, RGB, at its own size."""
    seconds: int
    """Its length in whole seconds (frames over the stream's rate; at least 1)."""
    stills: tuple[np.ndarray, ...] = ()
    """Frames spread over it, when asked for."""

    def png(self) -> bytes:
        return png(self.frame)


def png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def ending(path: Path, *, stills: int = 0) -> Ending:
    """Reads the file once, to its last frame; `stills`: also keeps that many frames spread
    over it (for checks that look at a whole clip). The spread trusts no frame count the
    file declares: every `stride`-th frame is kept, and when twice `stills` are kept, every
    other one goes and the stride doubles, so at most that many are held at once."""
    last = None
    count = 0
    stride = 1
    kept: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 24)
        for frame in container.decode(stream):
            if stills and count % stride == 0:
                kept.append(frame.to_ndarray(format="rgb24"))
                if len(kept) > 2 * stills:
                    kept, stride = kept[::2], stride * 2
            last = frame
            count += 1
        if last is None:
            raise ValueError(f"{path.name} has no video frames")
        final = last.to_ndarray(format="rgb24")
        picks = min(stills, len(kept))
        chosen = tuple(kept[int((k + 0.5) * len(kept) / picks)] for k in range(picks))
        return Ending(final, max(1, round(count / rate)), chosen)


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
