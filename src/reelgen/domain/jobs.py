"""The video job: its spec, states, stages and the rules that govern them. Pure, no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self

from reelgen.domain.errors import InvalidRequest
from reelgen.domain.spec import JobSpec


class Status(StrEnum):
    QUEUED = "queued"
    """Accepted and durable; waiting for a worker."""
    IN_PROGRESS = "in_progress"
    """Claimed by a worker holding a lease."""
    COMPLETED = "completed"
    """Outputs are stored and viewable."""
    FAILED = "failed"
    """Ended without output; `error_code` says why."""
    CANCELLED = "cancelled"
    """Stopped at the user's request; shown publicly as failed with code `cancelled`."""

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.QUEUED, Status.IN_PROGRESS})


class Stage(StrEnum):
    AWAITING_REVIEW = "awaiting_review"
    """Queued but held: input moderation asked for a person's review before it may run."""
    WAITING_FOR_GPU = "waiting_for_gpu"
    GENERATING = "generating"
    ENCODING = "encoding"
    MODERATING_OUTPUT = "moderating_output"
    UPLOADING = "uploading"
    DONE = "done"


OFF_GPU_STAGES = frozenset(
    {Stage.ENCODING.value, Stage.MODERATING_OUTPUT.value, Stage.UPLOADING.value}
)
"""A running job in these stages has left the GPU: its worker finishes it on other threads
and may already generate the next job."""


class Tier(StrEnum):
    """A job's service tier (a user's tier is `paid` or `free`; a job may also be `batch`).

    `batch` runs on capacity nobody else waits for and is always preemptible; it has a
    deadline of hours instead of a wait target, like the OpenAI Batch API."""

    FREE = "free"
    PAID = "paid"
    BATCH = "batch"


class Variant(StrEnum):
    VIDEO = "video"
    THUMBNAIL = "thumbnail"
    SPRITESHEET = "spritesheet"


VARIANT_MEDIA_TYPES = {
    Variant.VIDEO: "video/mp4",
    Variant.THUMBNAIL: "image/webp",
    Variant.SPRITESHEET: "image/jpeg",
}

OPENAI_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
SIZES = (*OPENAI_SIZES, "832x480", "480x832", "256x144", "144x256", "128x72", "64x64")
DEFAULT_SIZE = "720x1280"
MIN_SECONDS, MAX_SECONDS, DEFAULT_SECONDS = 1, 20, 4
FPS = 24


def parse_size(value: str) -> tuple[int, int]:
    if value not in SIZES:
        raise InvalidRequest(
            f"Unsupported size {value!r}; supported sizes are {', '.join(SIZES)}.", param="size"
        )
    w, h = value.split("x")
    return int(w), int(h)


def parse_seconds(value: str | int) -> int:
    text = str(value).strip()
    if not text.isdigit() or not MIN_SECONDS <= int(text) <= MAX_SECONDS:
        raise InvalidRequest(
            f"seconds must be a whole number from {MIN_SECONDS} to {MAX_SECONDS}; got {value!r}.",
            param="seconds",
        )
    return int(text)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the jobs table, as the services see it."""

    seq: int
    id: str
    user_id: str
    tier: Tier
    spec: JobSpec
    status: Status
    stage: Stage
    progress: int
    step: int
    total_steps: int
    estimated_seconds: float
    created_at: float
    started_at: float | None
    completed_at: float | None
    expires_at: float | None
    not_before: float
    attempt: int
    max_attempts: int
    strikes: int
    """Lost workers held against the job: only attempts that made no progress count."""
    attempt_start_step: int
    """The checkpoint step the current attempt resumed from."""
    worker_id: str | None
    lease_token: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    preempt_requested: bool
    quota_refunded: bool
    checkpoint_step: int
    checkpoint_key: str | None
    video_key: str | None
    thumbnail_key: str | None
    spritesheet_key: str | None
    error_code: str | None
    error_message: str | None
    deleted_at: float | None
    preemptions: int = 0
    queue_position: int | None = None
    """Queued jobs of its model the dispatcher's last forecast put before it."""
    eta_at: float | None = None
    """When that forecast expects it to start (None: not forecast yet, or no worker)."""
    likeness_consent: bool = False
    age_verified: bool = False
    """The submitting key's consent and age verification, as at admission: the output check
    applies the same rules as the input check did."""

    @classmethod
    def from_row(cls, row: Any) -> Self:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, mapping: Any) -> Self:
        data = dict(mapping)
        data["tier"] = Tier(data["tier"])
        data["status"] = Status(data["status"])
        data["stage"] = Stage(data["stage"])
        for flag in (
            "cancel_requested",
            "preempt_requested",
            "quota_refunded",
            "likeness_consent",
            "age_verified",
        ):
            data[flag] = bool(data[flag])
        data["spec"] = JobSpec.from_columns(data)
        return cls(**{name: data[name] for name in _JOB_FIELDS})

    @property
    def model(self) -> str:
        """The adapter, which decides the worker pool."""
        return self.spec.model

    def content_key(self, variant: Variant) -> str | None:
        return {
            Variant.VIDEO: self.video_key,
            Variant.THUMBNAIL: self.thumbnail_key,
            Variant.SPRITESHEET: self.spritesheet_key,
        }[variant]


_JOB_FIELDS = tuple(f.name for f in dataclasses.fields(Job))


@dataclass(frozen=True, slots=True)
class User:
    """Who a request is for, as its API key says."""

    id: str
    name: str
    tier: Tier
    allow_batch: bool = True
    """Whether the key may lower a request to the batch tier (`service_tier`)."""
    admin: bool = False
    """An admin key (a role, not a tier): may decide on jobs held for content review."""
    likeness_consent: bool = False
    """Consent to depict real people is on record for the key (photoreal faces allowed)."""
    age_verified: bool = False
    """The key's users are verified adults: adult categories the deployment allows apply."""


@dataclass(frozen=True, slots=True)
class TierLimits:
    max_concurrent: int
    max_per_day: int
    gpu_seconds_per_day: float
    """The day's budget of estimated GPU-seconds (`scheduler.cost`'s unit)."""


QUOTA_CLASSES = {Tier.PAID: (Tier.PAID, Tier.FREE), Tier.FREE: (Tier.PAID, Tier.FREE)}
"""Whose jobs count toward a submit's limits: interactive jobs share one count, batch jobs
(`service_tier=batch`) have their own (they may wait hours, so users queue many)."""


def quota_class(tier: Tier) -> tuple[Tier, ...]:
    return QUOTA_CLASSES.get(tier, (tier,))


DAY_S = 86_400.0

GENERATING_SHARE = 90
"""Progress points given to the model's steps; encoding and upload take the rest."""


def generation_progress(step: int, total: int) -> int:
    return min(GENERATING_SHARE, (GENERATING_SHARE * step) // max(1, total))
