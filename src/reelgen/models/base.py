"""The contract between the platform and a video model.

A model is a black box that turns a `GenerationSpec` into frames and audio, in steps.
The worker drives it through `generate`, receives a callback at every step boundary
(progress, heartbeat, cancel/preempt checks, checkpoints) and may resume it from a
state saved at an earlier boundary.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from reelgen.domain.spec import JobSpec


class Conditioning(StrEnum):
    """What a model can be given besides the prompt (`VideoModel.accepts`)."""

    IMAGE = "image"
    """A reference image for the first frame: `input_reference`, and the last frame of a
    video being extended."""
    VIDEO = "video"
    """A clip to edit (`POST /v1/videos/edits`)."""
    CLIP = "clip"
    """The end of a video being extended, several frames of it (`context_video`): the new
    frames carry on its motion, not only its last picture."""


@dataclass(frozen=True, slots=True)
class GenerationSpec:
    """Everything a model needs to render one clip; fully determines the output."""

    prompt: str
    seconds: int
    width: int
    height: int
    seed: int
    style: str | None = None
    fps: int = 24
    reference_image: bytes | None = None
    """An already validated PNG/JPEG/WebP image that guides the first frame and palette."""
    source_video: Path | None = None
    """An edit's source clip, a local MP4 (`Conditioning.VIDEO`): the output keeps its
    motion and layout and changes what the prompt asks; it is read at the spec's size."""
    context_video: Path | None = None
    """An extension's source clip, a local MP4 (`Conditioning.CLIP`), of which the output
    shows the first `context_seconds` (read at the spec's size and rate) before the frames
    this run makes."""
    context_seconds: int = 0
    run_id: str = ""
    """Which claim of which job this is (not part of the output): for a service that
    deduplicates retried requests by it."""

    @property
    def num_frames(self) -> int:
        return self.seconds * self.fps

    def source_sha256(self) -> str | None:
        """The hash of the clip the run reads (an edit's source, an extension's context),
        for a checkpoint's fingerprint (None: it reads none)."""
        clip = self.source_video or self.context_video
        if clip is None:
            return None
        with clip.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    @classmethod
    def of(
        cls, spec: JobSpec, reference_image: bytes | None = None, *, run_id: str = ""
    ) -> GenerationSpec:
        """The model's view of a job spec (the reference image as bytes, not a key)."""
        return cls(
            prompt=spec.prompt,
            seconds=spec.seconds,
            width=spec.width,
            height=spec.height,
            seed=spec.seed,
            style=spec.style,
            fps=spec.fps,
            reference_image=reference_image,
            run_id=run_id,
        )


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Passed to the step callback after step `step` (1-based) of `total` has finished."""

    step: int
    total: int
    snapshot: Callable[[], bytes] | None
    """Serialises the resumable state as of this boundary; call only when checkpointing.
    None: the model cannot resume (a remote service), so no checkpoint is taken."""


StepCallback = Callable[[StepInfo], None]
"""Raising from the callback (cancel, preempt, lost lease) stops generation at that step."""


@dataclass(slots=True)
class Clip:
    """A generated clip: frames are produced lazily so a 20 s clip never sits in memory."""

    width: int
    height: int
    fps: int
    num_frames: int
    frames: Iterator[np.ndarray]
    """RGB uint8 arrays of shape (height, width, 3), exactly `num_frames` of them."""
    audio: np.ndarray
    """float32 samples in [-1, 1], shape (channels, samples)."""
    sample_rate: int
    decoded: threading.Event | None = None
    """Set by the model once the rest of the frames can be read without its weights (its
    VAE decode has run; at once for a model with no device): a worker serving several
    models may then park this one while the frames are encoded. None: once all are read."""


def made_without_device() -> threading.Event:
    """`Clip.decoded` for a model whose frames need no device of its own (already set)."""
    ready = threading.Event()
    ready.set()
    return ready


class VideoModel(Protocol):
    name: str
    styles: frozenset[str]
    """The `style` values this model understands."""
    fps: int
    """The frame rate its clips are made at (jobs for it take this rate)."""
    accepts: frozenset[Conditioning]
    """The inputs besides the prompt it uses; the API refuses a request that needs another
    (a reference image for a text-only model would be ignored, not followed)."""
    requires: frozenset[Conditioning]
    """The inputs it cannot do without (an image-to-video model's image); a subset of
    `accepts`."""
    sizes: frozenset[str]
    """The sizes (`WxH`, of `domain.jobs.SIZES`) it makes; the API refuses the others."""
    max_seconds: int
    """The longest clip it makes in one run (an extension: the part it adds)."""

    def load(self) -> None:
        """Brings the weights onto the device: from disk the first time, from host memory
        after `park`. Called before the first generate and after each `park`."""

    def park(self) -> None:
        """Moves the weights off the device into (pinned) host memory and keeps them
        there, so the worker can bring another model it serves onto the device; the next
        `load` is a host-to-device copy (about 0.5 s for 14B), not a read from disk."""

    def num_steps(self, spec: GenerationSpec) -> int: ...

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        """Expected wall-clock generation time on this worker, for ETAs and scheduling."""
        ...

    def generate(
        self,
        spec: GenerationSpec,
        on_step: StepCallback,
        resume_from: bytes | None = None,
    ) -> Clip:
        """Runs the remaining steps (all, or those after the snapshot) and returns the clip."""
        ...


@runtime_checkable
class BatchingModel(VideoModel, Protocol):
    """A model that can run several jobs in one pass of forwards: worth it only where the
    cost model says so (small clips, whose forwards are mostly fixed cost)."""

    def batch_key(self, spec: GenerationSpec) -> str | None:
        """Jobs with equal keys can share a run (same size, frames, steps and settings);
        None: this one runs alone (an image, a clip to edit or extend)."""
        ...

    def batch_gain(self, spec: GenerationSpec, batch: int) -> float:
        """GPU-seconds of the clip alone over its share of a run of `batch` such clips."""
        ...

    def generate_batch(
        self, specs: Sequence[GenerationSpec], on_steps: Sequence[StepCallback]
    ) -> list[Clip | Exception]:
        """Runs fresh jobs of one batch key together, each clip as `generate` would make it
        from its own seed. A member whose callback raises leaves the run at that step (a
        checkpoint its callback wrote resumes with `generate`, alone); its entry is the
        error, and the others go on."""
        ...
