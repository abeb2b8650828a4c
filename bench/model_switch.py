"""One worker serving two models: how often it switches and how busy its device stays.

Two test models share one simulated device (`worker_pipeline.SimulatedDevice`: steps that
sleep, releasing the GIL, decode and encode on the CPU), and loading a parked one holds the
device for `--switch-s` (0.5 s: a 14B model from pinned host memory,
`model_switch_h200.jsonl`). One in-process platform (API, controller with the live
dispatcher, one worker serving both, SQLite) is given a backlog of jobs whose models
alternate in submission order. Reported: the switches the policy made, and the shares of
the span from the first step to the last step that went to steps, to switches and to
nothing.

The simulated decode runs on the CPU, so a switch does not wait for it. A GPU model's VAE
decode holds the device (its lock), and the worker parks that model only once the decode
has run (`Clip.decoded`); without a switch the next job's steps wait for the same lock, so
the decode costs a switch no extra device time.
"""

from __future__ import annotations

from _common import Check, bench_args, check_max, checks_table, emit, fmt, log, table
from _inprocess import platform_serving, wait_all
from worker_pipeline import SimulatedDevice

BODY = {"prompt": "a lighthouse at dusk, waves", "seconds": "2", "size": "1280x720"}
TARGET_SHARE = 0.98


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-s", type=float, default=0.15)
    parser.add_argument("--switch-s", type=float, default=0.5)
    args = parser.parse_args()

    busy: list[tuple[float, float]] = []
    switches: list[tuple[float, float]] = []
    models = [
        SimulatedDevice(
            args.steps, args.step_s, name=name, switch_s=args.switch_s, busy=busy,
            switches=switches,
        )
        for name in ("model-a", "model-b")
    ]  # fmt: skip
    serving = platform_serving(
        models,  # type: ignore[arg-type]
        keep=args.keep,
        paid_max_concurrent=1000,
        paid_max_per_day=100_000,
    )
    with serving as http:
        ids = [
            http.post("/v1/videos", json={**BODY, "model": models[k % 2].name}).json()["id"]
            for k in range(args.jobs)
        ]
        log(f"{len(ids)} jobs queued, their models in turn")
        ended = wait_all(http, ids, 60 + args.jobs * (args.steps * args.step_s + 1) * 3)
    completed = sum(1 for video, _at in ended.values() if video["status"] == "completed")
    during = [s for s in switches if s[0] >= busy[0][0]]  # after the start-up loads
    span = busy[-1][1] - busy[0][0]
    stepping = sum(end - start for start, end in busy) / span
    switching = sum(end - start for start, end in during) / span
    idle = 1.0 - stepping - switching
    log(f"{len(during)} switches; steps {stepping:.4f}, switches {switching:.4f}")
    gaps = sorted((busy[k + 1][0] - busy[k][1], busy[k][1]) for k in range(len(busy) - 1))
    log(f"largest gaps {[(round(g, 3), round(at - busy[0][0], 2)) for g, at in gaps[-4:]]}")
    log(f"switches at {[(round(a - busy[0][0], 2), round(b - a, 3)) for a, b in during]}")
    rows = [
        [
            str(args.jobs),
            str(completed),
            f"{args.steps} x {args.step_s:g} s",
            fmt(args.switch_s, 2),
            str(len(during)),
            fmt(span, 1),
            f"{stepping:.2%}",
            f"{switching:.2%}",
            f"{idle:.2%}",
        ]
    ]
    checks = [
        Check(
            "device share in steps, two models in turn",
            100 * stepping,
            "%",
            f">= {100 * TARGET_SHARE:g} %",
            stepping >= TARGET_SHARE,
        ),
        check_max("switches for a backlog of two models", float(len(during)), "switches", 1.0),
        check_max("jobs not completed", float(len(ids) - completed), "jobs", 0.0),
    ]
    md = [
        __doc__ or "",
        table(
            [
                "jobs",
                "completed",
                "device steps per job",
                "switch s",
                "switches",
                "span s",
                "steps",
                "switching",
                "idle",
            ],
            rows,
        ),
        "",
        checks_table(checks),
    ]
    return emit(args, "Two models on one worker: switches", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
