"""The fleet simulator: the live policy's objects on a generated day."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reelgen.domain.jobs import Tier
from reelgen.scheduler import fairshare
from reelgen.scheduler.cost import measured_models
from reelgen.scheduler.fairshare import Order, PolicyConfig
from reelgen.sim import engine, report
from reelgen.sim.engine import FleetConfig, simulate
from reelgen.sim.traffic import TIERS, TrafficConfig, generate, rate_shape


@pytest.fixture(scope="module")
def costs():
    return measured_models()


def test_the_simulator_runs_the_live_scheduler_itself() -> None:
    assert engine.Scheduler is fairshare.Scheduler


def test_the_day_has_the_asked_peak_and_mix(costs) -> None:
    shape = rate_shape(5.0)
    assert shape.mean() == pytest.approx(1.0) and shape.max() == pytest.approx(5.0, rel=0.01)
    trace = generate(TrafficConfig(jobs_per_day=50_000, users=10_000), costs, seed=3)
    assert len(trace) == 50_000 and np.all(np.diff(trace.arrival) >= 0)
    assert trace.arrival[0] >= 0 and trace.arrival[-1] <= 86_400
    share = np.bincount(trace.tier, minlength=3) / len(trace)
    assert share == pytest.approx([0.25, 0.60, 0.15], abs=0.01)
    assert set(np.unique(trace.gpus)) == {1, 8}
    assert trace.batchable.any() and not trace.batchable[trace.gpus > 1].any()


def _day(costs, gpus: int, order: Order, **fleet: float):
    trace = generate(TrafficConfig(jobs_per_day=4_000, users=500), costs, seed=1)
    return simulate(trace, FleetConfig(gpus=gpus, **fleet), PolicyConfig(order=order), costs)


def test_every_job_runs_to_the_end_and_the_books_balance(costs) -> None:
    r = _day(costs, gpus=16, order=Order.FAIR)
    assert not np.isnan(r.end).any()
    assert np.all(r.first_start >= r.trace.arrival)
    assert np.all(r.end > r.first_start)
    busy_share = r.busy_gpu_s / r.capacity_gpu_s
    # The GPUs did at least the work demanded (plus switches), and never more than existed.
    assert r.busy_gpu_s >= 0.95 * r.trace.actual_seconds.sum() and busy_share <= 1.0


def test_on_an_overloaded_day_paid_waits_less_than_under_fifo(costs) -> None:
    fifo = report.figures(_day(costs, gpus=8, order=Order.FIFO))
    fair = report.figures(_day(costs, gpus=8, order=Order.FAIR))
    assert fair["tiers"]["paid"]["wait_p95_s"] < fifo["tiers"]["paid"]["wait_p95_s"] / 2
    assert fair["tiers"]["free"]["wait_p50_s"] <= fifo["tiers"]["free"]["wait_p50_s"]


def test_crashed_workers_lose_work_but_no_job(costs) -> None:
    r = _day(costs, gpus=16, order=Order.FAIR, crashes_per_gpu_day=5.0)
    assert r.crashes > 0 and r.lost_gpu_s > 0
    assert not np.isnan(r.end).any()


_SAME_DAY = """
import hashlib
from reelgen.scheduler.autoscale import AutoscaleConfig
from reelgen.scheduler.cost import measured_models
from reelgen.scheduler.fairshare import PolicyConfig
from reelgen.sim.engine import FleetConfig, simulate
from reelgen.sim.traffic import TrafficConfig, generate
costs = measured_models()
trace = generate(TrafficConfig(jobs_per_day=20_000, users=2_000), costs, seed=1)
fleet = FleetConfig(gpus=48, autoscale=AutoscaleConfig())
r = simulate(trace, fleet, PolicyConfig(), costs)
print(hashlib.sha256(r.first_start.tobytes() + r.end.tobytes()).hexdigest(), r.switches)
"""


@pytest.mark.slow  # subprocesses
def test_the_same_seed_gives_the_same_day_whatever_the_hash_seed() -> None:
    """Nothing the policy decides may follow the order of a set of strings, which changes
    with each process's hash seed."""
    runs = {
        subprocess.run(
            [sys.executable, "-c", _SAME_DAY],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(runs) == 1, runs


@pytest.mark.slow  # a subprocess
def test_reelgen_sim_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelgen",
            "sim",
            "--out",
            str(out),
            "--jobs-per-day",
            "3000",
            "--gpus",
            "16",
            "--policy",
            "all",
            "--users",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "report.json").read_text())
    assert [p["policy"] for p in doc["policies"]] == ["fifo", "priority", "reelgen"]
    assert doc["plots"] == list(report.PLOTS)
    for name in report.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    for tier in TIERS:
        assert f"{tier.value} wait p99" in text
    assert "GPU utilization while work waits" in text and "batch deadlines met" in text
    assert doc["policies"][2]["tiers"][Tier.PAID.value]["jobs"] > 0


def test_reelgen_sim_refuses_shares_that_do_not_add_up(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reelgen",
            "sim",
            "--out",
            str(tmp_path),
            "--paid-share",
            "0.9",
            "--batch-share",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "add up to more than 1" in done.stderr


def test_the_autoscaler_sizes_the_fleet_to_the_day(costs) -> None:
    """From a fleet far too small at the start: the autoscaler meets the waits a fixed
    fleet of the same start size cannot, and uses fewer GPU-hours than a fleet sized for
    the peak."""
    from reelgen.scheduler.autoscale import AutoscaleConfig

    trace = generate(TrafficConfig(jobs_per_day=6_000, users=500), costs, seed=2)
    policy = PolicyConfig()
    small = simulate(trace, FleetConfig(gpus=8), policy, costs)
    auto = simulate(trace, FleetConfig(gpus=8, autoscale=AutoscaleConfig()), policy, costs)
    peak = simulate(trace, FleetConfig(gpus=64), policy, costs)
    fs, fa, fp = (report.figures(r) for r in (small, auto, peak))
    assert not np.isnan(auto.end).any()
    assert fa["tiers"]["paid"]["wait_p95_s"] <= 60.0 < fs["tiers"]["paid"]["wait_p95_s"]
    assert fa["tiers"]["free"]["wait_p99_s"] <= 30 * 60.0
    assert fa["gpu_hours"] < fp["gpu_hours"]
    assert max(auto.samples["fleet"]) > 8 and min(auto.samples["fleet"][10:]) < max(
        auto.samples["fleet"]
    )


def test_a_one_host_fleet_serves_a_mix_of_equal_models(costs) -> None:
    """No model gets a whole host by share (three at a third of one host): the host still
    starts with a model loaded, and the day runs."""
    from reelgen.sim.traffic import ModelMix, Shape

    mix = tuple(ModelMix(f"m{i}", "1.3B", 1.0, (Shape(832, 480, 33, 1.0),)) for i in range(3))
    trace = generate(TrafficConfig(jobs_per_day=300, users=50, models=mix), costs, seed=4)
    r = simulate(trace, FleetConfig(gpus=8), PolicyConfig(), costs)
    assert not np.isnan(r.end).any()
