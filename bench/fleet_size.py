"""The smallest autoscaled fleet that meets the wait targets, and its cost over the bound.

Generates the default `reelgen sim` traffic (5x peak) for `--jobs` jobs a day, then runs it
through the Reelgen policy with the autoscaler under each setting of a small grid (how much
headroom over the arrival rate, how fast free backlog should drain, how long a lower number
must hold before scale-down). A setting qualifies when paid p95 wait <= 60 s, free p99
wait <= 30 min and no batch job misses its deadline; the answer is the qualifying run with
the fewest GPU-hours, and its ratio to the lower bound (GPU-seconds demanded / 86,400 s,
i.e. a fleet that is always 100 % busy). The best setting is then run once more on the
full `--confirm-jobs` day (5,000,000 jobs), which gives the answer at the target scale.
"""

from __future__ import annotations

import itertools
from typing import Any

from _common import Check, bench_args, checks_table, emit, fmt, log, table

from reelgen.scheduler.autoscale import AutoscaleConfig
from reelgen.scheduler.cost import CostModel, measured_models
from reelgen.scheduler.fairshare import PolicyConfig
from reelgen.sim import report
from reelgen.sim.engine import FleetConfig, Result, simulate
from reelgen.sim.traffic import Trace, TrafficConfig, generate

PAID_P95_S = 60.0
FREE_P99_S = 30 * 60.0
TARGET_RATIO = 1.15
GRID = {
    "headroom": (1.0, 1.1),
    "free_drain_s": (600.0, 1200.0),
    "scale_down_after_s": (300.0, 600.0),
}
HEADERS = [
    "jobs",
    "headroom",
    "free drain s",
    "scale down after s",
    "GPUs at peak",
    "GPU-hours",
    "x lower bound",
    "utilization",
    "paid p95 s",
    "free p99 s",
    "batch p99 s",
    "batch on time",
    "qualifies",
    "wall s",
]


def _run(
    trace: Trace, setting: dict[str, float], costs: dict[str, CostModel]
) -> tuple[bool, dict[str, Any], list[str]]:
    jobs = len(trace)
    start = max(8, int(trace.actual_seconds.sum() / 86_400))
    config = AutoscaleConfig(**setting)  # type: ignore[arg-type]
    result: Result = simulate(
        trace, FleetConfig(gpus=start, autoscale=config), PolicyConfig(), costs
    )
    f = report.figures(result)
    paid, free = f["tiers"]["paid"]["wait_p95_s"], f["tiers"]["free"]["wait_p99_s"]
    ratio = f["gpu_hours"] / f["demanded_gpu_hours"]
    batch_late = f["batch_jobs"] - f["batch_deadlines_met"]
    ok = paid <= PAID_P95_S and free <= FREE_P99_S and batch_late == 0
    log(f"{jobs:,} jobs, {setting}: {f['gpu_hours']:,.0f} GPU-h, x{ratio:.3f}, paid p95 "
        f"{paid:.0f} s, free p99 {free:.0f} s, batch late {batch_late}, "
        f"{result.wall_s:.0f} s")  # fmt: skip
    row = [
        f"{jobs:,}",
        f"{setting['headroom']:g}",
        f"{setting['free_drain_s']:g}",
        f"{setting['scale_down_after_s']:g}",
        f"{max(result.samples['fleet'], default=0):,.0f}",
        f"{f['gpu_hours']:,.0f}",
        f"{ratio:.3f}",
        f"{f['gpu_utilization']:.1%}",
        fmt(paid, 1),
        fmt(free, 1),
        fmt(f["tiers"]["batch"]["wait_p99_s"], 0),
        f"{f['batch_deadlines_met']:,} / {f['batch_jobs']:,}",
        "yes" if ok else "no",
        fmt(result.wall_s, 0),
    ]
    return ok, f, row


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--confirm-jobs", type=int, default=5_000_000, help="0: no full-scale run")
    args = parser.parse_args()

    costs = measured_models()
    trace = generate(TrafficConfig(jobs_per_day=args.jobs), costs, seed=0)
    rows: list[list[str]] = []
    runs: list[tuple[float, dict[str, float], dict[str, Any]]] = []
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        ok, f, row = _run(trace, setting, costs)
        runs.append((f["gpu_hours"] if ok else float("inf"), setting, f))
        rows.append(row)
    hours, best, figures = min(runs, key=lambda r: r[0])
    found = hours < float("inf")
    answer_jobs = args.jobs
    if found and args.confirm_jobs:
        full = generate(TrafficConfig(jobs_per_day=args.confirm_jobs), costs, seed=0)
        ok, figures, row = _run(full, best, costs)
        rows.append(row)
        hours = figures["gpu_hours"] if ok else float("inf")
        answer_jobs = args.confirm_jobs
    demanded = float(figures["demanded_gpu_hours"])
    ratio = hours / demanded
    if not found:
        answer = "No setting qualified."
    elif hours == float("inf"):
        answer = f"Best on the grid: {best}; it did not qualify at {answer_jobs:,} jobs a day."
    else:
        answer = (
            f"Best: {best}: {hours:,.0f} GPU-hours at {answer_jobs:,} jobs a day, "
            f"{ratio:.3f} x the lower bound of {demanded:,.0f} GPU-hours."
        )
    checks = [
        Check(f"smallest qualifying fleet, {answer_jobs:,} jobs", hours, "GPU-hours", "none", None),
        Check(f"lower bound, {answer_jobs:,} jobs", demanded, "GPU-hours", "none", None),
        Check(
            f"ratio to the lower bound, {answer_jobs:,} jobs",
            ratio,
            "x",
            f"<= {TARGET_RATIO:g} x",
            ratio <= TARGET_RATIO,
        ),
    ]
    confirm = (
        f" The best setting is then run on the full {args.confirm_jobs:,}-job day (last row)."
        if args.confirm_jobs
        else ""
    )
    md = [
        f"The default traffic at {args.jobs:,} jobs a day (5x peak, 25/60/15 paid/free/batch), "
        "simulated with the Reelgen policy on an autoscaled fleet of 8-GPU hosts (180 s to "
        "provision) starting from the lower bound, for each autoscaler setting below "
        f"(`bench/fleet_size.py --jobs {args.jobs} --confirm-jobs {args.confirm_jobs}`)."
        f"{confirm} Qualifies: paid p95 wait <= {PAID_P95_S:g} s, free p99 wait <= "
        f"{FREE_P99_S / 60:g} min and every batch job done by its deadline. Lower bound: the "
        f"GPU-seconds demanded over the day / 86,400 s. {answer}",
        "",
        table(HEADERS, rows),
        "",
        checks_table(checks),
    ]
    title = "Fleet size: the smallest fleet that meets the wait targets"
    return emit(args, title, "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
