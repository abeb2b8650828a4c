"""Output moderation: what a generated clip shows and says, checked on the worker after
encoding and before anything is viewable.

Frames are sampled while they stream to the encoder (`FrameSampler`: one a second plus every
scene cut, downscaled), then run through the image checks: faces (OpenCV's Haar cascade; a
face in the clip of a prompt that named a real person is a likeness), nudity (NudeNet, the
optional `nudity` extra: its wheel carries an AGPL-3.0 licence), and a perceptual-hash
blocklist (imagehash). The audio's loudness and speech are measured; speech goes through a
pluggable transcriber, whose text goes through the prompt check.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelgen.safety.classifiers import (
    Classifier,
    ClassifierUnavailable,
    Content,
    Scores,
    merge,
)
from reelgen.safety.text import SafetyPolicy, TextModerator
from reelgen.safety.verdict import Action, Category, Verdict, decide

OUTPUT_POLICY = "output-1"
SAMPLE_SIDE = 360
"""Sampled frames are downscaled (by striding) until their longer side is at most this."""
CUT_DIFF = 28.0
"""Mean absolute difference (0-255) of two consecutive thumbnails that counts as a cut."""
NUDITY_LABELS = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)

Transcriber = Callable[[np.ndarray, int], str]
"""(samples of shape (channels, n), sample rate) -> the words spoken."""


class FrameSampler:
    """Keeps what the image checks look at while frames stream past: one frame a second
    and every scene cut, downscaled, so a 20 s clip never sits in memory."""

    def __init__(self, fps: int, *, max_samples: int = 64):
        self.fps = max(1, fps)
        self.max_samples = max_samples
        self.samples: list[np.ndarray] = []
        self.cuts = 0
        self._index = 0
        self._last_thumb: np.ndarray | None = None

    def feed(self, frame: np.ndarray) -> None:
        i = self._index
        self._index += 1
        h, w = frame.shape[:2]
        tstep = max(1, max(h, w) // 32)
        thumb = frame[::tstep, ::tstep].mean(axis=2, dtype=np.float32)
        cut = (
            self._last_thumb is not None
            and self._last_thumb.shape == thumb.shape
            and float(np.abs(thumb - self._last_thumb).mean()) > CUT_DIFF
        )
        self._last_thumb = thumb
        if cut:
            self.cuts += 1
        if (i % self.fps == 0 or cut) and len(self.samples) < self.max_samples:
            step = max(1, math.ceil(max(h, w) / SAMPLE_SIDE))
            self.samples.append(np.ascontiguousarray(frame[::step, ::step]))

    def tee(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Passes frames through (to the encoder), sampling them on the way."""
        for frame in frames:
            self.feed(frame)
            yield frame


class HaarFaces:
    name = "faces"
    nudity = False

    def __init__(self) -> None:
        import cv2

        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        if not path.is_file():
            raise RuntimeError(
                f"OpenCV ships no face cascade at {path.name} (opencv-python-headless 5.x "
                "ships an empty cv2/data; install a 4.x release)"
            )
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))

    def faces(self, frame: np.ndarray) -> int:
        gray = self._cv2.cvtColor(frame, self._cv2.COLOR_RGB2GRAY)
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=1.15, minNeighbors=5, minSize=(24, 24)
        )
        return len(found)

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        if not content.frames:
            return {}, {}
        counts = [self.faces(f) for f in content.frames]
        return {}, {
            "frames_with_faces": sum(1 for c in counts if c),
            "max_faces": max(counts, default=0),
        }


class NudeNetNudity:
    """NudeNet's ONNX detector (shipped inside its wheel; nothing is downloaded)."""

    name = "nudenet"
    nudity = True

    def __init__(self, min_score: float = 0.6):
        from nudenet import NudeDetector

        self._detector = NudeDetector()
        self.min_score = min_score

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        if not content.frames:
            return {}, {}
        best = 0.0
        labels: set[str] = set()
        for frame in content.frames:
            alpha = np.full((*frame.shape[:2], 1), 255, dtype=np.uint8)
            for d in self._detector.detect(np.concatenate([frame, alpha], axis=2)):
                if d["class"] in NUDITY_LABELS and d["score"] >= self.min_score:
                    best = max(best, float(d["score"]))
                    labels.add(d["class"])
        return {Category.SEXUAL: best}, {"nudity": sorted(labels)}


class HashBlocklist:
    """Perceptual hashes of known disallowed images (`HEX CATEGORY` per line); a sampled
    frame within `max_distance` bits of one blocks with that category."""

    name = "hash_blocklist"
    nudity = False

    def __init__(self, entries: Sequence[tuple[str, Category]], *, max_distance: int = 8):
        import imagehash

        self._imagehash = imagehash
        self._entries = [(imagehash.hex_to_hash(h), c) for h, c in entries]
        self.max_distance = max_distance

    @classmethod
    def from_file(cls, path: Path) -> HashBlocklist:
        entries: list[tuple[str, Category]] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            try:
                entries.append(
                    (parts[0], Category(parts[1] if len(parts) > 1 else "sexual_minors"))
                )
            except ValueError as e:
                raise ValueError(f"{path}:{n}: expected `HEX_HASH CATEGORY` ({e})") from e
        return cls(entries)

    def hash(self, frame: np.ndarray) -> Any:
        from PIL import Image

        return self._imagehash.phash(Image.fromarray(frame))

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        scores: Scores = {}
        hits = 0
        for frame in content.frames:
            h = self.hash(frame)
            for known, category in self._entries:
                if h - known <= self.max_distance:
                    scores[category] = 1.0
                    hits += 1
        return scores, {"hash_hits": hits}


@dataclass(frozen=True, slots=True)
class AudioReport:
    loudness_dbfs: float
    peak_dbfs: float
    speech_share: float
    """Share of 30 ms windows that look like speech (energy with a voice-band spectrum)."""

    @property
    def has_speech(self) -> bool:
        return self.speech_share >= 0.1


def analyse_audio(samples: np.ndarray, sample_rate: int) -> AudioReport:
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    if mono.size == 0:
        return AudioReport(-math.inf, -math.inf, 0.0)
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    peak = float(np.max(np.abs(mono)))
    win = max(1, int(0.03 * sample_rate))
    n = mono.size // win
    speech = 0
    if n:
        frames = mono[: n * win].reshape(n, win)
        energy = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
        spectrum = np.abs(np.fft.rfft(frames * np.hanning(win), axis=1)) ** 2
        freqs = np.fft.rfftfreq(win, 1 / sample_rate)
        band = (freqs >= 300) & (freqs <= 3400)
        total = spectrum.sum(axis=1) + 1e-9
        voice = spectrum[:, band].sum(axis=1) / total
        peaks = np.sort(spectrum, axis=1)[:, -3:].sum(axis=1) / total
        # speech: loud enough, mostly in the voice band, spread over many frequencies (a
        # tone or chord puts most of its energy in a few)
        speech = int(np.sum((energy > 0.01) & (voice > 0.6) & (peaks < 0.3)))
    return AudioReport(_db(rms), _db(peak), speech / n if n else 0.0)


def _db(value: float) -> float:
    return 20 * math.log10(value) if value > 0 else -math.inf


def load_transcriber(spec: str | None) -> Transcriber | None:
    """`package.module:function` (REELGEN_SAFETY_TRANSCRIBER), imported at start-up."""
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"REELGEN_SAFETY_TRANSCRIBER must be module:function, not {spec!r}")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise ValueError(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


@dataclass
class OutputModerator:
    policy: SafetyPolicy
    text: TextModerator
    checks: list[Classifier] = field(default_factory=list)
    transcriber: Transcriber | None = None

    @property
    def version(self) -> str:
        names = "+".join(c.name for c in self.checks) or "none"
        return f"{OUTPUT_POLICY}[{names}]"

    @property
    def has_nudity_check(self) -> bool:
        return any(c.nudity for c in self.checks)

    def unanswered(self, cause: ClassifierUnavailable) -> Verdict:
        """The verdict on a clip that a required classifier did not answer for: not
        shown (quarantined), with no category, and why in the audit details."""
        return Verdict(
            action=Action.BLOCK,
            categories=(),
            scores={},
            policy_version=f"{self.version}+{self.text.version}",
            stage="output",
            details={"unavailable": cause.name, "reason": cause.reason},
        )

    def check(
        self,
        frames: Sequence[np.ndarray],
        audio: np.ndarray,
        sample_rate: int,
        *,
        prompt: str,
        consent: bool = False,
        adult: bool = False,
    ) -> Verdict:
        scores: Scores = dict.fromkeys(Category, 0.0)
        details: dict[str, Any] = {"frames": len(frames)}
        report = analyse_audio(audio, sample_rate)
        details["audio"] = {
            "loudness_dbfs": round(report.loudness_dbfs, 1),
            "peak_dbfs": round(report.peak_dbfs, 1),
            "speech_share": round(report.speech_share, 3),
        }
        said = None
        if report.has_speech and self.transcriber is not None:
            said = self.transcriber(audio, sample_rate)
            spoken = self.text.check(said)
            details["transcript_sha256"] = hashlib.sha256(said.encode()).hexdigest()
            for category, s in spoken.scores.items():
                scores[category] = max(scores[category], s)
        merge(scores, details, self.checks, Content(text=said, frames=frames))
        prompt_verdict = self.text.check(prompt, consent=consent)
        people = prompt_verdict.details.get("people")
        if people and details.get("frames_with_faces") and not consent:
            scores[Category.REAL_PERSON] = 1.0  # a face in the clip of a prompt about a person
            details["likeness"] = True
        if scores[Category.SEXUAL] and prompt_verdict.details.get("minor"):
            scores[Category.SEXUAL_MINORS] = scores[Category.SEXUAL]
        return decide(
            scores,
            self.policy.thresholds,
            self.policy.enabled_for(adult),
            f"{self.version}+{self.text.version}",
            stage="output",
            details=details,
        )


def build_checks(
    *, nudity: Classifier | None, blocklist: Path | None, faces: bool = True
) -> list[Classifier]:
    """The built-in image checks; `nudity` is passed in, as one detector (its ONNX session,
    some 60 MB) serves every role of a process."""
    checks: list[Classifier] = []
    if faces:
        checks.append(HaarFaces())
    if nudity is not None:
        checks.append(nudity)
    if blocklist is not None:
        checks.append(HashBlocklist.from_file(blocklist))
    return checks


def nudity_available() -> bool:
    return importlib.util.find_spec("nudenet") is not None
