"""Scheduling decisions per second with 100,000 queued jobs and 5,000 workers.

One `scheduler.fairshare.Scheduler` holds 5,000 workers (625 hosts of 8 GPUs, two models,
each worker holding one) and a queue kept at 100,000 jobs (25/60/15 paid/free/batch, 20,000
Zipf users, 2% 8-GPU gangs, 10% batchable previews). After the first round has filled every
GPU, each round ends 100 running jobs, submits as many new ones and asks for decisions; a
decision is one assignment (a job, a batch or a gang, onto its workers).
"""

from __future__ import annotations

import random
import time

from _common import Check, bench_args, checks_table, emit, fmt, log, table

from reelgen.domain.jobs import Tier
from reelgen.scheduler.fairshare import Scheduler
from reelgen.scheduler.view import QueuedJob, WorkerView

TARGET = 2000.0
TIERS = [Tier.PAID] * 25 + [Tier.FREE] * 60 + [Tier.BATCH] * 15
MODELS = ("wan-1.3b", "wan-14b")


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    rng = random.Random(7)
    users = [f"u{i}" for i in range(20_000)]
    weights = [1 / (i + 1) ** 0.8 for i in range(len(users))]
    counter = iter(range(10**9))

    def new_job(now: float) -> QueuedJob:
        tier = rng.choice(TIERS)
        gang = rng.random() < 0.02
        preview = not gang and rng.random() < 0.10
        model = MODELS[1] if gang or rng.random() < 0.15 else MODELS[0]
        return QueuedJob(
            id=f"j{next(counter)}",
            user=rng.choices(users, weights)[0],
            tier=tier,
            model=model,
            gpu_seconds=8 * 190.0 if gang else (2.2 if preview else rng.uniform(17, 320)),
            queued_at=now,
            created_at=now,
            gpus=8 if gang else 1,
            deadline=now + 86_400 if tier is Tier.BATCH else None,
            batch_key=f"{model}:preview" if preview else None,
            batch_gain=1.35 if preview else 1.0,
        )

    s = Scheduler()
    for w in range(args.workers):
        host = w // 8
        s.add_worker(
            WorkerView(f"w{w}", f"h{host}", frozenset(MODELS), MODELS[int(host % 10 == 0)])
        )
    for _ in range(args.queued):
        s.submit(new_job(0.0))
    t0 = time.perf_counter()
    first = s.schedule(1.0)
    fill_s = time.perf_counter() - t0
    log(f"first round: {len(first.assignments)} decisions in {fill_s:.2f} s")
    while s.queued < args.queued:
        s.submit(new_job(1.0))

    decided = 0
    spent = 0.0
    now = 2.0
    for _ in range(args.rounds):
        running = list(s.running)
        for job_id in rng.sample(running, min(100, len(running))):
            s.finished(job_id)
        while s.queued < args.queued:
            s.submit(new_job(now))
        t0 = time.perf_counter()
        decisions = s.schedule(now)
        spent += time.perf_counter() - t0
        decided += len(decisions.assignments)
        now += 1.0
    rate = decided / spent if spent else 0.0
    first_rate = len(first.assignments) / fill_s if fill_s else 0.0
    log(f"steady rounds: {decided} decisions in {spent:.2f} s = {rate:,.0f}/s")
    checks = [
        Check(
            "decisions/s, steady rounds", rate, "decisions/s", f">= {TARGET:.0f}", rate >= TARGET
        ),
        Check("decisions/s, first round (every GPU free)", first_rate, "decisions/s", "none", None),
    ]
    md = [
        __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "",
        table(
            ["round", "decisions", "seconds", "decisions/s"],
            [
                [
                    "first (all GPUs idle)",
                    str(len(first.assignments)),
                    fmt(fill_s, 3),
                    f"{first_rate:,.0f}",
                ],
                [f"{args.rounds} steady rounds", str(decided), fmt(spent, 3), f"{rate:,.0f}"],
            ],
        ),
        "",
        checks_table(checks),
    ]
    return emit(args, "Scheduling policy: decisions per second", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
