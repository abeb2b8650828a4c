"""Encoding streams a clip into a playable MP4 and the previews the site shows."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from reelgen.media.encode import EncodedMedia, encode_clip, probe_video
from reelgen.models.base import Clip, GenerationSpec
from reelgen.models.reference import ReferenceModel

RATE = 48_000


def synthetic_clip(
    width: int = 128,
    height: int = 72,
    frames: int = 24,
    fps: int = 24,
    value: int | None = None,
    channels: int = 2,
    yielded: list[int] | None = None,
) -> Clip:
    """Moving gradient (or a flat grey) plus a tone, cheap enough for any size."""

    def generate() -> Iterator[np.ndarray]:
        x = np.arange(width, dtype=np.int32)[None, :]
        y = np.arange(height, dtype=np.int32)[:, None]
        for i in range(frames):
            if yielded is not None:
                yielded.append(i)
            if value is not None:
                yield np.full((height, width, 3), value, np.uint8)
                continue
            base = (x * 2 + y + i * 5) % 256
            yield np.stack([base, (base + 85) % 256, 255 - base], axis=-1).astype(np.uint8)

    samples = frames * RATE // fps
    tone = 0.3 * np.sin(np.arange(samples) * (2 * np.pi * 440 / RATE))
    audio = np.repeat(tone[None, :], channels, axis=0).astype(np.float32)
    return Clip(width, height, fps, frames, generate(), audio, RATE)


def first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def test_encode_then_probe_round_trips(tmp_path: Path) -> None:
    yielded: list[int] = []
    clip = synthetic_clip(frames=36, yielded=yielded)
    media = encode_clip(clip, tmp_path / "out" / "video.mp4")
    assert isinstance(media, EncodedMedia)
    assert yielded == list(range(36)), "frames are consumed exactly once, in order"
    assert media.video_path == tmp_path / "out" / "video.mp4"
    assert (media.num_frames, media.width, media.height) == (36, 128, 72)
    assert media.duration_seconds == pytest.approx(1.5)
    assert [p.name for p in media.video_path.parent.iterdir()] == ["video.mp4"]

    info = probe_video(media.video_path)
    assert info.video_codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert (info.width, info.height) == (128, 72)
    assert info.num_frames == 36
    assert info.duration_seconds == pytest.approx(1.5, abs=1 / 24)
    assert info.audio_codec == "aac"
    assert info.audio_sample_rate == RATE
    assert info.audio_channels == 2


def test_mp4_is_faststart(tmp_path: Path) -> None:
    media = encode_clip(synthetic_clip(), tmp_path / "v.mp4")
    head = media.video_path.read_bytes()
    assert head.find(b"moov") < head.find(b"mdat")


def test_thumbnail_is_webp_of_the_middle_frame(tmp_path: Path) -> None:
    media = encode_clip(synthetic_clip(width=1280, height=720, frames=6), tmp_path / "v.mp4")
    thumb = Image.open(io.BytesIO(media.thumbnail))
    assert thumb.format == "WEBP"
    assert thumb.size == (640, 360)

    small = encode_clip(synthetic_clip(), tmp_path / "small.mp4")
    assert Image.open(io.BytesIO(small.thumbnail)).size == (128, 72)


def test_spritesheet_is_a_jpeg_grid(tmp_path: Path) -> None:
    media = encode_clip(synthetic_clip(width=320, height=180, frames=24), tmp_path / "v.mp4")
    sheet = Image.open(io.BytesIO(media.spritesheet))
    assert sheet.format == "JPEG"
    assert sheet.size == (10 * 160, 3 * 90)

    long = encode_clip(synthetic_clip(width=320, height=180, frames=120), tmp_path / "l.mp4")
    assert Image.open(io.BytesIO(long.spritesheet)).size == (10 * 160, 5 * 90)


def test_odd_dimensions_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        encode_clip(synthetic_clip(width=65, height=64), tmp_path / "odd.mp4")
    with pytest.raises(ValueError):
        encode_clip(synthetic_clip(width=64, height=63), tmp_path / "odd.mp4")
    assert list(tmp_path.iterdir()) == []


def test_short_clip_fails_without_leaving_a_file(tmp_path: Path) -> None:
    clip = synthetic_clip(frames=10)
    clip.num_frames = 12
    with pytest.raises(ValueError):
        encode_clip(clip, tmp_path / "short.mp4")
    assert list(tmp_path.iterdir()) == []


def test_watermark_marks_the_bottom_right_corner(tmp_path: Path) -> None:
    marked = encode_clip(synthetic_clip(value=60), tmp_path / "marked.mp4")
    clean = encode_clip(synthetic_clip(value=60), tmp_path / "clean.mp4", watermark=None)
    a = first_frame(marked.video_path).astype(np.int16)
    b = first_frame(clean.video_path).astype(np.int16)
    corner = np.abs(a[-20:, -64:] - b[-20:, -64:])
    assert corner.max() > 60
    assert corner.mean() > 5
    assert np.abs(a[:36, :64] - b[:36, :64]).max() <= 2


def test_mono_audio_is_upmixed(tmp_path: Path) -> None:
    media = encode_clip(synthetic_clip(channels=1), tmp_path / "mono.mp4")
    assert probe_video(media.video_path).audio_channels == 2


def test_reference_model_clip_encodes(tmp_path: Path) -> None:
    spec = GenerationSpec(prompt="ocean waves at sunset", seconds=2, width=128, height=72, seed=3)
    clip = ReferenceModel(steps=3).generate(spec, lambda _: None)
    media = encode_clip(clip, tmp_path / "ref.mp4")
    info = probe_video(media.video_path)
    assert info.num_frames == 48
    assert info.duration_seconds == pytest.approx(2.0, abs=1 / 24)
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", RATE, 2)


def test_ending_spreads_its_stills_over_the_whole_clip(tmp_path: Path) -> None:
    """The stills an upload's input check sees cover the clip from start to end, whatever
    frame count it declares (none is trusted)."""
    from reelgen.media.decode import ending

    from .cog_standin import make_mp4

    path = tmp_path / "clip.mp4"
    path.write_bytes(make_mp4(64, 64, 24, 97, audio=False))  # blue rises frame by frame
    end = ending(path, stills=4)
    blues = [float(still[..., 2].mean()) for still in end.stills]
    assert len(blues) == 4 and blues == sorted(blues)
    assert blues[0] < 0.25 * 255 and blues[-1] > 0.75 * 255
    assert end.seconds == 4 and float(end.frame[..., 2].mean()) > 250
