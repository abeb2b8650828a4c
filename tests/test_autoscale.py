"""The autoscaler: desired workers from demand in GPU-seconds, with hysteresis."""

from __future__ import annotations

import pytest

from reelgen.domain.jobs import Tier
from reelgen.scheduler.autoscale import AutoscaleConfig, Autoscaler, PoolLoad
from reelgen.scheduler.fairshare import build
from reelgen.scheduler.view import QueuedJob, WorkerView


def _load(arrived: float = 0.0, backlog: float = 0.0, busy: int = 0, gang: int = 1) -> PoolLoad:
    return PoolLoad(
        arrived_gpu_s=arrived, backlog_gpu_s=backlog, busy_workers=busy, largest_gang=gang
    )


def test_steady_demand_settles_at_rate_times_headroom() -> None:
    a = Autoscaler(AutoscaleConfig(headroom=1.1, half_life_s=60.0))
    wanted = 0
    for t in range(30, 3600, 30):
        wanted = a.observe(float(t), _load(arrived=30 * 100.0))  # 100 GPU-s of work per s
    assert a.rate_gpu_s_per_s == pytest.approx(100.0, rel=0.01)
    assert wanted == 110


def test_a_backlog_is_drained_within_its_target() -> None:
    a = Autoscaler(AutoscaleConfig(drain_s=120.0, headroom=1.0))
    assert a.observe(30.0, _load(backlog=120.0 * 50)) == 50


def test_scale_up_is_at_once_and_scale_down_waits_then_steps() -> None:
    cfg = AutoscaleConfig(
        headroom=1.0, half_life_s=1.0, scale_down_after_s=600.0, scale_down_step=0.10
    )
    a = Autoscaler(cfg)
    assert a.observe(30.0, _load(arrived=30 * 200.0)) >= 100
    high = a.observe(60.0, _load(arrived=30 * 200.0))
    assert high == 200
    # Demand drops to a tenth: nothing happens for 10 minutes...
    seen = [a.observe(60.0 + t, _load(arrived=30 * 20.0)) for t in range(30, 600, 30)]
    assert set(seen) == {200}
    # ...then the pool shrinks 10% per decision, not at once.
    after = [a.observe(660.0 + t, _load(arrived=30 * 20.0)) for t in range(0, 300, 30)]
    assert after[:3] == [200, 180, 162]  # the lower number first held at t=90
    assert after == sorted(after, reverse=True) and after[-1] >= 20


def test_busy_workers_and_waiting_gangs_set_a_floor() -> None:
    a = Autoscaler(AutoscaleConfig(scale_down_after_s=0.0, scale_down_step=1.0))
    assert a.observe(30.0, _load(busy=7)) == 7
    b = Autoscaler()
    assert b.observe(30.0, _load(backlog=1.0, gang=8)) == 8
    assert Autoscaler(AutoscaleConfig(min_workers=3)).observe(30.0, _load()) == 3
    assert Autoscaler(AutoscaleConfig(max_workers=5)).observe(30.0, _load(backlog=1e9)) == 5


def test_each_tier_asks_for_what_its_promise_needs() -> None:
    cfg = AutoscaleConfig(headroom=1.0, drain_s=120.0, free_drain_s=600.0, batch_margin_s=3600.0)
    paid = Autoscaler(cfg).observe(30.0, PoolLoad(0.0, backlog_gpu_s=120.0 * 50, busy_workers=0))
    free = Autoscaler(cfg).observe(
        30.0, PoolLoad(0.0, 0.0, 0, free_backlog_gpu_s=120.0 * 50)
    )  # the same work, free: drained over 10 minutes instead of 2
    assert (paid, free) == (50, 10)
    # Batch work due in 11 hours is planned to end an hour early: 10 hours for 36,000 GPU-s.
    batch = PoolLoad(0.0, 0.0, 0, batch_backlog_gpu_s=36_000.0, batch_due_in_s=11 * 3600.0)
    assert Autoscaler(cfg).observe(30.0, batch) == 1
    # Past its margin it must drain as fast as paid work.
    late = PoolLoad(0.0, 0.0, 0, batch_backlog_gpu_s=36_000.0, batch_due_in_s=600.0)
    assert Autoscaler(cfg).observe(30.0, late) == 300


def test_pool_load_splits_the_backlog_by_tier_and_leaves_batch_work_off_the_floor() -> None:
    def job(i: int, tier: Tier, gpu_s: float) -> QueuedJob:
        deadline = 1000.0 + i if tier is Tier.BATCH else None
        return QueuedJob(str(i), f"u{i}", tier, "m", gpu_s, 0.0, 0.0, deadline=deadline)

    workers = [WorkerView(f"w{k}", "h", frozenset({"m"}), "m") for k in range(2)]
    s = build([job(1, Tier.BATCH, 50.0), job(2, Tier.FREE, 20.0)], workers)
    s.schedule(10.0)  # both start: the free job first, then the batch job
    s.submit(job(3, Tier.PAID, 7.0))
    s.submit(job(4, Tier.FREE, 11.0))
    s.submit(job(5, Tier.BATCH, 13.0))
    s.submit(job(6, Tier.BATCH, 17.0))
    load = s.pool_load(5.0, 100.0, "m")
    assert load.arrived_gpu_s == 5.0
    assert (load.backlog_gpu_s, load.free_backlog_gpu_s, load.batch_backlog_gpu_s) == (7, 11, 30)
    assert load.batch_due_in_s == 1005.0 - 100.0  # the oldest waiting batch job's deadline
    assert load.busy_workers == 1  # the batch job's worker may be handed back
    assert s.pool_load(0.0, 100.0, "other").backlog_gpu_s == 0.0
