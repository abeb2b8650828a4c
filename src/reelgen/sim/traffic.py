"""A day of submits, generated: arrival times with daily peaks, tiers, users (Zipf),
models, sizes, frames and multi-GPU jobs, priced by the cost model.

Arrays rather than objects: a 5,000,000-job day is a few hundred MB as objects, ~200 MB as
numpy columns, and generating it takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from reelgen.domain.jobs import DAY_S, Tier
from reelgen.scheduler.cost import CostModel

TIERS = (Tier.PAID, Tier.FREE, Tier.BATCH)


@dataclass(frozen=True, slots=True)
class Shape:
    """One kind of clip a model is asked for."""

    width: int
    height: int
    frames: int
    share: float
    gpus: int = 1


@dataclass(frozen=True, slots=True)
class ModelMix:
    name: str
    cost_class: str
    """Which fitted cost model prices it ("1.3B", "14B")."""
    share: float
    shapes: tuple[Shape, ...]


def default_models() -> tuple[ModelMix, ...]:
    return (
        ModelMix(
            "wan2.1-t2v-1.3b",
            "1.3B",
            0.85,
            (
                Shape(448, 256, 17, 0.15),  # previews
                Shape(832, 480, 33, 0.25),
                Shape(832, 480, 81, 0.45),
                Shape(1280, 720, 81, 0.15),
            ),
        ),
        ModelMix(
            "wan2.1-t2v-14b",
            "14B",
            0.15,
            (
                Shape(832, 480, 81, 0.70),
                Shape(1280, 720, 81, 0.15),
                Shape(1280, 720, 81, 0.15, gpus=8),  # sequence parallel on a whole host
            ),
        ),
    )


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    jobs_per_day: int = 5_000_000
    peak_factor: float = 5.0
    """The busiest minute's rate over the day's mean rate."""
    tier_mix: Mapping[Tier, float] = field(
        default_factory=lambda: {Tier.PAID: 0.25, Tier.FREE: 0.60, Tier.BATCH: 0.15}
    )
    users: int = 1_000_000
    zipf: float = 1.1
    """How heavy the heaviest users are (Zipf exponent over user rank)."""
    models: Sequence[ModelMix] = field(default_factory=default_models)
    batch_deadline_s: float = DAY_S
    runtime_noise: float = 0.10
    """Log-normal spread of actual run times around the estimate."""
    steps: int = 50


@dataclass(frozen=True, slots=True)
class Trace:
    """One row per job, sorted by arrival."""

    arrival: np.ndarray
    tier: np.ndarray
    """Index into `TIERS`."""
    user: np.ndarray
    model: np.ndarray
    """Index into `models`."""
    shape: np.ndarray
    """Index into the model's shapes."""
    gpus: np.ndarray
    gpu_seconds: np.ndarray
    """The cost model's estimate (what the scheduler sees)."""
    actual_seconds: np.ndarray
    """What the run really takes, GPU-seconds (estimate times noise)."""
    batch_gain: np.ndarray
    batchable: np.ndarray
    models: tuple[ModelMix, ...]
    deadline_s: float

    def __len__(self) -> int:
        return int(self.arrival.shape[0])


def rate_shape(peak_factor: float, bins: int = 1440) -> np.ndarray:
    """Relative arrival rate per minute over a day (mean 1, max `peak_factor`): a broad
    daytime swell and a sharp evening peak, with a night trough."""
    t = (np.arange(bins) + 0.5) / bins * 24.0
    base = 1.0 + 0.6 * np.sin((t - 9.0) / 24.0 * 2 * np.pi)
    evening = np.exp(-0.5 * ((t - 20.5) / 0.6) ** 2)
    shape = base / base.mean()
    if peak_factor > shape.max():
        # Blend in the evening peak until the busiest minute is `peak_factor` x the mean.
        lo, hi = 0.0, 1000.0
        for _ in range(60):
            k = (lo + hi) / 2
            s = base + k * evening
            lo, hi = (k, hi) if (s / s.mean()).max() < peak_factor else (lo, k)
        shape = base + lo * evening
        shape = shape / shape.mean()
    return np.asarray(shape)


def generate(
    config: TrafficConfig, costs: Mapping[str, CostModel], *, seed: int = 0, max_batch: int = 8
) -> Trace:
    rng = np.random.default_rng(seed)
    n = config.jobs_per_day
    shape = rate_shape(config.peak_factor)
    cdf = np.concatenate([[0.0], np.cumsum(shape)])
    cdf /= cdf[-1]
    u = np.sort(rng.random(n))
    minute = np.searchsorted(cdf, u, side="right") - 1
    frac = (u - cdf[minute]) / np.maximum(cdf[minute + 1] - cdf[minute], 1e-12)
    arrival = (minute + frac) * (DAY_S / len(shape))

    tier_p = np.array([config.tier_mix.get(t, 0.0) for t in TIERS], dtype=float)
    tier = rng.choice(len(TIERS), size=n, p=tier_p / tier_p.sum()).astype(np.int8)
    ranks = np.arange(1, config.users + 1, dtype=float)
    user_p = ranks**-config.zipf
    user = rng.choice(config.users, size=n, p=user_p / user_p.sum()).astype(np.int32)

    models = tuple(config.models)
    model_p = np.array([m.share for m in models], dtype=float)
    model = rng.choice(len(models), size=n, p=model_p / model_p.sum()).astype(np.int8)
    shape_idx = np.zeros(n, dtype=np.int8)
    gpus = np.ones(n, dtype=np.int16)
    gpu_seconds = np.zeros(n)
    gain = np.ones(n)
    batchable = np.zeros(n, dtype=bool)
    for mi, mix in enumerate(models):
        rows = np.flatnonzero(model == mi)
        p = np.array([s.share for s in mix.shapes], dtype=float)
        picked = rng.choice(len(mix.shapes), size=rows.size, p=p / p.sum())
        shape_idx[rows] = picked
        cost = costs[mix.cost_class]
        for si, s in enumerate(mix.shapes):
            these = rows[picked == si]
            gpus[these] = s.gpus
            gpu_seconds[these] = cost.gpu_seconds(
                s.width, s.height, s.frames, steps=config.steps, gpus=s.gpus
            )
            g = cost.batch_gain(s.width, s.height, s.frames, max_batch) if s.gpus == 1 else 1.0
            gain[these] = g
            batchable[these] = g >= 1.05
    actual = gpu_seconds * rng.lognormal(0.0, config.runtime_noise, size=n)
    return Trace(
        arrival=arrival,
        tier=tier,
        user=user,
        model=model,
        shape=shape_idx,
        gpus=gpus,
        gpu_seconds=gpu_seconds,
        actual_seconds=actual,
        batch_gain=gain,
        batchable=batchable,
        models=models,
        deadline_s=config.batch_deadline_s,
    )
