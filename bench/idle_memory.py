"""Idle memory of `reelgen serve` (default: 1 worker): VmRSS and VmHWM from /proc/PID/status.

Read once ready + 5 s idle (the target), then after one small job has run (information).
"""

from __future__ import annotations

import sys
import time

from _common import (
    Check,
    Server,
    bench_args,
    check_max,
    checks_table,
    child_pids,
    emit,
    fmt,
    log,
    proc_status,
    table,
)

TARGET_MB = 250.0
SMALL = {"prompt": "a small blue square drifting", "seconds": "1", "size": "64x64"}


def mb(kib: int) -> float:
    return kib * 1024 / 1e6


def mib(kib: int) -> float:
    return kib / 1024


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()

    with Server(workers=1, keep=args.keep) as server:
        log(f"idle for {args.idle_seconds:.0f} s")
        time.sleep(args.idle_seconds)
        idle = proc_status(server.pid)
        children = child_pids(server.pid)
        with server.client() as http:
            video = http.post("/v1/videos", json=SMALL).json()
            deadline = time.monotonic() + 60
            while video["status"] not in ("completed", "failed") and time.monotonic() < deadline:
                time.sleep(0.05)
                video = http.get(f"/v1/videos/{video['id']}").json()
        log(f"small job {video['status']}")
        time.sleep(1.0)
        after = proc_status(server.pid)
        startup = server.startup_seconds

    rss = mb(idle.get("VmRSS", 0))
    checks = [
        check_max("VmRSS idle, 1 worker", rss, "MB", TARGET_MB),
        Check("VmRSS after one 64x64 job", mb(after.get("VmRSS", 0)), "MB", "none", None),
    ]
    rows = [
        [
            f"ready + {args.idle_seconds:.0f} s idle",
            f"{fmt(rss, 1)} MB ({fmt(mib(idle.get('VmRSS', 0)), 1)} MiB)",
            f"{fmt(mb(idle.get('VmHWM', 0)), 1)} MB",
            str(idle.get("Threads", "?")),
        ],
        [
            f"after one 64x64 1 s job ({video['status']})",
            f"{fmt(mb(after.get('VmRSS', 0)), 1)} MB ({fmt(mib(after.get('VmRSS', 0)), 1)} MiB)",
            f"{fmt(mb(after.get('VmHWM', 0)), 1)} MB",
            str(after.get("Threads", "?")),
        ],
    ]
    md = [
        "`reelgen serve` with its defaults (1 in-process worker, which loads the reference model "
        f"at start), started, ready after {fmt(startup, 1)} s, then left idle; the numbers are "
        "`VmRSS` (resident now) and `VmHWM` (peak resident) of the server process from "
        "`/proc/PID/status`. MB = 10^6 bytes.",
        "",
        table(["when", "VmRSS", "VmHWM", "threads"], rows),
        "",
        f"Child processes of the server: {len(children)}.",
        "",
        checks_table(checks),
    ]
    return emit(args, "Idle memory", "\n".join(md), checks)


if __name__ == "__main__":
    sys.exit(main())
