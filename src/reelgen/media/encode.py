"""Turns a model's `Clip` into a web-ready MP4 plus preview images, in one streaming pass.

Frames are pulled from the clip one at a time, watermarked, handed to libx264 and
dropped; only a thumbnail and small spritesheet tiles are kept, so memory stays flat
however long the clip is.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reelgen.models.base import Clip

VIDEO_CODEC = "libx264"
PRESET = "veryfast"
CRF = 23
AUDIO_CODEC = "aac"
AUDIO_BITRATE = 128_000
THUMBNAIL_MAX_WIDTH = 640
SPRITE_COLUMNS = 10
SPRITE_ROWS = 5
SPRITE_TILE_WIDTH = 160


@dataclass(frozen=True, slots=True)
class EncodedMedia:
    """Where the video went and the preview images made on the way."""

    video_path: Path
    thumbnail: bytes
    """WebP of the middle frame, at most THUMBNAIL_MAX_WIDTH wide."""
    spritesheet: bytes
    """JPEG grid, SPRITE_COLUMNS wide, of evenly spaced SPRITE_TILE_WIDTH-wide frames."""
    duration_seconds: float
    num_frames: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a player will see in a file, read back from the file itself."""

    duration_seconds: float
    num_frames: int
    width: int
    height: int
    video_codec: str
    pix_fmt: str
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: int | None


@dataclass(frozen=True, slots=True)
class _Watermark:
    """Rendered once with Pillow and pre-multiplied, so each frame costs a few numpy ops."""

    top: int
    left: int
    premultiplied: np.ndarray
    inverse_alpha: np.ndarray

    @classmethod
    def render(cls, text: str, width: int, height: int) -> _Watermark | None:
        size = max(10, round(min(width, height) * 0.035))
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = font.getbbox(text)
        pad = max(1, size // 6)
        size_px = (int(right - left) + 2 * pad + 1, int(bottom - top) + 2 * pad + 1)
        patch = Image.new("RGBA", size_px)
        draw = ImageDraw.Draw(patch)
        origin = (pad - left, pad - top)
        draw.text((origin[0] + 1, origin[1] + 1), text, font=font, fill=(0, 0, 0, 120))
        draw.text(origin, text, font=font, fill=(255, 255, 255, 170))
        rgba = np.asarray(patch, dtype=np.uint16)
        margin = max(2, round(height * 0.02))
        h = min(rgba.shape[0], height - margin)
        w = min(rgba.shape[1], width - margin)
        if h <= 0 or w <= 0:
            return None
        rgba = rgba[:h, :w]
        alpha = rgba[:, :, 3:4]
        return cls(
            top=height - margin - h,
            left=width - margin - w,
            premultiplied=rgba[:, :, :3] * alpha,
            inverse_alpha=255 - alpha,
        )

    def apply(self, frame: np.ndarray) -> None:
        h, w = self.inverse_alpha.shape[:2]
        region = frame[self.top : self.top + h, self.left : self.left + w]
        blended = region * self.inverse_alpha
        blended += self.premultiplied
        blended += 127
        blended //= 255
        region[...] = blended


class _Previews:
    """Keeps the middle frame and downscaled spritesheet tiles as frames stream past."""

    def __init__(self, width: int, height: int, num_frames: int) -> None:
        self.size = (width, height)
        self.middle = num_frames // 2
        self.thumbnail: Image.Image | None = None
        count = min(num_frames, SPRITE_COLUMNS * SPRITE_ROWS)
        self.tiles = {(k * num_frames + num_frames // 2) // count: k for k in range(count)}
        self.tile_width = min(SPRITE_TILE_WIDTH, width)
        self.tile_height = max(1, round(height * self.tile_width / width))
        columns = min(count, SPRITE_COLUMNS)
        rows = math.ceil(count / SPRITE_COLUMNS)
        self.sheet = Image.new("RGB", (columns * self.tile_width, rows * self.tile_height))

    def offer(self, index: int, frame: np.ndarray) -> None:
        wanted = index == self.middle or index in self.tiles
        if not wanted:
            return
        image = Image.fromarray(frame)
        if index == self.middle:
            width = min(THUMBNAIL_MAX_WIDTH, self.size[0])
            height = max(1, round(self.size[1] * width / self.size[0]))
            self.thumbnail = image.resize(
                (width, height), Image.Resampling.LANCZOS, reducing_gap=2.0
            )
        if index in self.tiles:
            k = self.tiles[index]
            tile = image.resize(
                (self.tile_width, self.tile_height), Image.Resampling.BILINEAR, reducing_gap=2.0
            )
            box = ((k % SPRITE_COLUMNS) * self.tile_width, (k // SPRITE_COLUMNS) * self.tile_height)
            self.sheet.paste(tile, box)

    def thumbnail_webp(self) -> bytes:
        assert self.thumbnail is not None
        buffer = io.BytesIO()
        self.thumbnail.save(buffer, format="WEBP", quality=80, method=4)
        return buffer.getvalue()

    def spritesheet_jpeg(self) -> bytes:
        buffer = io.BytesIO()
        self.sheet.save(buffer, format="JPEG", quality=75, optimize=True)
        return buffer.getvalue()


def _stereo(audio: np.ndarray) -> np.ndarray:
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise ValueError("clip.audio must have shape (channels, samples)")
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return np.ascontiguousarray(np.clip(audio[:2], -1.0, 1.0), dtype=np.float32)


def encode_clip(clip: Clip, video_path: Path, *, watermark: str | None = "reelgen") -> EncodedMedia:
    """Streams `clip.frames` (consumed exactly once) into an H.264/AAC MP4 at `video_path`.

    Writes to a sibling temporary file and renames it into place, so a crash never
    leaves a truncated video at `video_path`.
    """
    width, height, fps, total = clip.width, clip.height, clip.fps, clip.num_frames
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"yuv420p needs positive even dimensions, got {width}x{height}")
    if fps <= 0 or total <= 0:
        raise ValueError("clip needs a positive fps and at least one frame")
    if clip.sample_rate <= 0:
        raise ValueError("clip.sample_rate must be positive")
    audio = _stereo(clip.audio)
    video_path = Path(video_path)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    partial = video_path.with_name(f".{video_path.name}.partial")
    mark = _Watermark.render(watermark, width, height) if watermark else None
    previews = _Previews(width, height, total)
    try:
        count = _mux(clip, partial, audio, mark, previews)
        os.replace(partial, video_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return EncodedMedia(
        video_path=video_path,
        thumbnail=previews.thumbnail_webp(),
        spritesheet=previews.spritesheet_jpeg(),
        duration_seconds=count / fps,
        num_frames=count,
        width=width,
        height=height,
    )


def _mux(
    clip: Clip,
    path: Path,
    audio: np.ndarray,
    mark: _Watermark | None,
    previews: _Previews,
) -> int:
    width, height, fps, total, rate = (
        clip.width,
        clip.height,
        clip.fps,
        clip.num_frames,
        clip.sample_rate,
    )
    samples = audio.shape[1]
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = cast(av.VideoStream, out.add_stream(VIDEO_CODEC, rate=fps))
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.codec_context.gop_size = 2 * fps
        video.codec_context.colorspace = 1
        video.codec_context.color_primaries = 1
        video.codec_context.color_trc = 1
        video.codec_context.color_range = 1
        video.options = {"preset": PRESET, "crf": str(CRF)}
        sound = cast(av.AudioStream, out.add_stream(AUDIO_CODEC, rate=rate, layout="stereo"))
        sound.bit_rate = AUDIO_BITRATE
        sent = 0
        index = 0
        for frame in clip.frames:
            if index >= total:
                raise ValueError(f"clip yielded more than its {total} frames")
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise ValueError(
                    f"frame {index} is {frame.dtype}{frame.shape}, expected uint8 "
                    f"({height}, {width}, 3)"
                )
            if mark is not None:
                if not frame.flags.writeable:
                    frame = frame.copy()
                mark.apply(frame)
            previews.offer(index, frame)
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture = picture.reformat(
                format="yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
                dst_color_trc=1,
                dst_color_primaries=1,
                threads=1,
            )
            picture.pts = index
            picture.time_base = Fraction(1, fps)
            out.mux(video.encode(picture))
            index += 1
            upto = min(samples, (index * rate) // fps)
            sent = _send_audio(out, sound, audio, sent, upto, rate)
        if index != total:
            raise ValueError(f"clip yielded {index} frames, expected {total}")
        _send_audio(out, sound, audio, sent, samples, rate)
        out.mux(video.encode(None))
        out.mux(sound.encode(None))
    return index


def _send_audio(
    out: av.container.OutputContainer,
    sound: av.AudioStream,
    audio: np.ndarray,
    start: int,
    stop: int,
    rate: int,
) -> int:
    if stop <= start:
        return start
    chunk = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(audio[:, start:stop]), format="fltp", layout="stereo"
    )
    chunk.sample_rate = rate
    chunk.pts = start
    chunk.time_base = Fraction(1, rate)
    out.mux(sound.encode(chunk))
    return stop


def probe_video(path: Path) -> VideoInfo:
    """Reads a file back the way a player would, decoding every frame to count them."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        video = container.streams.video[0]
        ctx = video.codec_context
        audio = container.streams.audio[0] if container.streams.audio else None
        if container.duration is not None:
            duration = container.duration / av.time_base
        elif video.duration is not None and video.time_base is not None:
            duration = float(video.duration * video.time_base)
        else:
            duration = 0.0
        width, height = ctx.width, ctx.height
        codec = ctx.name
        pix_fmt = ctx.pix_fmt or ""
        audio_codec = audio.codec_context.name if audio else None
        audio_rate = audio.codec_context.sample_rate if audio else None
        audio_channels = audio.codec_context.layout.nb_channels if audio else None
        frames = sum(1 for _ in container.decode(video=0))
    return VideoInfo(
        duration_seconds=float(duration),
        num_frames=frames,
        width=width,
        height=height,
        video_codec=codec,
        pix_fmt=pix_fmt,
        audio_codec=audio_codec,
        audio_sample_rate=audio_rate,
        audio_channels=audio_channels,
    )
