"""`reelgen sim`: a simulated day of the fleet under one or several scheduling policies."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

POLICIES = ("fifo", "priority", "reelgen")


def sim(
    out: Annotated[Path, typer.Option(help="Directory for report.md, report.json and plots.")],
    jobs_per_day: Annotated[int, typer.Option(min=1, help="Jobs submitted over the day.")] = (
        5_000_000
    ),
    peak_factor: Annotated[
        float, typer.Option(min=1.0, help="Busiest minute's rate over the mean rate.")
    ] = 5.0,
    gpus: Annotated[
        int, typer.Option(min=1, help="GPUs in the fleet (hosts of 8); with --autoscale, at start.")
    ] = 8192,
    autoscale: Annotated[
        bool, typer.Option(help="Let the autoscaler size the fleet (hosts take --provision-s).")
    ] = False,
    provision_s: Annotated[
        float, typer.Option(min=0.0, help="Boot and first load of a new host, seconds.")
    ] = 180.0,
    policy: Annotated[str, typer.Option(help="fifo, priority, reelgen or all.")] = "reelgen",
    seed: Annotated[int, typer.Option(help="Seed of the traffic and of crashes.")] = 0,
    paid_share: Annotated[float, typer.Option(min=0.0, help="Share of paid jobs.")] = 0.25,
    batch_share: Annotated[float, typer.Option(min=0.0, help="Share of batch jobs.")] = 0.15,
    users: Annotated[int, typer.Option(min=1, help="Distinct users.")] = 1_000_000,
    zipf: Annotated[
        float, typer.Option(min=0.0, help="Heaviness of heavy users (Zipf exponent).")
    ] = 0.8,
    crashes_per_gpu_day: Annotated[
        float, typer.Option(min=0.0, help="Worker crashes per GPU per day.")
    ] = 0.0,
    tick: Annotated[float, typer.Option(min=0.01, help="Seconds between policy rounds.")] = 1.0,
) -> None:
    """Simulate a day of traffic on a GPU fleet and report waits, utilization and cost."""
    from reelgen.domain.jobs import Tier
    from reelgen.scheduler.autoscale import AutoscaleConfig
    from reelgen.scheduler.cost import measured_models
    from reelgen.scheduler.fairshare import Order, PolicyConfig
    from reelgen.sim import report
    from reelgen.sim.engine import FleetConfig, simulate
    from reelgen.sim.traffic import TrafficConfig, generate

    chosen = POLICIES if policy == "all" else (policy,)
    if any(p not in POLICIES for p in chosen):
        raise typer.BadParameter(f"policy must be one of {', '.join(POLICIES)} or all")
    free_share = 1.0 - paid_share - batch_share
    if free_share < 0:
        raise typer.BadParameter("--paid-share and --batch-share add up to more than 1")
    costs = measured_models()
    traffic = TrafficConfig(
        jobs_per_day=jobs_per_day,
        peak_factor=peak_factor,
        tier_mix={Tier.PAID: paid_share, Tier.FREE: free_share, Tier.BATCH: batch_share},
        users=users,
        zipf=zipf,
    )
    trace = generate(traffic, costs, seed=seed)
    fleet = FleetConfig(
        gpus=gpus,
        tick_s=tick,
        crashes_per_gpu_day=crashes_per_gpu_day,
        autoscale=AutoscaleConfig() if autoscale else None,
        provision_s=provision_s,
    )
    results = []
    for name in chosen:
        typer.echo(f"simulating {len(trace):,} jobs on {gpus:,} GPUs with {name} ...")
        result = simulate(trace, fleet, PolicyConfig(order=Order(name)), costs, seed=seed)
        typer.echo(f"  done in {result.wall_s:.1f} s")
        results.append(result)
    command = "reelgen " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report.write(results, out, command)
    typer.echo(f"wrote {out / 'report.md'}")
