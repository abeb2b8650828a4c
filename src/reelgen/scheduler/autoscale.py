"""How many workers a model pool should have: pure, time passed in.

Demand is measured in GPU-seconds, the cost model's unit, and each tier asks for what its
promise needs, no more: the arrival rate of paid and free work (an exponentially weighted
moving average) says how many GPUs keep up; their backlogs say how many more drain them,
paid's within about its wait target, free's within minutes; batch work asks only for what
finishes it by its deadline, and otherwise runs on what the others leave idle (the
troughs), so it fills the fleet instead of growing it. The running paid and free work is
what is on the GPUs now (a batch job can be handed back).

Scale-up is immediate (new workers take minutes to boot and load, so late is expensive);
scale-down waits until the lower number has held for `scale_down_after_s`
and then steps down gradually, so a dip between two bursts does not throw away warm
workers (hysteresis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    min_workers: int = 0
    max_workers: int = 1_000_000
    headroom: float = 1.10
    """Workers per GPU-second per second of demand: spare for bursts inside one interval."""
    drain_s: float = 120.0
    """Paid backlog should be gone within this (its wait target plus boot)."""
    free_drain_s: float = 600.0
    """Free backlog should be gone within this (well inside its wait target)."""
    batch_margin_s: float = 3600.0
    """Batch work is planned to finish this long before its deadline."""
    half_life_s: float = 120.0
    """Of the arrival-rate average."""
    scale_down_after_s: float = 600.0
    scale_down_step: float = 0.10
    """The most of the pool removed per decision when scaling down."""
    gpus_per_worker: int = 1


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """What the pool looks like at one moment."""

    arrived_gpu_s: float
    """GPU-seconds of paid and free work submitted since the last observation (batch work
    counts by its deadline instead)."""
    backlog_gpu_s: float
    """Paid work waiting."""
    busy_workers: int
    """Workers running paid or free work now: never fewer than these are wanted."""
    largest_gang: int = 1
    """GPUs of the largest queued job: never fewer than these are wanted."""
    free_backlog_gpu_s: float = 0.0
    batch_backlog_gpu_s: float = 0.0
    batch_due_in_s: float = float("inf")
    """Until the earliest deadline of the waiting batch work."""

    @property
    def total_backlog_gpu_s(self) -> float:
        return self.backlog_gpu_s + self.free_backlog_gpu_s + self.batch_backlog_gpu_s


class Autoscaler:
    """One pool's desired size; `observe` at a steady cadence, then read `desired`."""

    def __init__(self, config: AutoscaleConfig | None = None):
        self.config = config or AutoscaleConfig()
        self._rate = 0.0
        self._last: float | None = None
        self._desired = self.config.min_workers
        self._lower_since: float | None = None

    @property
    def rate_gpu_s_per_s(self) -> float:
        return self._rate

    def observe(self, now: float, load: PoolLoad) -> int:
        """Takes a measurement and returns the desired number of workers."""
        cfg = self.config
        if self._last is None:
            self._rate = 0.0 if now <= 0 else load.arrived_gpu_s / max(now, 1.0)
        else:
            dt = max(now - self._last, 1e-9)
            alpha = 1.0 - 0.5 ** (dt / cfg.half_life_s)
            self._rate += alpha * (load.arrived_gpu_s / dt - self._rate)
        self._last = now
        batch_window = max(load.batch_due_in_s - cfg.batch_margin_s, cfg.drain_s)
        gpus = (
            self._rate * cfg.headroom
            + load.backlog_gpu_s / cfg.drain_s
            + load.free_backlog_gpu_s / cfg.free_drain_s
            + load.batch_backlog_gpu_s / batch_window
        )
        wanted = max(
            load.busy_workers,
            load.largest_gang if load.total_backlog_gpu_s > 0 else 0,
            math.ceil(gpus / cfg.gpus_per_worker - 1e-9),
        )
        wanted = min(cfg.max_workers, max(cfg.min_workers, wanted))
        if wanted >= self._desired:
            self._desired = wanted
            self._lower_since = None
        elif self._lower_since is None:
            self._lower_since = now
        elif now - self._lower_since >= cfg.scale_down_after_s:
            step = max(1, math.ceil(self._desired * cfg.scale_down_step))
            self._desired = max(wanted, self._desired - step)
        return self._desired

    @property
    def desired(self) -> int:
        return self._desired
