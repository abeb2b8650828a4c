"""The smallest autoscaled fleet that meets the wait targets, and its cost over the bound.

Generates the default `reelgen sim` traffic (5x peak) for `--jobs` jobs a day, then runs it
through the Reelgen policy with the autoscaler under each setting of a small grid (how much
headroom over the arrival rate, how fast the backlog should drain, how long a lower number
must hold before scale-down). A setting qualifies when paid p95 wait <= 60 s and free p99
wait <= 30 min; the answer is the qualifying run with the fewest GPU-hours, and its ratio to
the lower bound (GPU-seconds demanded / 86,400 s, i.e. a fleet that is always 100 % busy).
"""

from __future__ import annotations

import itertools
from typing import Any

from _common import Check, bench_args, checks_table, emit, fmt, log, table

from reelgen.scheduler.autoscale import AutoscaleConfig
from reelgen.scheduler.cost import measured_models
from reelgen.scheduler.fairshare import PolicyConfig
from reelgen.sim import report
from reelgen.sim.engine import FleetConfig, simulate
from reelgen.sim.traffic import TrafficConfig, generate

PAID_P95_S = 60.0
FREE_P99_S = 30 * 60.0
TARGET_RATIO = 1.15
GRID = {
    "headroom": (1.0, 1.1),
    "drain_s": (120.0, 600.0),
    "scale_down_after_s": (300.0, 600.0),
}


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=300_000)
    args = parser.parse_args()

    costs = measured_models()
    trace = generate(TrafficConfig(jobs_per_day=args.jobs), costs, seed=0)
    start = max(8, int(trace.actual_seconds.sum() / 86_400))
    rows: list[list[str]] = []
    runs: list[tuple[float, dict[str, float], dict[str, Any]]] = []
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        config = AutoscaleConfig(**setting)  # type: ignore[arg-type]
        result = simulate(trace, FleetConfig(gpus=start, autoscale=config), PolicyConfig(), costs)
        f = report.figures(result)
        paid, free = f["tiers"]["paid"]["wait_p95_s"], f["tiers"]["free"]["wait_p99_s"]
        ratio = f["gpu_hours"] / f["demanded_gpu_hours"]
        ok = paid <= PAID_P95_S and free <= FREE_P99_S
        log(f"{setting}: {f['gpu_hours']:,.0f} GPU-h, x{ratio:.3f}, paid p95 {paid:.0f} s, "
            f"free p99 {free:.0f} s, {result.wall_s:.0f} s")  # fmt: skip
        runs.append((f["gpu_hours"] if ok else float("inf"), setting, f))
        rows.append(
            [
                f"{setting['headroom']:g}",
                f"{setting['drain_s']:g}",
                f"{setting['scale_down_after_s']:g}",
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
        )
    hours, best, _figures = min(runs, key=lambda r: r[0])
    demanded = float(runs[0][2]["demanded_gpu_hours"])
    ratio = hours / demanded
    answer = f"Best: {best}." if hours < float("inf") else "No setting qualified."
    checks = [
        Check("smallest qualifying fleet", hours, "GPU-hours", "none", None),
        Check("lower bound", demanded, "GPU-hours", "none", None),
        Check(
            "ratio to the lower bound",
            ratio,
            "x",
            f"<= {TARGET_RATIO:g} x",
            ratio <= TARGET_RATIO,
        ),
    ]
    md = [
        f"The default traffic at {args.jobs:,} jobs a day (5x peak, 25/60/15 paid/free/batch), "
        "simulated with the Reelgen policy on an autoscaled fleet of 8-GPU hosts (180 s to "
        f"provision) starting from {start:,} GPUs, for each autoscaler setting below "
        f"(`bench/fleet_size.py --jobs {args.jobs}`). Qualifies: paid p95 wait <= "
        f"{PAID_P95_S:g} s and free p99 wait <= {FREE_P99_S / 60:g} min. Lower bound: the "
        f"GPU-seconds demanded over a day ({demanded:,.0f} GPU-hours). {answer}",
        "",
        table(
            [
                "headroom",
                "drain s",
                "scale down after s",
                "GPU-hours",
                "x lower bound",
                "utilization",
                "paid p95 s",
                "free p99 s",
                "batch p99 s",
                "batch on time",
                "qualifies",
                "wall s",
            ],
            rows,
        ),
        "",
        checks_table(checks),
    ]
    title = f"Fleet size: the smallest fleet at {args.jobs:,} jobs a day"
    return emit(args, title, "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
