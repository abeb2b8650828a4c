"""The reference renderer: a deterministic CPU stand-in for a video diffusion model.

This is NOT a generative model. It paints a procedural scene whose palette, layout and
motion are read off the prompt's words, seed, style and optional reference image. It
gets there through the same loop a latent video diffusion model runs (seeded latent
noise at 1/8 spatial and ~1/4 temporal resolution, a denoising schedule, a per-step
callback with resumable snapshots, then a lazy "VAE decode" to full-resolution frames)
so the platform around it can be built, tested and load-tested end to end without a GPU,
with compute that scales with frames x pixels x steps the way a real model's does.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageChops, ImageFilter, ImageOps

from reelgen.domain.jobs import MAX_SECONDS, SIZES
from reelgen.media.decode import read_frames
from reelgen.models.base import (
    Clip,
    Conditioning,
    GenerationSpec,
    StepCallback,
    StepInfo,
    made_without_device,
)

STYLES: frozenset[str] = frozenset({"cinematic", "anime", "noir", "watercolor", "pixel"})
SAMPLE_RATE = 48_000
LATENT_CHANNELS = 4
SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4

_SNAPSHOT_FORMAT = "reelgen-reference-snapshot/1"
_SIGMA_MIN = 0.02
_SHIFT = 3.0
_ETA = 0.25
_NOISE_RHO = 0.85
_CHUNK_ELEMS = 1 << 17
_TILE = 128
_MAX_OBJECTS = 12
_EDIT_STRENGTH = 0.7
"""How much of the schedule an edit runs: it starts from the source clip noised to the
level of step `(1 - strength) * steps` (SDEdit), so its layout and motion survive."""
_EDIT_PAINT = 0.3
"""The share of the prompt's own scene painted over the recoloured source."""

# Seconds, fitted on the 2-core dev VM from 360p..1792x1024 runs of generate + encode_clip
# (libx264 veryfast), with other work on the box; used only for ETAs and scheduling.
_COST_PER_LATENT_PIXEL_STEP = 8.0e-8
_COST_PER_LATENT_FRAME_STEP = 2.9e-4
_COST_PER_STEP = 4.6e-3
_COST_PER_OUTPUT_PIXEL = 4.8e-8
_COST_PER_AUDIO_SECOND = 0.02
_COST_FIXED = 0.35

_RGB = tuple[int, int, int]
# sky top, sky bottom, ground, subject, highlight
_PALETTES: dict[str, tuple[_RGB, _RGB, _RGB, _RGB, _RGB]] = {
    "red": ((70, 8, 18), (190, 45, 50), (105, 20, 25), (235, 40, 45), (255, 190, 150)),
    "blue": ((10, 30, 95), (80, 150, 225), (20, 50, 110), (50, 110, 255), (190, 225, 255)),
    "green": ((15, 60, 35), (130, 205, 120), (30, 95, 40), (50, 185, 75), (215, 255, 190)),
    "gold": ((95, 62, 12), (245, 195, 90), (130, 90, 22), (255, 200, 40), (255, 246, 195)),
    "sunset": ((62, 28, 95), (255, 135, 62), (92, 40, 62), (255, 88, 72), (255, 222, 122)),
    "ocean": ((18, 72, 135), (145, 205, 232), (10, 58, 108), (28, 150, 192), (222, 246, 255)),
    "forest": ((42, 82, 62), (155, 195, 135), (22, 62, 32), (95, 145, 52), (232, 240, 182)),
    "neon": ((14, 4, 36), (72, 10, 92), (22, 10, 42), (255, 40, 200), (60, 255, 240)),
    "night": ((3, 5, 22), (28, 38, 86), (8, 10, 26), (198, 208, 255), (255, 250, 222)),
    "snow": ((168, 190, 216), (240, 245, 252), (214, 224, 238), (110, 155, 210), (255, 255, 255)),
    "fire": ((38, 6, 0), (205, 62, 12), (72, 16, 6), (255, 142, 22), (255, 236, 132)),
    "purple": ((35, 10, 60), (150, 90, 210), (60, 25, 90), (185, 70, 255), (240, 205, 255)),
    "pink": ((120, 40, 90), (255, 182, 210), (150, 70, 110), (255, 95, 170), (255, 232, 242)),
    "orange": ((110, 45, 10), (255, 165, 80), (140, 60, 20), (255, 120, 20), (255, 225, 170)),
    "desert": ((120, 150, 200), (245, 215, 165), (200, 150, 90), (190, 95, 45), (255, 240, 205)),
    "space": ((2, 2, 10), (30, 12, 55), (10, 6, 22), (130, 90, 255), (255, 220, 255)),
    "autumn": ((90, 60, 50), (235, 170, 100), (110, 50, 20), (220, 90, 30), (255, 215, 120)),
    "gray": ((60, 62, 66), (175, 178, 182), (90, 92, 95), (220, 222, 226), (250, 250, 250)),
}


def _invert(groups: dict[str, str]) -> dict[str, str]:
    return {word: key for key, words in groups.items() for word in words.split()}


def _vocab(words: str) -> frozenset[str]:
    return frozenset(words.split())


_COLOR_ALIASES = _invert(
    {
        "red": "crimson scarlet ruby cherry blood",
        "blue": "azure navy sapphire cyan teal",
        "green": "emerald jade lime meadow grass",
        "gold": "golden yellow amber sunny honey",
        "sunset": "dusk sunrise dawn twilight",
        "ocean": "sea waves wave beach underwater lake",
        "forest": "jungle woods tree trees pine",
        "neon": "cyberpunk synthwave disco vaporwave",
        "night": "midnight moonlit moon dark",
        "snow": "winter ice frozen snowy arctic white",
        "fire": "flames flame lava burning volcano inferno",
        "purple": "violet lavender",
        "pink": "magenta rose",
        "orange": "tangerine",
        "desert": "sand dunes",
        "space": "galaxy cosmos nebula cosmic",
        "gray": "grey silver black foggy",
    }
)
_SHAPES = _invert(
    {
        "circle": "balloon bubble ball orb planet sphere lantern circle dot egg moon jellyfish",
        "square": "box cube square block crate car house robot",
        "diamond": "diamond crystal kite gem bird fish butterfly leaf boat ship drone",
    }
)
_NUMBERS: dict[str, int] = {
    word: int(value)
    for pair in _vocab(
        "one:1 a:1 an:1 single:1 lone:1 two:2 pair:2 couple:2 three:3 four:4 five:5 six:6 "
        "seven:7 eight:8 nine:9 ten:10 eleven:11 twelve:12 dozen:12 few:3 several:4 many:8 "
        "some:3"
    )
    for word, value in [pair.split(":")]
}
_DARK_WORDS = _vocab(
    "night dark noir storm stormy rain rainy sad gloomy moody space midnight haunted "
    "lonely melancholy fog mist eerie cold winter"
)
_BRIGHT_WORDS = _vocab(
    "sunny happy bright joyful gold golden summer spring cheerful party festival dance "
    "playful balloons celebration sunrise morning"
)


def _has(words: frozenset[str], vocabulary: str) -> bool:
    return not words.isdisjoint(vocabulary.split())


def _latent_dims(spec: GenerationSpec) -> tuple[int, int, int]:
    """(latent frames, width, height) of a generation."""
    return (
        (spec.num_frames - 1) // TEMPORAL_FACTOR + 1,
        max(1, -(-spec.width // SPATIAL_FACTOR)),
        max(1, -(-spec.height // SPATIAL_FACTOR)),
    )


@dataclass(frozen=True, slots=True)
class _Geometry:
    """Sizes of the clip and its latent; shared by the denoiser and the decoder."""

    width: int
    height: int
    fps: int
    num_frames: int
    latent_frames: int
    latent_width: int
    latent_height: int
    taus: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    chunk: int

    @classmethod
    def of(cls, spec: GenerationSpec) -> _Geometry:
        n = spec.num_frames
        lf, lw, lh = _latent_dims(spec)
        span = (n - 1) / spec.fps
        taus = np.linspace(0.0, span, lf, dtype=np.float32) if lf > 1 else np.zeros(1, np.float32)
        aspect = spec.width / spec.height
        xs = (((np.arange(lw, dtype=np.float32) + 0.5) / lw) * 2 - 1) * np.float32(aspect)
        ys = 1 - ((np.arange(lh, dtype=np.float32) + 0.5) / lh) * 2
        return cls(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=n,
            latent_frames=lf,
            latent_width=lw,
            latent_height=lh,
            taus=taus,
            xs=xs.reshape(1, 1, lw),
            ys=ys.reshape(1, lh, 1),
            chunk=max(1, _CHUNK_ELEMS // (lw * lh)),
        )

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (LATENT_CHANNELS, self.latent_frames, self.latent_height, self.latent_width)


@dataclass(frozen=True, slots=True)
class _Scene:
    """What the prompt asked for, resolved into numbers once per generate call."""

    words: tuple[str, ...]
    digest: bytes
    palette: np.ndarray
    style: str | None
    mood: int
    speed: float
    spin: float
    roll: float
    zoom: float
    pan: tuple[float, float]
    rise: float
    drift: float
    wave: float
    pulse: float
    clouds: float
    stars: float
    sun: tuple[float, float, float] | None
    moon: bool
    ocean: bool
    skyline: bool
    mountains: bool
    trees: bool
    snow: bool
    rain: bool
    fire: bool
    shape: str
    objects: np.ndarray
    phases: np.ndarray
    buildings: np.ndarray
    lit: np.ndarray
    tree_heights: np.ndarray
    star_tile: np.ndarray
    flake_tile: np.ndarray
    rain_tile: np.ndarray
    reference: np.ndarray | None
    vignette: np.ndarray


def _words(prompt: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z]+|\d+", prompt.lower()))


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _seed_words(seed: int) -> list[int]:
    value = seed % (1 << 64)
    return [value & 0xFFFFFFFF, value >> 32]


def _rng(seed: int, *salt: int) -> np.random.Generator:
    """A generator per (seed, purpose, step) so any step can be replayed in isolation."""
    return np.random.default_rng(np.random.SeedSequence([*_seed_words(seed), *salt]))


def _colour_key(word: str) -> str | None:
    for candidate in (word, _singular(word)):
        key = candidate if candidate in _PALETTES else _COLOR_ALIASES.get(candidate)
        if key is not None:
            return key
    return None


def _palette(words: tuple[str, ...], digest: bytes) -> np.ndarray:
    """Scene colours from the colour words; a colour right before the subject noun paints it."""
    keyed = [(i, key) for i, word in enumerate(words) if (key := _colour_key(word)) is not None]
    nouns = [i for i, word in enumerate(words) if _singular(word) in _SHAPES]
    subject = None
    if nouns:
        near = [key for i, key in keyed if nouns[0] - 3 <= i < nouns[0]]
        subject = near[-1] if near else None
    keys = list(dict.fromkeys(key for _, key in keyed if key != subject))
    if keys:
        base = np.array(_PALETTES[keys[0]], dtype=np.float32) / 255
        if len(keys) > 1:
            other = np.array(_PALETTES[keys[1]], dtype=np.float32) / 255
            base[3] = other[3]
            base[4] = 0.5 * (base[4] + other[4])
            base[1] = 0.7 * base[1] + 0.3 * other[1]
    elif subject is not None:
        base = np.array(_PALETTES[subject], dtype=np.float32) / 255
    else:
        hue = digest[0] / 255
        hue2 = (hue + 0.35 + digest[1] / 255 * 0.3) % 1.0
        sat = 0.45 + digest[2] / 255 * 0.4
        colours = [
            colorsys.hsv_to_rgb(hue, sat, 0.25),
            colorsys.hsv_to_rgb((hue + 0.06) % 1.0, sat * 0.7, 0.85),
            colorsys.hsv_to_rgb(hue, sat, 0.4),
            colorsys.hsv_to_rgb(hue2, 0.85, 0.95),
            colorsys.hsv_to_rgb(hue2, 0.25, 1.0),
        ]
        base = np.array(colours, dtype=np.float32)
    if subject is not None:
        base[3] = np.array(_PALETTES[subject][3], dtype=np.float32) / 255
    return base


def _count_and_shape(words: tuple[str, ...]) -> tuple[int, str | None]:
    for i, word in enumerate(words):
        noun = _singular(word)
        if noun not in _SHAPES:
            continue
        count = 3 if noun != word else 1
        if i > 0:
            prev = words[i - 1]
            if prev.isdigit():
                count = int(prev)
            elif prev in _NUMBERS:
                count = _NUMBERS[prev]
            elif i > 1 and words[i - 2] in _NUMBERS and words[i - 2] not in ("a", "an"):
                count = _NUMBERS[words[i - 2]]
            elif i > 1 and words[i - 2].isdigit():
                count = int(words[i - 2])
        return max(1, min(_MAX_OBJECTS, count)), _SHAPES[noun]
    for word in words[:-1]:
        if word.isdigit() or (word in _NUMBERS and word not in ("a", "an", "one", "some")):
            count = int(word) if word.isdigit() else _NUMBERS[word]
            return max(1, min(_MAX_OBJECTS, count)), None
    return 0, None


def _load_reference(data: bytes, lw: int, lh: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns the image fitted to the latent grid (3, lh, lw) and its 5 dominant colours."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (lw * 4, lh * 4))
        rgb = img.convert("RGB")
    fitted = ImageOps.fit(rgb, (lw, lh), Image.Resampling.BILINEAR)
    ref = np.asarray(fitted, dtype=np.float32).transpose(2, 0, 1) / 255
    small = ImageOps.fit(rgb, (48, 48), Image.Resampling.BILINEAR)
    quant = small.quantize(colors=5, method=Image.Quantize.MEDIANCUT)
    pal = np.array(quant.getpalette() or [], dtype=np.float32).reshape(-1, 3)[:5] / 255
    counts = sorted(quant.getcolors() or [], reverse=True)
    order = [i for _, index in counts if (i := cast(int, index)) < len(pal)]
    dominant = pal[order] if order else np.full((1, 3), 0.5, np.float32)
    while len(dominant) < 5:
        dominant = np.concatenate([dominant, dominant[:1]])
    return np.ascontiguousarray(ref), dominant[:5]


def _tile(rng: np.random.Generator, density: float, streak: int = 1) -> np.ndarray:
    base = (rng.random((_TILE, _TILE)) < density) * rng.uniform(0.35, 1.0, (_TILE, _TILE))
    tile = np.zeros((_TILE, _TILE), np.float32)
    for k in range(streak):
        tile += np.roll(base, k, axis=0) * (1 - k / (streak + 1))
    return np.minimum(tile, 1.0).astype(np.float32).ravel()


def _build_scene(spec: GenerationSpec, geo: _Geometry) -> _Scene:
    words = _words(spec.prompt)
    wordset = frozenset(words) | frozenset(_singular(w) for w in words)
    digest = hashlib.sha256(" ".join(words).encode()).digest()
    palette = _palette(words, digest)
    rng = _rng(spec.seed, 0x5CE4E, int.from_bytes(digest[:4], "little"))

    reference = None
    if spec.reference_image is not None:
        reference, dominant = _load_reference(
            spec.reference_image, geo.latent_width, geo.latent_height
        )
        top = reference[:, : max(1, geo.latent_height // 3)].mean(axis=(1, 2))
        bottom = reference[:, -max(1, geo.latent_height // 3) :].mean(axis=(1, 2))
        palette = palette.copy()
        palette[0] = 0.35 * palette[0] + 0.65 * top
        palette[1] = 0.35 * palette[1] + 0.65 * bottom
        palette[2] = 0.5 * palette[2] + 0.5 * dominant[1]
        palette[3] = 0.4 * palette[3] + 0.6 * dominant[0]
        palette[4] = 0.5 * palette[4] + 0.5 * dominant[2]

    mood = int(not wordset.isdisjoint(_BRIGHT_WORDS)) - int(not wordset.isdisjoint(_DARK_WORDS))
    speed = 1.0
    if _has(wordset, "fast quick rapid racing rushing speeding frantic energetic hyperlapse"):
        speed = 2.2
    elif _has(wordset, "slow slowly gentle calm lazy peaceful serene tranquil quiet"):
        speed = 0.4
    spin = 0.5 if _has(wordset, "spinning spin spins rotating swirling twirling orbiting") else 0.0
    rise = 0.0
    if _has(wordset, "rising rise rises ascending floating float soaring up lifting"):
        rise = 0.22
    elif _has(wordset, "falling fall falls descending dropping sinking down raining"):
        rise = -0.22
    drifting = _has(wordset, "drifting drift flowing gliding sailing flying wandering panning")
    wave = 1.0 if _has(wordset, "waves wave waving rippling undulating swaying") else 0.35
    pulse = 0.12 if _has(wordset, "pulsing pulse beating glowing flickering breathing") else 0.0
    zoom = 0.0
    if _has(wordset, "zoom zooming approaching closer dolly push diving"):
        zoom = -0.09 if _has(wordset, "out receding away") else 0.09
    pan = (0.09 if drifting else 0.025, 0.0)

    ocean = _has(wordset, "ocean sea waves wave beach lake water river surf coast harbor")
    skyline = _has(wordset, "city skyline building skyscraper street town downtown cyberpunk")
    mountains = _has(wordset, "mountain hill valley peak alps canyon cliff volcano")
    trees = _has(wordset, "forest tree wood jungle pine grove")
    snow = _has(wordset, "snow snowy snowfall snowflake blizzard snowing winter")
    rain = _has(wordset, "rain rainy storm drizzle raining downpour")
    fire = _has(wordset, "fire flame burning lava campfire inferno blaze")
    night = _has(wordset, "night midnight space galaxy starry cosmos nebula moonlit")
    stars = 1.0 if (night or _has(wordset, "star stars constellation")) else 0.0
    moon = _has(wordset, "moon moonlit") and stars > 0
    sun = None
    if moon or _has(wordset, "sun sunset sunrise dawn dusk sunny"):
        sx = float(rng.uniform(-0.5, 0.5) * geo.aspect)
        setting = _has(wordset, "sunset dusk")
        sy = 0.05 if setting else float(rng.uniform(0.25, 0.55))
        vy = -0.03 if setting else (0.03 if _has(wordset, "sunrise dawn") else 0.0)
        sun = (sx, sy, vy)
    clouds = 0.16 if _has(wordset, "cloud clouds cloudy fog mist sky storm") else 0.06

    sky = 0.5 * (palette[0] + palette[1])
    if float(np.abs(palette[3] - sky).sum()) < 0.45:
        lum = float(sky @ np.array((0.3, 0.59, 0.11), np.float32))
        palette[3] = palette[3] * 0.45 if lum > 0.45 else 0.6 * palette[3] + 0.4
    count, shape = _count_and_shape(words)
    layers = ocean or skyline or mountains or trees or fire
    if count == 0 and not layers and stars == 0 and sun is None:
        count = 2 + digest[3] % 3
    if shape is None:
        shape = ("circle", "square", "diamond")[digest[4] % 3] if count else "circle"
    roll = spin * 0.35 if count == 0 else 0.0

    aspect = geo.aspect
    radius = float(np.clip(0.34 / math.sqrt(max(count, 1)), 0.07, 0.26))
    slots = (np.arange(count) + 0.5) / max(count, 1)
    objects = np.zeros((count, 4), np.float32)
    if count:
        objects[:, 0] = (slots * 2 - 1) * 0.78 * aspect + rng.uniform(-0.08, 0.08, count)
        objects[:, 1] = rng.uniform(-0.45, 0.45, count)
        if count == 1:
            objects[0, :2] = (rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.15))
        objects[:, 2] = radius * rng.uniform(0.8, 1.15, count)
        objects[:, 3] = (np.arange(count) * 0.618) % 1.0
    phases = rng.uniform(0, 2 * math.pi, 16).astype(np.float32)

    across = np.linspace(-1, 1, geo.latent_width, dtype=np.float32) ** 2
    down = np.linspace(-1, 1, geo.latent_height, dtype=np.float32) ** 2
    vignette = 1 - 0.16 * (down[:, None] + across[None, :])

    return _Scene(
        words=words,
        digest=digest,
        palette=palette.astype(np.float32),
        style=spec.style,
        mood=mood,
        speed=speed,
        spin=spin,
        roll=roll,
        zoom=zoom,
        pan=pan,
        rise=rise,
        drift=0.12 if drifting else 0.03,
        wave=wave,
        pulse=pulse,
        clouds=clouds,
        stars=stars,
        sun=sun,
        moon=moon,
        ocean=ocean,
        skyline=skyline,
        mountains=mountains,
        trees=trees,
        snow=snow,
        rain=rain,
        fire=fire,
        shape=shape,
        objects=objects,
        phases=phases,
        buildings=rng.uniform(0.3, 0.95, 64).astype(np.float32),
        lit=(rng.random(256) < 0.55).astype(np.float32),
        tree_heights=rng.uniform(0.25, 0.6, 64).astype(np.float32),
        star_tile=_tile(rng, 0.012),
        flake_tile=_tile(rng, 0.02),
        rain_tile=_tile(rng, 0.012, streak=4),
        reference=reference,
        vignette=vignette.astype(np.float32)[None],
    )


def _ramp(d: np.ndarray, edge: float) -> np.ndarray:
    """Coverage of a signed distance (negative inside) with an edge `edge` wide."""
    out = d * np.float32(-1.0 / edge)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _over(
    rgb: np.ndarray,
    det: np.ndarray,
    alpha: np.ndarray,
    colour: Sequence[np.ndarray | float] | np.ndarray,
    detail: float,
) -> None:
    for c in range(3):
        rgb[c] += alpha * (colour[c] - rgb[c])
    det += alpha * (np.float32(detail) - det)


def _sample(tile: np.ndarray, u: np.ndarray, v: np.ndarray, cells: float) -> np.ndarray:
    iu = (u * np.float32(cells)).astype(np.int32)
    iv = (v * np.float32(cells)).astype(np.int32)
    iu &= _TILE - 1
    iv &= _TILE - 1
    iv *= _TILE
    return np.take(tile, iv + iu)


class _Painter:
    """Renders the target scene for a run of latent frames; the model's 'prediction'."""

    def __init__(self, scene: _Scene, geo: _Geometry) -> None:
        self.scene = scene
        self.geo = geo
        self.px = 2.0 / geo.latent_height

    def camera(self, taus: np.ndarray) -> tuple[np.ndarray, ...]:
        s = self.scene
        t = taus * np.float32(s.speed)
        zoom = np.exp(np.float32(s.zoom) * t)
        theta = np.float32(s.roll) * t
        px = np.float32(s.pan[0]) * t + np.float32(0.02) * np.sin(0.4 * t + s.phases[0])
        py = np.float32(s.pan[1]) * t + np.float32(0.015) * np.sin(0.3 * t + s.phases[1])
        return zoom, theta, px.astype(np.float32), py.astype(np.float32)

    def coords(self, taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        zoom, theta, px, py = self.camera(taus)
        shape = (-1, 1, 1)
        inv = (1 / zoom).reshape(shape)
        xs, ys = self.geo.xs, self.geo.ys
        if self.scene.roll == 0.0:
            return xs * inv + px.reshape(shape), ys * inv + py.reshape(shape)
        c = np.cos(theta).reshape(shape) * inv
        sn = np.sin(theta).reshape(shape) * inv
        u = c * xs - sn * ys + px.reshape(shape)
        v = sn * xs + c * ys + py.reshape(shape)
        return u, v

    def _below(self, v: np.ndarray, limit: float) -> slice:
        """Rows that can be below `limit`; layers hugging the ground skip the sky above."""
        if self.scene.roll:
            return slice(None)
        below = np.flatnonzero((v[:, :, 0] < limit).any(axis=0))
        return slice(int(below[0]) if len(below) else v.shape[1], None)

    def _horizon(self) -> float:
        return -0.5 if self.scene.mountains else -0.15

    def render(self, frames: slice, sigma: float) -> np.ndarray:
        """RGB + detail channels in [0, 1] for latent frames `frames`, shape (4, T, h, w)."""
        geo, s = self.geo, self.scene
        taus = geo.taus[frames]
        n = len(taus)
        t = (taus * np.float32(s.speed)).reshape(-1, 1, 1)
        u, v = self.coords(taus)
        fine = np.float32(1.0 - sigma)
        edge = self.px * (0.9 + 5.0 * sigma)
        shape = (n, geo.latent_height, geo.latent_width)
        out = np.empty((4, *shape), np.float32)
        rgb, det = out[:3], out[3]
        pal = s.palette

        g = np.clip(0.5 - 0.5 * v, 0.0, 1.0)
        for c in range(3):
            rgb[c] = pal[0, c] + (pal[1, c] - pal[0, c]) * g
        det[...] = 0.12
        ph = s.phases
        cloud = np.sin(1.7 * u + 0.12 * t + ph[2]) * np.sin(2.3 * v + ph[3])
        cloud += (0.5 * fine) * np.sin(4.1 * u - 2.7 * v + 0.3 * t + ph[4])
        cloud *= np.float32(s.clouds)
        rgb += cloud
        det += cloud

        if s.stars:
            star = _sample(s.star_tile, u, v, geo.latent_height / 2)
            twinkle = np.sin(3.0 * t + u * 9.0) * np.float32(0.25) + np.float32(0.75)
            star *= twinkle
            star *= fine * np.float32(s.stars)
            _over(rgb, det, star, pal[4], 0.8)

        if s.sun is not None:
            self._sun(rgb, det, u, v, t, edge)
        margin = 3 * edge
        if s.fire:
            rows = self._below(v, 0.3)
            self._fire(rgb[:, :, rows], det[:, rows], u, v[:, rows], t, fine, edge)
        if s.mountains:
            rows = self._below(v, 0.3 + margin)
            self._mountains(rgb[:, :, rows], det[:, rows], u, v[:, rows], fine, edge)
        if s.ocean:
            rows = self._below(v, self._horizon() + 0.05 + margin)
            self._ocean(rgb[:, :, rows], det[:, rows], u, v[:, rows], t, fine, edge)
        if s.skyline:
            rows = self._below(v, 0.15 + margin)
            self._skyline(rgb[:, :, rows], det[:, rows], u, v[:, rows], fine, edge)
        if s.trees:
            rows = self._below(v, -0.15 + margin)
            self._trees(rgb[:, :, rows], det[:, rows], u, v[:, rows], edge)

        if len(s.objects):
            self._objects(rgb, det, u, v, taus, edge)
        if s.snow:
            drift = np.float32(0.06) * np.sin(0.7 * t + ph[5])
            flakes = _sample(s.flake_tile, u + drift, v + 0.35 * t, geo.latent_height / 2)
            _over(rgb, det, flakes * np.float32(0.9), (0.97, 0.98, 1.0), 0.3)
        if s.rain:
            drops = _sample(s.rain_tile, u + 0.25 * v, v + 2.2 * t, geo.latent_height / 2)
            _over(rgb, det, drops * np.float32(0.45), (0.75, 0.8, 0.9), 0.5)
        if s.reference is not None:
            weight = 0.85 * np.exp(-taus / np.float32(0.8))
            for i in np.flatnonzero(weight > 0.01):
                for c in range(3):
                    rgb[c, i] += weight[i] * (s.reference[c] - rgb[c, i])
        self._grade(rgb, det)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def _sun(
        self,
        rgb: np.ndarray,
        det: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        t: np.ndarray,
        edge: float,
    ) -> None:
        s = self.scene
        assert s.sun is not None
        sx, sy, vy = s.sun
        dx = u - np.float32(sx)
        dy = v - (np.float32(sy) + np.float32(vy) * t)
        d = np.sqrt(dx * dx + dy * dy)
        r = np.float32(0.11 if s.moon else 0.16)
        colour = (0.92, 0.93, 0.88) if s.moon else 0.5 * (s.palette[4] + (1.0, 0.85, 0.4))
        glow = np.float32(0.18) / (1 + (d * 6.0) ** 2)
        for c in range(3):
            rgb[c] += glow * colour[c]
        d -= r
        _over(rgb, det, _ramp(d, edge), colour, 0.05)

    def _mountains(
        self,
        rgb: np.ndarray,
        det: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        fine: np.float32,
        edge: float,
    ) -> None:
        s, ph, pal = self.scene, self.scene.phases, self.scene.palette
        uf = u * np.float32(0.6)
        ridge = (
            np.float32(-0.05) + 0.18 * np.sin(1.1 * uf + ph[6]) + 0.08 * np.sin(2.9 * uf + ph[7])
        )
        ridge += (0.035 * fine) * np.sin(7.3 * uf + ph[8])
        far = 0.55 * pal[2] + 0.45 * pal[1]
        if s.snow:
            cap = np.clip((v - 0.08) * 8.0, 0.0, 0.9)
            far = tuple(far[c] + cap * (0.95 - far[c]) for c in range(3))
        _over(rgb, det, _ramp(v - ridge, edge), far, 0.45)
        ridge = np.float32(-0.4) + 0.15 * np.sin(1.7 * u + ph[9]) + 0.06 * np.sin(4.3 * u + ph[10])
        ridge += (0.03 * fine) * np.sin(11.0 * u + ph[11])
        near = pal[2] * 0.6 + pal[1] * 0.2
        if s.snow:
            cap = np.clip((v + 0.3) * 8.0, 0.0, 0.9)
            near = tuple(near[c] + cap * (0.95 - near[c]) for c in range(3))
        _over(rgb, det, _ramp(v - ridge, edge), near, 0.7)

    def _ocean(
        self,
        rgb: np.ndarray,
        det: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        t: np.ndarray,
        fine: np.float32,
        edge: float,
    ) -> None:
        s, ph, pal = self.scene, self.scene.phases, self.scene.palette
        horizon = np.float32(self._horizon())
        w = np.float32(s.wave)
        swell = np.sin(3.0 * u + 1.3 * t + ph[12]) * (0.025 * w)
        depth = np.maximum(horizon + swell - v, 0.0)
        bands = np.sin(6.0 / (depth + 0.08) + 0.8 * np.sin(2.5 * u + t) * w + 1.6 * t * w)
        bands *= np.float32(0.35) * fine
        bands += np.float32(0.5)
        shade = np.clip(depth * 1.3, 0.0, 1.0)
        light = 0.6 * pal[1] + 0.4 * pal[4]
        deep = 0.5 * pal[2] + 0.3 * pal[3] * np.array((0.2, 0.6, 1.0), np.float32)
        colour = [light[c] + (deep[c] - light[c]) * shade + (bands - 0.5) * 0.25 for c in range(3)]
        if s.sun is not None:
            glint = np.clip(1 - np.abs(u - np.float32(s.sun[0])) * (4.0 / (1 + depth * 3)), 0, 1)
            glint *= bands * bands
            colour = [colour[c] + glint * (0.6 * pal[4][c]) for c in range(3)]
        _over(rgb, det, _ramp(v - (horizon + swell), edge), colour, 0.85)

    def _skyline(
        self,
        rgb: np.ndarray,
        det: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        fine: np.float32,
        edge: float,
    ) -> None:
        s, pal = self.scene, self.scene.palette
        neon = "neon" in s.words or "cyberpunk" in s.words
        window = pal[3] if neon else 0.4 * pal[4] + 0.6 * np.array((1.0, 0.85, 0.5), np.float32)
        cell = np.float32(1 / max(self.px, 0.03))
        for depth, scale, lift in ((0, 0.6, 0.25), (1, 1.0, 0.0)):
            uu = u * np.float32(scale) + np.float32(depth * 3.7)
            b = np.floor(uu * np.float32(1 / 0.23)).astype(np.int32)
            top = np.take(s.buildings, (b + depth * 17) & 63) * np.float32(0.9 - 0.25 * depth)
            top += np.float32(-1.0 + lift)
            alpha = _ramp(v - top, edge)
            body = pal[2] * (0.35 + 0.25 * (1 - depth)) + 0.1 * pal[0]
            wx = np.floor(uu * cell).astype(np.int32)
            wy = np.floor(v * cell).astype(np.int32)
            lit = np.take(s.lit, (wx * 7 + wy * 13) & 255) * (wx & wy & 1)
            lit *= (v < top - 0.05) * (fine * (0.9 - 0.35 * (1 - depth)))
            colour = [body[c] + lit * (window[c] - body[c]) for c in range(3)]
            _over(rgb, det, alpha, colour, 0.75)

    def _trees(
        self, rgb: np.ndarray, det: np.ndarray, u: np.ndarray, v: np.ndarray, edge: float
    ) -> None:
        pal = self.scene.palette
        for row, (offset, base, shade) in enumerate(((0.08, -0.78, 0.75), (0.0, -0.95, 0.5))):
            q = (u + np.float32(offset)) * np.float32(1 / 0.15)
            j = np.floor(q)
            lx = np.abs(q - j - 0.5)
            height = np.take(self.scene.tree_heights, (j.astype(np.int32) + row * 31) & 63)
            top = np.float32(base) + height * (1 - 2 * lx)
            colour = pal[2] * shade + np.array((0.0, 0.05, 0.0), np.float32)
            _over(rgb, det, _ramp(v - top, edge), colour, 0.8)

    def _fire(
        self,
        rgb: np.ndarray,
        det: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        t: np.ndarray,
        fine: np.float32,
        edge: float,
    ) -> None:
        ph, pal = self.scene.phases, self.scene.palette
        flame = np.float32(-0.5) + 0.14 * np.sin(7.0 * u + 5.0 * t + ph[13])
        flame += 0.09 * np.sin(13.0 * u - 8.0 * t + ph[14])
        flame += (0.05 * fine) * np.sin(23.0 * u + 11.0 * t + ph[15])
        heat = np.clip((v + 1.0) * 1.4, 0.0, 1.0)
        hot = np.array((1.0, 0.88, 0.4), np.float32)
        top = 0.5 * pal[3] + np.array((0.47, 0.12, 0.0), np.float32)
        colour = [hot[c] + (top[c] - hot[c]) * heat for c in range(3)]
        glow = np.clip(0.6 - (v + 1.0) * 0.5, 0.0, 1.0) * np.float32(0.25)
        rgb[0] += glow
        rgb[1] += glow * np.float32(0.35)
        _over(rgb, det, _ramp(v - flame, edge * 3), colour, 0.4)

    def object_tracks(self, taus: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-frame centre, radius and spin angle of every object, shapes (T, N)."""
        s = self.scene
        t = (taus * np.float32(s.speed))[:, None]
        obj = s.objects
        x0, y0, r0, k = obj[:, 0], obj[:, 1], obj[:, 2], obj[:, 3]
        phase = k * np.float32(2 * math.pi) + s.phases[5]
        x = x0 + s.drift * np.sin(0.6 * t + phase)
        y = y0 + 0.04 * np.sin(1.2 * t + 2 * phase)
        if s.rise:
            y = (y + s.rise * t * (0.8 + 0.4 * k) + 1.35) % np.float32(2.7) - np.float32(1.35)
        if s.wave > 0.5:
            y = y + 0.08 * np.sin(2.2 * t + 3.0 * x0)
        angle = np.zeros_like(x)
        if s.spin:
            a = s.spin * t
            c, sn = np.cos(a), np.sin(a)
            x, y = c * x - sn * y, sn * x + c * y
            angle = 2.0 * a + phase
        radius = r0 * (1 + s.pulse * np.sin(4.0 * t + phase))
        return x.astype(np.float32), y.astype(np.float32), radius.astype(np.float32), angle

    def _objects(
        self,
        rgb: np.ndarray,
        det: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        taus: np.ndarray,
        edge: float,
    ) -> None:
        """Objects touch little of the frame, so each is drawn only inside its bounding box."""
        s, geo = self.scene, self.geo
        xs, ys, rs, angles = self.object_tracks(taus)
        zoom, theta, px, py = self.camera(taus)
        pal = s.palette
        lh, lw = geo.latent_height, geo.latent_width
        for i in range(len(taus)):
            ui, vi = u[i], v[i]
            c, sn = math.cos(-float(theta[i])), math.sin(-float(theta[i]))
            for j in range(len(s.objects)):
                ox, oy, r = float(xs[i, j]), float(ys[i, j]), float(rs[i, j])
                rx, ry = ox - float(px[i]), oy - float(py[i])
                sx = (c * rx - sn * ry) * float(zoom[i])
                sy = (sn * rx + c * ry) * float(zoom[i])
                col = (sx / geo.aspect + 1) / 2 * lw
                row = (1 - sy) / 2 * lh
                reach = (r * 1.5 * float(zoom[i]) + edge) * lh / 2 + 2
                r0, r1 = max(0, int(row - reach)), min(lh, int(row + reach) + 1)
                c0, c1 = max(0, int(col - reach)), min(lw, int(col + reach) + 1)
                if r0 >= r1 or c0 >= c1:
                    continue
                du = (ui[r0:r1, c0:c1] if ui.shape[0] > 1 else ui[:, c0:c1]) - np.float32(ox)
                dv = (vi[r0:r1, c0:c1] if vi.shape[1] > 1 else vi[r0:r1]) - np.float32(oy)
                if s.spin and s.shape != "circle":
                    ca, sa = math.cos(float(angles[i, j])), math.sin(float(angles[i, j]))
                    du, dv = ca * du - sa * dv, sa * du + ca * dv
                if s.shape == "square":
                    d = np.maximum(np.abs(du), np.abs(dv)) - np.float32(r * 0.82)
                elif s.shape == "diamond":
                    d = (np.abs(du) + np.abs(dv)) - np.float32(r * 1.15)
                else:
                    d = np.sqrt(du * du + dv * dv) - np.float32(r)
                hx, hy = du + np.float32(0.35 * r), dv - np.float32(0.35 * r)
                light = np.clip(1 - (hx * hx + hy * hy) * np.float32(1 / (r * r)), 0.0, 1.0)
                mix = float(s.objects[j, 3]) * 0.6
                base = pal[3] * (1 - mix) + pal[4] * mix * 0.8
                shaded = [base[c] * 0.85 + light * (0.15 * base[c] + 0.3 * light) for c in range(3)]
                _over(rgb[:, i, r0:r1, c0:c1], det[i, r0:r1, c0:c1], _ramp(d, edge), shaded, 0.25)

    def _grade(self, rgb: np.ndarray, det: np.ndarray) -> None:
        style = self.scene.style
        if style == "cinematic":
            rgb -= 0.5
            rgb *= np.float32(1.12)
            rgb += 0.5
            rgb[0] *= np.float32(1.07)
            rgb[0] += np.float32(0.015)
            rgb[2] *= np.float32(0.86)
            rgb *= self.scene.vignette
        elif style == "noir":
            lum = 0.3 * rgb[0] + 0.59 * rgb[1] + 0.11 * rgb[2]
            lum -= 0.45
            lum *= np.float32(1.9)
            lum += 0.5
            lum *= self.scene.vignette
            rgb[:] = lum
            det += 0.35
        elif style == "anime":
            lum = (rgb[0] + rgb[1] + rgb[2]) * np.float32(1 / 3)
            for c in range(3):
                rgb[c] += (rgb[c] - lum) * np.float32(0.35)
            grad = np.zeros_like(lum)
            grad[:, :, 1:] += np.abs(np.diff(lum, axis=2))
            grad[:, 1:, :] += np.abs(np.diff(lum, axis=1))
            ink = 1 - np.clip((grad - 0.06) * 6.0, 0.0, 0.85)
            rgb *= ink
            det *= np.float32(0.3)
        elif style == "watercolor":
            rgb *= np.float32(0.86)
            rgb += np.array((0.97, 0.95, 0.9), np.float32).reshape(3, 1, 1, 1) * np.float32(0.14)
            for axis in (2, 3):
                for _ in range(2):
                    blurred = rgb * np.float32(0.5)
                    blurred += np.roll(rgb, 1, axis=axis) * np.float32(0.25)
                    blurred += np.roll(rgb, -1, axis=axis) * np.float32(0.25)
                    rgb[:] = blurred
            det[...] = 0.55
        elif style == "pixel":
            lum = (rgb[0] + rgb[1] + rgb[2]) * np.float32(1 / 3)
            for c in range(3):
                rgb[c] += (rgb[c] - lum) * np.float32(0.25)


def _load_source(path: Path, geo: _Geometry) -> np.ndarray:
    """An edit's source clip on the latent grid: RGB in [0, 1], shape (3, T, h, w), one
    source frame per latent frame (the one shown at that latent frame's time)."""
    wanted = np.minimum(np.round(geo.taus * geo.fps).astype(np.int64), geo.num_frames - 1)
    out = np.empty((3, geo.latent_frames, geo.latent_height, geo.latent_width), np.float32)
    frames = read_frames(path, geo.latent_width, geo.latent_height, geo.num_frames, fps=geo.fps)
    for k, frame in enumerate(frames):
        for i in np.flatnonzero(wanted == k):
            out[:, i] = frame.transpose(2, 0, 1) / np.float32(255)
    return out


class _Edit:
    """An edit's 'prediction': the source clip's layout and motion, recoloured into the new
    prompt's palette (its shadows to the ground colour, midtones to the subject's, lights
    to the highlight), with a share of the prompt's own scene painted over it."""

    def __init__(self, painter: _Painter, source: np.ndarray) -> None:
        self.painter, self.source, self.geo = painter, source, painter.geo

    def render(self, frames: slice, sigma: float) -> np.ndarray:
        out = self.painter.render(frames, sigma)
        src = self.source[:, frames]
        lum = src[0] * np.float32(0.3) + src[1] * np.float32(0.59) + src[2] * np.float32(0.11)
        low = np.clip(lum * 2, 0.0, 1.0)
        high = np.clip(lum * 2 - 1, 0.0, 1.0)
        pal = self.painter.scene.palette
        for c in range(3):
            graded = pal[2, c] + (pal[3, c] - pal[2, c]) * low + (pal[4, c] - pal[3, c]) * high
            kept = np.float32(0.4) * src[c] + np.float32(0.6) * graded
            out[c] *= np.float32(_EDIT_PAINT)
            out[c] += np.float32(1 - _EDIT_PAINT) * kept
        np.clip(out, 0.0, 1.0, out=out)
        return out


def _source_latents(source: np.ndarray) -> np.ndarray:
    features = np.empty((LATENT_CHANNELS, *source.shape[1:]), np.float32)
    features[:3] = source
    features[3] = 0.12
    return _encode_features(features)


def _sigmas(total: int) -> np.ndarray:
    """Shifted flow-matching schedule from pure noise (1) down to a small floor."""
    t = np.linspace(1.0, 0.0, total + 1)
    shifted = _SHIFT * t / (1 + (_SHIFT - 1) * t)
    return _SIGMA_MIN + (1 - _SIGMA_MIN) * shifted


def _noise(rng: np.random.Generator, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gaussian noise correlated across latent frames so residual grain does not flicker."""
    out = rng.standard_normal(shape, dtype=np.float32)
    keep = np.float32(math.sqrt(1 - _NOISE_RHO**2))
    for i in range(1, shape[1]):
        out[:, i] *= keep
        out[:, i] += np.float32(_NOISE_RHO) * out[:, i - 1]
    return out


def _hadamard(x: np.ndarray, scale: float) -> np.ndarray:
    """The 'VAE': an orthonormal, symmetric 4x4 mix over channels, so it is its own inverse.

    Written out as a butterfly rather than a matmul to keep BLAS threads out of the loop.
    """
    a, b = x[0] + x[1], x[0] - x[1]
    c, d = x[2] + x[3], x[2] - x[3]
    out = np.empty_like(x)
    np.add(a, c, out=out[0])
    np.add(b, d, out=out[1])
    np.subtract(a, c, out=out[2])
    np.subtract(b, d, out=out[3])
    out *= np.float32(0.5 * scale)
    return out


def _encode_features(features: np.ndarray) -> np.ndarray:
    centred = features * np.float32(2.0)
    centred -= np.float32(1.0)
    return _hadamard(centred, 1.0)


def _fingerprint(spec: GenerationSpec, steps: int) -> str:
    ref = hashlib.sha256(spec.reference_image).hexdigest() if spec.reference_image else None
    source = spec.source_sha256()
    fields = {
        "model": "reference",
        "format": _SNAPSHOT_FORMAT,
        "steps": steps,
        "prompt": spec.prompt,
        "seconds": spec.seconds,
        "width": spec.width,
        "height": spec.height,
        "seed": spec.seed,
        "style": spec.style,
        "fps": spec.fps,
        "reference": ref,
        "source": source,
        "edit_strength": _EDIT_STRENGTH if source is not None else None,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _snapshot(fingerprint: str, step: int, latents: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array(_SNAPSHOT_FORMAT),
        fingerprint=np.array(fingerprint),
        step=np.array(step, dtype=np.int64),
        latents=latents,
    )
    return buffer.getvalue()


def _restore(data: bytes, fingerprint: str, geo: _Geometry, total: int) -> tuple[int, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            fmt = str(archive["format"])
            found = str(archive["fingerprint"])
            step = int(archive["step"])
            latents = np.array(archive["latents"])
    except Exception as exc:
        raise ValueError("resume_from is not a reference model snapshot") from exc
    if fmt != _SNAPSHOT_FORMAT:
        raise ValueError(f"unsupported snapshot format {fmt!r}")
    if found != fingerprint:
        raise ValueError("snapshot was taken for a different spec or step count")
    if not 0 <= step <= total or latents.shape != geo.latent_shape or latents.dtype != np.float32:
        raise ValueError("snapshot is inconsistent with its spec")
    return step, latents


def _validate(spec: GenerationSpec) -> None:
    if spec.seconds <= 0 or spec.fps <= 0:
        raise ValueError("seconds and fps must be positive")
    if spec.width < 2 or spec.height < 2:
        raise ValueError("width and height must be at least 2")
    if spec.style is not None and spec.style not in STYLES:
        raise ValueError(f"unknown style {spec.style!r}; choose from {sorted(STYLES)}")


class ReferenceModel:
    """Deterministic procedural renderer behind the `VideoModel` contract."""

    name = "reference"
    styles = STYLES
    fps = 24
    accepts = frozenset({Conditioning.IMAGE, Conditioning.VIDEO})
    requires: frozenset[Conditioning] = frozenset()
    sizes = frozenset(SIZES)
    max_seconds = MAX_SECONDS

    def __init__(self, steps: int = 30) -> None:
        if steps < 1:
            raise ValueError("steps must be at least 1")
        self.steps = steps
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    def park(self) -> None:
        """Nothing to move: the renderer has no weights."""

    def num_steps(self, spec: GenerationSpec) -> int:
        """The steps a run makes: an edit runs only the last `_EDIT_STRENGTH` of them."""
        if spec.source_video is not None:
            return max(1, round(self.steps * _EDIT_STRENGTH))
        return self.steps

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        """Steps + decode + H.264 encode wall time on a 2-core worker, for ETAs and scheduling."""
        lf, lw, lh = _latent_dims(spec)  # not `_Geometry.of`: no arrays on the submit path
        latent_pixels = lf * lw * lh
        per_step = (
            _COST_PER_LATENT_PIXEL_STEP * latent_pixels
            + _COST_PER_LATENT_FRAME_STEP * lf
            + _COST_PER_STEP
        )
        pixels = spec.num_frames * spec.width * spec.height
        return (
            self.num_steps(spec) * per_step
            + _COST_PER_OUTPUT_PIXEL * pixels
            + _COST_PER_AUDIO_SECOND * spec.seconds
            + _COST_FIXED
        )

    def generate(
        self,
        spec: GenerationSpec,
        on_step: StepCallback,
        resume_from: bytes | None = None,
    ) -> Clip:
        _validate(spec)
        geo = _Geometry.of(spec)
        steps = self.num_steps(spec)
        skip = self.steps - steps  # where an edit joins the schedule (0: from pure noise)
        fingerprint = _fingerprint(spec, self.steps)
        if resume_from is None:
            start, latents = 0, None
        else:
            start, latents = _restore(resume_from, fingerprint, geo, steps)
        scene = _build_scene(spec, geo)
        if start < steps:
            bank = _noise(_rng(spec.seed, 0x1217), geo.latent_shape)
            painter = _Painter(scene, geo)
            renderer: _Painter | _Edit = painter
            sigmas = _sigmas(self.steps)
            if spec.source_video is not None:
                source = _load_source(spec.source_video, geo)
                renderer = _Edit(painter, source)
                if latents is None:
                    sigma = np.float32(sigmas[skip])
                    latents = _source_latents(source) * (1 - sigma) + bank * sigma
            latents = bank if latents is None else latents
            for step in range(start + 1, steps + 1):
                latents = _denoise(renderer, latents, bank, spec.seed, skip + step, sigmas)
                snapshot = functools.partial(_snapshot, fingerprint, step, latents)
                on_step(StepInfo(step, steps, snapshot))
        assert latents is not None
        audio = _render_audio(scene, spec)
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=geo.num_frames,
            frames=_decode(scene, geo, latents, spec.seed),
            audio=audio,
            sample_rate=SAMPLE_RATE,
            decoded=made_without_device(),  # the decoder runs on the CPU
        )


def _denoise(
    painter: _Painter | _Edit,
    latents: np.ndarray,
    bank: np.ndarray,
    seed: int,
    step: int,
    sigmas: np.ndarray,
) -> np.ndarray:
    """One sampler step: predict the clean scene, then move to the next noise level.

    Fresh noise is the seed's noise bank shifted by offsets drawn from the step's own RNG,
    a fraction of the cost of new Gaussians. Writes a new array so a snapshot taken at an
    earlier boundary stays valid.
    """
    geo = painter.geo
    sigma, sigma_next = float(sigmas[step - 1]), float(sigmas[step])
    keep = math.sqrt(1 - _ETA**2)
    a = np.float32((1 - sigma_next) - sigma_next * keep * (1 - sigma) / sigma)
    b = np.float32(sigma_next * keep / sigma)
    fresh = np.float32(sigma_next * _ETA)
    rng = _rng(seed, 0x57E9, step)
    shifts = tuple(int(rng.integers(size)) for size in bank.shape)
    if rng.random() < 0.5:
        fresh = -fresh
    out = np.empty_like(latents)
    for start in range(0, geo.latent_frames, geo.chunk):
        frames = slice(start, min(start + geo.chunk, geo.latent_frames))
        source = (np.arange(frames.start, frames.stop) - shifts[1]) % geo.latent_frames
        noise = np.roll(bank[:, source], (shifts[0], shifts[2], shifts[3]), axis=(0, 2, 3))
        predicted = _encode_features(painter.render(frames, sigma))
        predicted *= a
        noise *= fresh
        predicted += noise
        predicted += latents[:, frames] * b
        out[:, frames] = predicted
    return out


def _detail_texture(scene: _Scene, geo: _Geometry, seed: int, pad: int) -> np.ndarray | None:
    """Full-resolution micro-texture that the decoder adds where the detail channel asks."""
    style = scene.style
    if style == "pixel":
        return None
    amplitude = {"noir": 26, "anime": 6, "watercolor": 6, "cinematic": 12}.get(style or "", 14)
    h, w = geo.height + 2 * pad, geo.width + 2 * pad
    rng = _rng(seed, 0xDE7A11)
    grain = rng.integers(-amplitude, amplitude + 1, (h, w), dtype=np.int16)
    if style == "watercolor" or scene.mountains or scene.trees:
        depth = 28 if style == "watercolor" else 16
        coarse = rng.integers(128 - depth, 129 + depth, (h // 6 + 2, w // 6 + 2), dtype=np.uint8)
        blot = Image.fromarray(coarse).resize(
            (w, h), Image.Resampling.BICUBIC, box=(0, 0, w / 6, h / 6)
        )
        grain += np.asarray(blot, dtype=np.int16) - 128
    if scene.ocean:
        y = np.arange(h, dtype=np.float32)[:, None]
        x = np.arange(w, dtype=np.float32)[None, :]
        grain += (np.sin(y * 0.9 + 3.0 * np.sin(x * 0.011)) * 16).astype(np.int16)
    if scene.skyline:
        grid = np.zeros((h, w), np.int16)
        grid[::6] -= 18
        grid[:, ::5] -= 18
        grain += grid
    return grain


def _decode(scene: _Scene, geo: _Geometry, latents: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """The 'VAE decoder': one full-resolution RGB frame at a time, never the whole clip."""
    pad = 64
    texture = _detail_texture(scene, geo, seed, pad)
    frame_taus = np.arange(geo.num_frames, dtype=np.float32) / np.float32(geo.fps)
    _, _, pan_x, pan_y = _Painter(scene, geo).camera(frame_taus)
    unmix = 0.5 / (1 - _SIGMA_MIN)
    size = (geo.width, geo.height)
    bar = 0
    if scene.style == "cinematic":
        bar = min(round((geo.height - geo.width / 2.39) / 2), geo.height // 8)
    poster = None
    if scene.style == "anime":
        poster = [min(255, (i // 40) * 40 + 20) for i in range(256)] * 3
    sharpen = None
    if scene.style != "watercolor":
        sharpen = ImageFilter.UnsharpMask(radius=1, percent=100, threshold=0)
    last = geo.latent_frames - 1
    for f in range(geo.num_frames):
        pos = f * last / (geo.num_frames - 1) if geo.num_frames > 1 else 0.0
        i0 = min(int(pos), max(last - 1, 0))
        frac = np.float32(pos - i0) if last else np.float32(0.0)
        i1 = min(i0 + 1, last)
        lat = latents[:, i0] * (1 - frac) + latents[:, i1] * frac
        feat = _hadamard(lat, unmix)
        feat += np.float32(0.5)
        np.clip(feat, 0.0, 1.0, out=feat)
        feat *= np.float32(255.0)
        feat += np.float32(0.5)
        small = feat.astype(np.uint8)
        rgb_small = np.ascontiguousarray(small[:3].transpose(1, 2, 0))
        if scene.style == "pixel":
            yield _pixelate(rgb_small, size)
            continue
        image = Image.fromarray(rgb_small)
        if sharpen is not None:
            image = image.filter(sharpen)
        image = image.resize(size, Image.Resampling.BILINEAR)
        if poster is not None:
            image = image.point(poster)
        if texture is not None:
            detail = np.asarray(
                Image.fromarray(small[3]).resize(size, Image.Resampling.BILINEAR), dtype=np.int16
            )
            ox = round(float(pan_x[f]) * geo.height / 2) % (2 * pad)
            oy = round(float(-pan_y[f]) * geo.height / 2) % (2 * pad)
            detail *= texture[oy : oy + geo.height, ox : ox + geo.width]
            detail >>= 8
            detail += 128
            grain = Image.fromarray(detail.astype(np.uint8))
            image = ImageChops.add(image, Image.merge("RGB", (grain, grain, grain)), 1.0, -128)
        if bar > 0:
            image.paste((0, 0, 0), (0, 0, geo.width, bar))
            image.paste((0, 0, 0), (0, geo.height - bar, geo.width, geo.height))
        yield np.array(image)


def _pixelate(rgb_small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = rgb_small.shape[:2]
    if h >= 2 and w >= 2:
        block = rgb_small[: h - h % 2, : w - w % 2].astype(np.uint16)
        block = (block[0::2, 0::2] + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2]) // 4
        rgb_small = block.astype(np.uint8)
    levels = (rgb_small // 51) * 51 + 25
    image = Image.fromarray(levels.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    return np.array(image)


def _render_audio(scene: _Scene, spec: GenerationSpec) -> np.ndarray:
    """A chord bed from the prompt hash and mood, pulsing or swelling with the motion."""
    n = spec.seconds * SAMPLE_RATE
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    digest = scene.digest
    rng = _rng(spec.seed, 0xA0D10, int.from_bytes(digest[:4], "little"))
    root = 45 + digest[5] % 12
    if scene.mood > 0:
        chord, progressions = (0, 4, 7, 11, 14), ((0, 9, 5, 7), (0, 5, 7, 5), (0, 7, 9, 5))
    elif scene.mood < 0:
        chord, progressions = (0, 3, 7, 10, 14), ((0, 8, 3, 10), (0, 5, 8, 7), (0, 10, 8, 7))
    else:
        chord, progressions = (0, 5, 7, 12, 14), ((0, 5, 0, 7), (0, 2, 5, 7), (0, 7, 5, 0))
    progression = np.array(progressions[digest[6] % len(progressions)], dtype=np.float64)
    bpm = float(np.clip(62 + 38 * scene.speed, 50, 150))
    bar = 4 * 60.0 / bpm
    degree = progression[(t // bar).astype(np.int64) % len(progression)]
    bright = 0.35 if scene.style == "anime" else 0.18
    out = np.zeros((2, n), np.float64)
    pans = np.linspace(-0.6, 0.6, len(chord))
    for k, interval in enumerate(chord):
        freq = 440.0 * 2 ** ((root + interval + degree - 69 + (12 if k == 4 else 0)) / 12)
        phase = np.cumsum(freq) * (2 * math.pi / SAMPLE_RATE) + float(scene.phases[k])
        voice = np.sin(phase)
        if scene.style == "pixel":
            voice = np.sign(voice) * 0.6
        else:
            voice += bright * np.sin(2 * phase)
        gain = 0.22 if k < 4 else 0.08
        angle = (pans[k] + 1) * math.pi / 4
        out[0] += voice * (gain * math.cos(angle))
        out[1] += voice * (gain * math.sin(angle))
    beat = bar / 4
    if scene.speed > 1.5 or scene.pulse:
        envelope = 0.45 + 0.55 * np.exp(-((t % beat) / beat) * 5.0)
    else:
        envelope = 0.72 + 0.28 * np.sin(2 * math.pi * t / (2 * bar) + float(scene.phases[6]))
    out *= envelope
    texture = _noise_bed(scene, rng, n, t)
    if texture is not None:
        out += texture
    fade = min(0.3, spec.seconds * 0.1)
    ramp = np.clip(np.minimum(t, t[-1] - t) / fade, 0.0, 1.0) if fade > 0 else 1.0
    out *= ramp
    peak = float(np.max(np.abs(out))) or 1.0
    out *= 0.6 / peak
    return out.astype(np.float32)


def _noise_bed(scene: _Scene, rng: np.random.Generator, n: int, t: np.ndarray) -> np.ndarray | None:
    """Surf, rain, wind or fire as spectrally shaped noise, built in one FFT per channel."""
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    shape = np.zeros_like(freqs)
    if scene.ocean:
        shape += 0.9 / (1 + (freqs / 500.0) ** 2)
    if scene.rain:
        shape += 0.35 * (freqs / 3000.0) ** 2 / (1 + (freqs / 3000.0) ** 2)
    if scene.snow or scene.stars or scene.mountains:
        shape += 0.3 / (1 + ((freqs - 700.0) / 250.0) ** 2)
    if scene.fire:
        shape += 0.5 / (1 + (freqs / 250.0) ** 2)
    if not shape.any():
        return None
    channels = np.empty((2, n))
    for c in range(2):
        spectrum = np.fft.rfft(rng.standard_normal(n)) * shape
        channels[c] = np.fft.irfft(spectrum, n)
    channels /= float(np.max(np.abs(channels))) or 1.0
    level = 0.25
    if scene.ocean:
        channels *= 0.35 + 0.65 * (
            0.5 + 0.5 * np.sin(2 * math.pi * t / 6.0 + float(scene.phases[7]))
        )
    if scene.fire:
        channels += (rng.random((2, n)) < 0.0008) * rng.standard_normal((2, n))
    return channels * level
