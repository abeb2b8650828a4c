"""What the scheduling policy sees and what it answers: plain data, never changed once
made. The ones made per job (`QueuedJob`, `RunningJob`, `Assignment`) are not frozen: a
frozen dataclass costs five times as much to build, and a simulated day builds millions.

The live dispatcher builds these from the store, the simulator from its own state; the
policy (`scheduler.fairshare`) never learns which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reelgen.domain.jobs import Tier

TIER_ORDER = (Tier.PAID, Tier.FREE, Tier.BATCH)
"""Most urgent first: a tier may preempt only tiers after it."""


@dataclass(slots=True)
class QueuedJob:
    id: str
    user: str
    tier: Tier
    model: str
    gpu_seconds: float
    """Estimated GPU-seconds (the cost model's; all GPUs of a gang together)."""
    queued_at: float
    """Since when it waits: submit time, or the time it was handed back."""
    created_at: float
    gpus: int = 1
    """GPUs of one host it runs on at once (a gang when > 1)."""
    deadline: float | None = None
    """Batch tier: when it must be finished."""
    preemptions: int = 0
    batch_key: str | None = None
    """Jobs with the same key may share one forward pass (same model, size, frames,
    steps); None when batching does not pay for this job."""
    batch_gain: float = 1.0
    """The cost model's GPU-second gain of running it in a batch of `max_batch`."""


@dataclass(slots=True)
class RunningJob:
    id: str
    user: str
    tier: Tier
    model: str
    workers: tuple[str, ...]
    started_at: float
    expected_end: float
    gpu_seconds: float
    preemptions: int = 0
    checkpoint_at: float | None = None
    """When its last checkpoint was written (None: none yet, a preemption loses all)."""
    batch_key: str | None = None
    """The key of the jobs it may share its run with (those it does share it with run on
    the same worker)."""


@dataclass(frozen=True, slots=True)
class WorkerView:
    id: str
    host: str
    models: frozenset[str]
    """The models it can serve."""
    loaded: str | None = None
    """The model on its GPU now."""
    load_s: float = 0.5
    """What switching to another model costs it (weights pinned in host memory: ~0.5 s)."""


@dataclass(slots=True)
class Assignment:
    """Run `jobs` (several only when batched) on `workers` (several only for a gang)."""

    jobs: tuple[str, ...]
    workers: tuple[str, ...]
    model: str
    switch: bool
    """Whether the workers load `model` first."""


@dataclass(frozen=True, slots=True)
class Preemption:
    job: str
    reason: str
    for_job: str


@dataclass(frozen=True, slots=True)
class Decisions:
    assignments: list[Assignment] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
