"""What a simulated day comes to: figures per policy, `report.md`, `report.json` and plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reelgen.domain.jobs import Tier
from reelgen.sim.engine import Result
from reelgen.sim.traffic import TIERS


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else math.nan


def figures(r: Result) -> dict[str, Any]:
    t = r.trace
    wait = r.first_start - t.arrival
    started = ~np.isnan(r.first_start)
    forecast = started & ~np.isnan(r.predicted_wait)
    error = np.abs(r.predicted_wait - wait)
    tiers: dict[str, Any] = {}
    for k, tier in enumerate(TIERS):
        mine = t.tier == k
        w = wait[mine & started]
        e = error[mine & forecast]
        tiers[tier.value] = {
            "jobs": int(mine.sum()),
            "started": int((mine & started).sum()),
            "finished": int((mine & ~np.isnan(r.end)).sum()),
            "wait_p50_s": _pct(w, 50),
            "wait_p95_s": _pct(w, 95),
            "wait_p99_s": _pct(w, 99),
            "wait_max_s": float(w.max()) if w.size else math.nan,
            "eta_error_p50_s": _pct(e, 50),
            "eta_error_p90_s": _pct(e, 90),
        }
    batch = t.tier == TIERS.index(Tier.BATCH)
    on_time = batch & (r.end <= t.arrival + t.deadline_s)
    eta_error = error[forecast]
    gpu_hours = r.capacity_gpu_s / 3600.0
    demanded = float(t.actual_seconds.sum())
    return {
        "policy": r.policy,
        "jobs": len(t),
        "gpus": r.fleet.gpus,
        "simulated_hours": r.horizon_s / 3600.0,
        "wall_seconds": r.wall_s,
        "jobs_per_wall_second": len(t) / r.wall_s if r.wall_s else math.nan,
        "tiers": tiers,
        "gpu_utilization": r.busy_gpu_s / r.capacity_gpu_s if r.capacity_gpu_s else math.nan,
        "gpu_utilization_while_work_waits": (
            r.busy_while_waiting_s / r.capacity_while_waiting_s
            if r.capacity_while_waiting_s
            else math.nan
        ),
        "gpu_hours": gpu_hours,
        "cost_usd": gpu_hours * r.fleet.gpu_hour_usd,
        "demanded_gpu_hours": demanded / 3600.0,
        "lower_bound_gpus": demanded / 86_400.0,
        "preemptions": r.preempted_runs,
        "gpu_seconds_lost": r.lost_gpu_s,
        "crashes": r.crashes,
        "model_switches": r.switches,
        "batch_jobs": int(batch.sum()),
        "batch_deadlines_met": int(on_time.sum()),
        "batch_late": int(batch.sum() - on_time.sum()),
        "eta_error_p50_s": _pct(eta_error, 50),
        "eta_error_p90_s": _pct(eta_error, 90),
        "eta_forecast_share": float(forecast.sum() / started.sum()) if started.any() else math.nan,
    }


def _fmt(value: float, unit: str = "") -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:,.1f}{unit}"


def markdown(all_figures: Sequence[dict[str, Any]], command: str) -> str:
    first = all_figures[0]
    lines = [
        "# Fleet simulation",
        "",
        f"Command: `{command}`",
        "",
        f"{first['jobs']:,} jobs over {first['gpus']:,} GPUs; the lower bound (GPU-seconds "
        f"demanded / 86,400 s) is {first['lower_bound_gpus']:,.0f} GPUs. Waits are from "
        "submit to first start.",
        "",
        "| figure | " + " | ".join(f["policy"] for f in all_figures) + " |",
        "|---|" + "---|" * len(all_figures),
    ]

    def row(name: str, values: Sequence[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    for tier in ("paid", "free", "batch"):
        for q in ("p50", "p95", "p99", "max"):
            row(
                f"{tier} wait {q}",
                [_fmt(f["tiers"][tier][f"wait_{q}_s"], " s") for f in all_figures],
            )
        row(
            f"{tier} ETA error p50 / p90",
            [
                f"{_fmt(f['tiers'][tier]['eta_error_p50_s'], ' s')} / "
                f"{_fmt(f['tiers'][tier]['eta_error_p90_s'], ' s')}"
                for f in all_figures
            ],
        )
        row(
            f"{tier} started / jobs",
            [
                f"{f['tiers'][tier]['started']:,} / {f['tiers'][tier]['jobs']:,}"
                for f in all_figures
            ],
        )
    row("GPU utilization", [f"{f['gpu_utilization']:.1%}" for f in all_figures])
    row(
        "GPU utilization while work waits",
        [f"{f['gpu_utilization_while_work_waits']:.1%}" for f in all_figures],
    )
    row("GPU-hours", [_fmt(f["gpu_hours"]) for f in all_figures])
    row("cost (USD)", [_fmt(f["cost_usd"]) for f in all_figures])
    row("preemptions", [f"{f['preemptions']:,}" for f in all_figures])
    row(
        "GPU-seconds lost (crashes, resume loads)",
        [_fmt(f["gpu_seconds_lost"]) for f in all_figures],
    )
    row("model switches", [f"{f['model_switches']:,}" for f in all_figures])
    row(
        "batch deadlines met",
        [f"{f['batch_deadlines_met']:,} / {f['batch_jobs']:,}" for f in all_figures],
    )
    row(
        "ETA error p50 / p90",
        [
            f"{_fmt(f['eta_error_p50_s'], ' s')} / {_fmt(f['eta_error_p90_s'], ' s')}"
            for f in all_figures
        ],
    )
    row(
        "jobs forecast while queued",
        [f"{f['eta_forecast_share']:.1%}" for f in all_figures],
    )
    row("simulated hours", [_fmt(f["simulated_hours"]) for f in all_figures])
    row("wall time", [_fmt(f["wall_seconds"], " s") for f in all_figures])
    lines += ["", "Plots: " + ", ".join(f"`{name}`" for name in PLOTS), ""]
    return "\n".join(lines)


PLOTS = ("queue_and_fleet.png", "gpu_utilization.png", "wait_cdf.png")


def plots(results: Sequence[Result], out: Path) -> list[str]:
    """Writes the PNG plots; needs matplotlib (`pip install 'reelgen[sim]'`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        hours = np.array(r.samples["t"]) / 3600
        top.plot(hours, r.samples["queued"], label=r.policy)
        bottom.plot(hours, r.samples["fleet"], label=f"{r.policy}: fleet")
        bottom.plot(hours, r.samples["busy"], linestyle=":", label=f"{r.policy}: busy")
    top.set_ylabel("queued jobs")
    bottom.set_ylabel("GPUs")
    bottom.set_xlabel("hour of the day")
    top.legend()
    bottom.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / PLOTS[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    for r in results:
        hours = np.array(r.samples["t"]) / 3600
        busy = np.array(r.samples["busy"], dtype=float)
        fleet = np.maximum(np.array(r.samples["fleet"], dtype=float), 1)
        ax.plot(hours, busy / fleet, label=r.policy)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("GPU utilization")
    ax.set_xlabel("hour of the day")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / PLOTS[1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    for ax, (k, tier) in zip(axes, enumerate(TIERS), strict=True):
        for r in results:
            wait = (r.first_start - r.trace.arrival)[r.trace.tier == k]
            wait = np.sort(wait[~np.isnan(wait)])
            if wait.size:
                ax.plot(
                    np.maximum(wait, 0.1), np.arange(1, wait.size + 1) / wait.size, label=r.policy
                )
        ax.set_xscale("log")
        ax.set_title(f"{tier.value} wait")
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("share of jobs")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / PLOTS[2], dpi=100)
    plt.close(fig)
    return list(PLOTS)


def write(results: Sequence[Result], out: Path, command: str) -> dict[str, Any]:
    """report.md, report.json and (with matplotlib) the plots, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    all_figures = [figures(r) for r in results]
    text = markdown(all_figures, command)
    try:
        written = plots(results, out)
    except ImportError:
        written = []
        text += "\nPlots skipped: matplotlib is not installed (`pip install 'reelgen[sim]'`).\n"
    (out / "report.md").write_text(text)
    doc = {"command": command, "policies": all_figures, "plots": written}
    (out / "report.json").write_text(json.dumps(doc, indent=2, allow_nan=True))
    return doc
