"""The worker pipeline: how busy one worker keeps its device under a backlog.

A test model stands in for a GPU model: each of its steps holds a simulated device (a sleep,
which releases the GIL, as a CUDA kernel launch does), and its clip's decode (the reference
model's decoder at 1280x720) and the H.264 encode cost real CPU. One in-process platform
(API, controller, one worker, SQLite) is given a backlog of jobs at once; the device's busy
share is the steps' sleep over the wall time from the first step's start to the last step's
end, and each gap is the time between one job's last step and the next job's first. It runs
twice: with the next job claimed and prepared during the last step (the default), and with
`worker_prefetch` off (claimed once the GPU is free). At most one clip finishes while the
next generates (memory stays bounded), so where decoding and encoding a clip takes the
CPU longer than a job's steps take the device, the device waits for the CPU: the last
column says how long they took on this run's machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from _common import Check, bench_args, check_max, checks_table, emit, fmt, log, table
from _inprocess import platform_serving, wait_all

from reelgen.models.base import Clip, GenerationSpec, StepCallback, StepInfo, made_without_device
from reelgen.models.reference import SAMPLE_RATE, ReferenceModel

TARGET_SHARE = 0.98
BODY = {"prompt": "a lighthouse at dusk, waves", "seconds": "2", "size": "1280x720"}


class SimulatedDevice:
    """`steps` steps of `step_s` seconds of device time each; decoding on the CPU. Loading
    it again after `park` holds the device for `switch_s` (a copy from pinned host memory);
    models of one worker share the `busy` and `switches` logs, as they share its device."""

    def __init__(
        self,
        steps: int,
        step_s: float,
        *,
        name: str = "reference",
        switch_s: float = 0.5,
        busy: list[tuple[float, float]] | None = None,
        switches: list[tuple[float, float]] | None = None,
    ):
        self.inner = ReferenceModel(steps=1)
        self.name, self.styles, self.fps = name, self.inner.styles, self.inner.fps
        self.accepts, self.requires = self.inner.accepts, self.inner.requires
        self.sizes, self.max_seconds = self.inner.sizes, self.inner.max_seconds
        self.steps, self.step_s, self.switch_s = steps, step_s, switch_s
        self.busy = busy if busy is not None else []
        """(start, end) of every step, in time.monotonic()"""
        self.switches = switches if switches is not None else []
        """(start, end) of every load after a park"""
        self.parked = False
        self.streams: list[float] = []
        """Seconds from each clip's first frame read to its last: its decode and encode,
        which take turns frame by frame on the finishing thread."""

    def load(self) -> None:
        self.inner.load()
        if self.parked:
            start = time.monotonic()
            time.sleep(self.switch_s)
            self.switches.append((start, time.monotonic()))
            self.parked = False

    def park(self) -> None:
        self.parked = True

    def num_steps(self, spec: GenerationSpec) -> int:
        return self.steps

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        return self.steps * self.step_s

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        for step in range(1, self.steps + 1):
            start = time.monotonic()
            time.sleep(self.step_s)
            self.busy.append((start, time.monotonic()))
            on_step(StepInfo(step, self.steps, lambda: b""))
        # Decoding (the reference model's one step and its decoder) runs when the frames are
        # read: on the worker's finishing thread, as a real model's VAE decode would.
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=self._decode(spec),
            audio=np.zeros((2, spec.seconds * SAMPLE_RATE), dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            decoded=made_without_device(),  # its decode costs CPU, not the device
        )

    def _decode(self, spec: GenerationSpec) -> Iterator[np.ndarray]:
        start = time.monotonic()
        yield from self.inner.generate(spec, lambda _info: None).frames
        self.streams.append(time.monotonic() - start)


def _run(args: Any, prefetch: bool) -> tuple[list[str], float, float, int, int]:
    """One backlog through a fresh platform; (table row, busy share, mean gap s, jobs,
    completed)."""
    device = SimulatedDevice(args.steps, args.step_s)
    serving = platform_serving(
        [device],  # type: ignore[list-item]
        keep=args.keep,
        paid_max_concurrent=1000,
        paid_max_per_day=100_000,
        worker_prefetch=prefetch,
    )
    with serving as http:
        ids = [http.post("/v1/videos", json=BODY).json()["id"] for _ in range(args.jobs)]
        log(f"{len(ids)} jobs queued (prefetch {'on' if prefetch else 'off'})")
        ended = wait_all(http, ids, 60 + args.jobs * args.steps * args.step_s * 3)
    finished = {video_id: video for video_id, (video, _at) in ended.items()}

    completed = sum(1 for v in finished.values() if v["status"] == "completed")
    busy = device.busy
    per_job = args.steps
    span = busy[-1][1] - busy[0][0]
    held = sum(end - start for start, end in busy)
    share = held / span
    step_gaps = [busy[k + 1][0] - busy[k][1] for k in range(len(busy) - 1)]
    job_gaps = [step_gaps[k] for k in range(per_job - 1, len(step_gaps), per_job)]
    within = [g for k, g in enumerate(step_gaps) if (k + 1) % per_job]
    log(f"busy share {share:.4f}; gaps between jobs {[round(g, 3) for g in job_gaps]}")
    mean_gap = sum(job_gaps) / max(1, len(job_gaps))
    row = [
        "on" if prefetch else "off",
        str(args.jobs),
        str(completed),
        f"{args.steps} x {args.step_s:g} s",
        f"{BODY['size']}, {BODY['seconds']} s",
        fmt(span, 1),
        f"{share:.2%}",
        fmt(max(job_gaps, default=0.0) * 1000, 0),
        fmt(mean_gap * 1000, 1),
        fmt(statistics.median(job_gaps) * 1000 if job_gaps else 0.0, 1),
        fmt(max(within, default=0.0) * 1000, 1),
    ]
    row.append(fmt(sum(device.streams) / max(1, len(device.streams)), 2))
    return row, share, mean_gap, len(ids), completed


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-s", type=float, default=0.15)
    args = parser.parse_args()

    # The first clips a process finishes pay one-off costs (codecs, the output check's
    # models): a short round first, so that neither measured run carries them.
    _run(argparse.Namespace(**{**vars(args), "jobs": 2}), prefetch=True)
    row, share, mean_gap, jobs, completed = _run(args, prefetch=True)
    serial_row, _, serial_gap, serial_jobs, serial_completed = _run(args, prefetch=False)
    rows = [row, serial_row]
    job_s = args.steps * args.step_s
    checks = [
        Check(
            "device busy share under a backlog",
            100 * share,
            "%",
            f">= {100 * TARGET_SHARE:g} %",
            share >= TARGET_SHARE,
        ),
        check_max(
            "jobs not completed",
            float(jobs - completed + serial_jobs - serial_completed),
            "jobs",
            0.0,
        ),
        check_max(
            "mean idle gap between jobs, share of job time", 100 * mean_gap / job_s, "%", 1.0
        ),
        Check(
            "mean idle gap, next job claimed only once the GPU is free",
            100 * serial_gap / job_s,
            "%",
            "none",
            None,
        ),
    ]
    md = [
        __doc__ or "",
        table(
            [
                "claim ahead",
                "jobs",
                "completed",
                "device steps",
                "clip",
                "span s",
                "device busy",
                "max gap between jobs ms",
                "mean gap ms",
                "median gap ms",
                "max gap between steps ms",
                "decode + encode per clip s",
            ],
            rows,
        ),
        "",
        checks_table(checks),
    ]
    return emit(args, "Worker pipeline: device busy share", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
