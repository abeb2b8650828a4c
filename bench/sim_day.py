"""A full simulated day: how long `reelgen sim`'s engine takes for a 5,000,000-job day.

Generates the default traffic (5x peak, 25/60/15 paid/free/batch, 1M Zipf users, the
default model and size mix with 8-GPU gangs), then runs it through the Reelgen policy
(`scheduler.fairshare.Scheduler`) on a fixed fleet, in this process, and reports the wall
time of the generation and of the simulation, and the simulated jobs per wall second.
"""

from __future__ import annotations

import heapq
import random
import resource
import time

from _common import Check, bench_args, check_max, checks_table, emit, fmt, log, table

from reelgen.scheduler.autoscale import AutoscaleConfig
from reelgen.scheduler.cost import measured_models
from reelgen.scheduler.fairshare import PolicyConfig
from reelgen.sim import report
from reelgen.sim.engine import FleetConfig, simulate
from reelgen.sim.traffic import TrafficConfig, generate

TARGET_S = 120.0
CALIBRATION_JOBS = 1_000_000
"""Jobs through the bare event loop timed first: how fast this run's machine is."""


def bare_event_loop(jobs: int) -> float:
    """Jobs per second of a bare discrete-event loop: arrivals in time order, each job's
    end through one heapq, no policy (the floor any simulator in Python pays; its few
    thousand pending events stay in the CPU's caches)."""
    rng = random.Random(0)
    arrivals = sorted(rng.uniform(0, 86_400.0) for _ in range(jobs))
    started = time.perf_counter()
    ends: list[tuple[float, int]] = []
    for k, at in enumerate(arrivals):
        while ends and ends[0][0] <= at:
            heapq.heappop(ends)
        heapq.heappush(ends, (at + 30.0 + (k % 97), k))
    while ends:
        heapq.heappop(ends)
    return jobs / (time.perf_counter() - started)


def scattered_event_loop(jobs: int) -> float:
    """The same with every arrival pending in the heap from the start: each pop walks
    memory far beyond the caches, as the simulator's millions of live objects do."""
    rng = random.Random(0)
    events = [(rng.uniform(0, 86_400.0), k, 0) for k in range(jobs)]
    heapq.heapify(events)
    started = time.perf_counter()
    while events:
        at, k, kind = heapq.heappop(events)
        if kind == 0:
            heapq.heappush(events, (at + 30.0 + (k % 97), k, 1))
    return jobs / (time.perf_counter() - started)


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=5_000_000)
    parser.add_argument(
        "--gpus", type=int, default=0, help="a fixed fleet; 0: autoscaled from the lower bound"
    )
    args = parser.parse_args()

    loop_rate = bare_event_loop(CALIBRATION_JOBS)
    scattered_rate = scattered_event_loop(CALIBRATION_JOBS)
    log(f"bare heapq event loop: {loop_rate:,.0f} jobs/s; all pending: {scattered_rate:,.0f}")
    costs = measured_models()
    t0 = time.perf_counter()
    trace = generate(TrafficConfig(jobs_per_day=args.jobs), costs, seed=0)
    generated = time.perf_counter() - t0
    lower_bound = int(trace.actual_seconds.sum() / 86_400)
    fleet = (
        FleetConfig(gpus=args.gpus)
        if args.gpus
        else FleetConfig(gpus=lower_bound, autoscale=AutoscaleConfig())
    )
    how = f"{args.gpus:,} GPUs" if args.gpus else f"an autoscaled fleet from {lower_bound:,} GPUs"
    log(f"generated {len(trace):,} jobs in {generated:.1f} s; simulating on {how}")
    result = simulate(trace, fleet, PolicyConfig(), costs)
    total = generated + result.wall_s
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    f = report.figures(result)
    log(f"simulated in {result.wall_s:.1f} s")

    checks = [
        check_max(f"{args.jobs:,}-job day, generate + simulate", total, "s", TARGET_S),
        Check("simulated jobs per wall second", len(trace) / result.wall_s, "jobs/s", "none", None),
        Check("peak memory", peak_mib, "MiB", "none", None),
        Check("bare heapq event loop on this machine", loop_rate, "jobs/s", "none", None),
        Check(
            "the same, every arrival pending from the start", scattered_rate, "jobs/s", "none", None
        ),
    ]
    rows = [
        [
            f"{len(trace):,}",
            how,
            fmt(generated, 1),
            fmt(result.wall_s, 1),
            f"{len(trace) / result.wall_s:,.0f}",
            f"{f['gpu_utilization']:.1%}",
            fmt(f["tiers"]["paid"]["wait_p95_s"], 1),
            fmt(f["tiers"]["free"]["wait_p99_s"], 1),
            fmt(peak_mib, 0),
        ]
    ]
    md = [
        "The default `reelgen sim` traffic for a whole day, generated and then simulated with "
        "the Reelgen policy on hosts of 8 GPUs (autoscaled unless `--gpus` is given), in one "
        f"process (`bench/sim_day.py --jobs {args.jobs} --gpus {args.gpus}`). The waits and "
        "utilization show that the run did real work.",
        "",
        "Machines of this kind differ in speed from day to day (the same code and outcomes "
        "took 217 s on one day and 599 s on another), so the run first times a bare heapq "
        f"event loop over {CALIBRATION_JOBS:,} jobs, no policy: with arrivals in time order "
        f"and only the running jobs' ends in the heap (it stays in the CPU's caches) "
        f"{loop_rate:,.0f} jobs/s, and with every arrival pending in the heap from the start "
        f"(each pop walks memory, as the simulator's millions of live objects do) "
        f"{scattered_rate:,.0f} jobs/s. Compare runs of different days by those rates.",
        "",
        table(
            [
                "jobs",
                "fleet",
                "generate s",
                "simulate s",
                "jobs/s",
                "GPU utilization",
                "paid wait p95 s",
                "free wait p99 s",
                "peak MiB",
            ],
            rows,
        ),
        "",
        checks_table(checks),
    ]
    return emit(args, "Fleet simulator: a 5M-job day", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
