"""Crash recovery on the PostgreSQL fleet, by both detection paths.

A scratch database, one `reelgen controller` and two `reelgen worker` processes; one long
job (1280x720, 8 s, `REELGEN_REFERENCE_STEPS=1000`, a checkpoint every 20 steps) is
submitted. When its "started" event names a worker (A) and it has checkpointed, A is
either SIGKILLed (its database sessions end with the process, so its session marker
vanishes: target <= 3 s) or SIGSTOPped (frozen: its connections stay open, only the lease
can tell: target <= lease + 2 s). Then the job's events are read until a second "started"
event (attempt 2, on the other worker B, with resume_step > 0) and a checkpoint of that
attempt. Recovery = that "started" `.at` - the signal time.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from _common import (
    API_KEY,
    Check,
    bench_args,
    check_max,
    check_true,
    checks_table,
    emit,
    fmt,
    log,
    table,
)
from _pg import Fleet, FleetProc, event_times, pg_server_info, scratch_database, wait_for

STEPS = 1000
CHECKPOINT_EVERY = 20
KILL_TARGET_S = 3.0
FREEZE_SLACK_S = 2.0
BODY = {"prompt": "a neon city at night, slow zoom", "seconds": 8, "size": "1280x720"}


@dataclass
class Recovery:
    mode: str
    """`kill` (SIGKILL) or `freeze` (SIGSTOP)."""
    lease_s: float
    job_id: str = ""
    killed_worker: str = ""
    other_worker: str = ""
    kill_at: float = math.nan
    first_started_at: float = math.nan
    checkpoint_step_at_kill: int = 0
    step_at_kill: int = 0
    lease_expires_at: float = math.nan
    worker_lost_at: float = math.nan
    restarted_at: float = math.nan
    restarted_worker: str = ""
    resume_step: int = -1
    attempt: int = 0
    progressed_to: int = 0
    error: str = ""

    def since_kill(self, at: float) -> float:
        return at - self.kill_at

    @property
    def recovery_s(self) -> float:
        return self.since_kill(self.restarted_at)

    @property
    def target_s(self) -> float:
        return KILL_TARGET_S if self.mode == "kill" else self.lease_s + FREEZE_SLACK_S

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.restarted_worker == self.other_worker
            and self.attempt == 2
            and self.resume_step > 0
        )


def _worker_id(proc: FleetProc) -> str:
    entry = wait_for(lambda: proc.find("worker ready"), 60, f"{proc.name} to be ready")
    return str(entry["worker_id"])


def scenario(mode: str, lease_s: float, keep: bool, timeout_s: float) -> Recovery:
    from reelgen.platform import build_api
    from reelgen.services import videos
    from reelgen.services.accounts import authenticate, ensure_bootstrap_key

    result = Recovery(mode=mode, lease_s=lease_s)
    settings = {
        "REELGEN_REFERENCE_STEPS": str(STEPS),
        "REELGEN_CHECKPOINT_EVERY_STEPS": str(CHECKPOINT_EVERY),
        "REELGEN_LEASE_SECONDS": f"{lease_s:g}",
    }
    with (
        scratch_database(f"crash_{mode}{int(lease_s)}", keep=keep) as url,
        Fleet(url, settings=settings, keep=keep) as fleet,
    ):
        platform = build_api(fleet.platform_settings())
        try:
            ensure_bootstrap_key(platform, create_if_empty=False)
            user = authenticate(platform, API_KEY)
            fleet.controller()
            workers = [fleet.worker(), fleet.worker()]
            ids = {_worker_id(w): w for w in workers}
            time.sleep(1.0)  # both idle, waiting on the bus
            req = videos.CreateVideo(
                prompt=BODY["prompt"], seconds=BODY["seconds"], size=str(BODY["size"])
            )
            job, _ = videos.submit(platform, user, req)
            result.job_id = job.id
            log(f"lease {lease_s:g} s: submitted {job.id}")

            def first_checkpoint() -> Any:
                events = platform.jobs.events_after(job.id)
                started = event_times(events, "started")
                checkpoints = [
                    e for e in event_times(events, "checkpoint") if e.payload.attempt == 1
                ]
                return (started[0], checkpoints[-1]) if started and checkpoints else None

            started, _checkpoint = wait_for(first_checkpoint, 120, "a first checkpoint", 0.02)
            victim_id = str(started.payload.worker_id)
            victim = ids[victim_id]
            result.killed_worker = victim_id
            result.other_worker = next(w for w in ids if w != victim_id)
            result.first_started_at = started.at
            before = platform.jobs.get(job.id)
            assert before is not None
            result.kill_at = time.time()
            if mode == "kill":
                victim.kill()
            else:
                victim.popen.send_signal(signal.SIGSTOP)
            result.checkpoint_step_at_kill = before.checkpoint_step
            result.step_at_kill = before.step
            result.lease_expires_at = before.lease_expires_at or math.nan
            log(
                f"{'SIGKILLed' if mode == 'kill' else 'froze'} {victim.name} ({victim_id}) "
                f"at step {before.step}, checkpoint "
                f"{before.checkpoint_step}; lease ends in "
                f"{result.lease_expires_at - result.kill_at:.1f} s"
            )

            def restarted() -> Any:
                events = platform.jobs.events_after(job.id)
                again = [e for e in event_times(events, "started") if e.payload.attempt >= 2]
                return (events, again[0]) if again else None

            events, again = wait_for(restarted, timeout_s, "the job to start again", 0.02)
            lost = event_times(events, "worker_lost")
            result.worker_lost_at = lost[0].at if lost else math.nan
            result.restarted_at = again.at
            result.restarted_worker = str(again.payload.worker_id)
            result.resume_step = int(again.payload.resume_step)
            result.attempt = int(again.payload.attempt)
            log(
                f"restarted on {result.restarted_worker} {result.recovery_s:.1f} s after the "
                f"kill, from step {result.resume_step}"
            )

            def progressed() -> Any:
                events = platform.jobs.events_after(job.id)
                steps = [
                    int(e.payload.step)
                    for e in event_times(events, "checkpoint")
                    if e.payload.attempt == result.attempt
                ]
                return max(steps) if steps else None

            result.progressed_to = wait_for(progressed, 60, "a checkpoint of attempt 2", 0.05)
            if mode == "freeze":
                victim.popen.send_signal(signal.SIGCONT)
        except (TimeoutError, RuntimeError, KeyError, AssertionError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            log(f"lease {lease_s:g} s: {result.error}")
            for proc in fleet.procs:
                log(f"{proc.name} log tail:\n{proc.tail(10)}")
        finally:
            platform.close()
    return result


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument(
        "--freeze-lease",
        type=float,
        default=10.0,
        help="lease seconds for the frozen-worker run (default 10; the kill run keeps 30)",
    )
    args = parser.parse_args()
    server = pg_server_info()
    runs = [
        scenario("kill", 30.0, args.keep, 120.0),
        scenario("freeze", args.freeze_lease, args.keep, args.freeze_lease + 90.0),
    ]

    checks: list[Check] = []
    rows = []
    for r in runs:
        what = "SIGKILL" if r.mode == "kill" else "SIGSTOP"
        name = f"{what} -> resumed on the other worker, lease {r.lease_s:g} s"
        value = r.recovery_s if r.ok else math.nan
        checks.append(check_max(name, value, "s", r.target_s))
        checks.append(
            check_true(
                f"{what}: resumed from a checkpoint on the other worker",
                r.ok,
                "attempt 2, other worker, resume_step > 0",
            )
        )
        rows.append(
            [
                "SIGKILL" if r.mode == "kill" else "SIGSTOP (frozen)",
                f"{r.lease_s:g} s",
                f"step {r.step_at_kill} (checkpoint {r.checkpoint_step_at_kill})",
                fmt(r.since_kill(r.lease_expires_at)),
                fmt(r.since_kill(r.worker_lost_at)),
                f"**{fmt(r.recovery_s)}**",
                str(r.resume_step),
                "yes" if r.restarted_worker == r.other_worker else f"no ({r.restarted_worker})",
                str(r.progressed_to) if r.progressed_to else "n/a",
                r.error or "—",
            ]
        )
    breakdown = []
    for r in runs:
        breakdown.append(
            [
                "SIGKILL" if r.mode == "kill" else "SIGSTOP (frozen)",
                f"{r.lease_s:g} s",
                fmt(r.since_kill(r.lease_expires_at)),
                fmt(r.worker_lost_at - r.lease_expires_at),
                fmt(r.restarted_at - r.worker_lost_at),
            ]
        )
    markdown = "\n".join(
        [
            f"{server}. One `reelgen controller` (tick every 1 s) and two `reelgen worker` "
            "processes (reference model, heartbeat 5 s and at every checkpoint) on a scratch "
            'database; one job `{"seconds": 8, "size": "1280x720"}` with '
            f"`REELGEN_REFERENCE_STEPS={STEPS}` (the settings' maximum; about 50 s of steps "
            f"on this machine) and `REELGEN_CHECKPOINT_EVERY_STEPS={CHECKPOINT_EVERY}`, "
            "submitted with `services.videos.submit`. Once its `started` event named a worker "
            "and it had checkpointed, that worker was SIGKILLed (the kill run, lease 30 s) or "
            "SIGSTOPped (the freeze run); times below are seconds after the signal, from "
            "the job's events (`JobStore.events_after`, platform clock) and its "
            "row (`lease_expires_at` read just before the kill).",
            "",
            table(
                [
                    "signal",
                    "lease",
                    "signalled at",
                    "lease expired at s",
                    "`worker_lost` at s",
                    "2nd `started` at s",
                    "resume_step",
                    "on the other worker",
                    "attempt 2 checkpointed step",
                    "problem",
                ],
                rows,
            ),
            "",
            "Where the time goes. SIGKILL: the server ends the dead process's sessions at "
            "once, so its advisory-lock session marker is gone; the leading controller "
            "(tick 1 s) requeues after the marker has been missing for 1 s (a grace that "
            "spares workers that are only reconnecting), with no backoff because the attempt "
            "had checkpointed past where it began; worker B is woken by NOTIFY. SIGSTOP: the "
            "frozen process keeps its connections, so only the lease (renewed every 5 s by "
            "the worker's lease keeper) can tell: expiry, then the controller's next tick.",
            "",
            table(
                [
                    "signal",
                    "lease",
                    "kill -> lease expiry s",
                    "expiry -> `worker_lost` s",
                    "`worker_lost` -> 2nd `started` s",
                ],
                breakdown,
            ),
            "",
            checks_table(checks),
        ]
    )
    return emit(
        args, "Crash recovery: worker killed or frozen -> resumed elsewhere", markdown, checks
    )


if __name__ == "__main__":
    sys.exit(main())
