"""GPU smoke benchmark: a realistic-size, random-weight Wan 1.3B-shaped model through the real
worker loop, on one GPU, in under 5 minutes.

Builds the pipeline in memory (the Wan 2.1 1.3B transformer's shape: 30 layers, 12 heads of
128, FFN 8,960; the Wan VAE at its real size; a 2-layer UMT5 text encoder of the real width,
since the text encoder runs once per job), runs an in-process platform (API, controller, one
worker, SQLite) and gives it a backlog of jobs at once. Measures seconds per denoising step,
the VAE decode, submit-to-completed per clip, and the device's idle gap between consecutive
jobs (from the steps' own timestamps, and from `nvidia-smi` utilization samples when
present), a multi-model worker's switch on it (park to pinned host memory, load back), and
what a batch of small previews saves (`generate_batch` against one run per clip, beside the
cost model's prediction for the forwards).
`--tiny` runs the same on the CPU with a tiny pipeline (a check of the script).

Needs the diffusers extra (`make setup-diffusers`, or torch with CUDA plus
`pip install 'reelgen[diffusers]'`).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

from _common import Check, bench_args, checks_table, emit, fmt, log, table
from _inprocess import platform_serving, wait_all

from reelgen.models.base import Clip, GenerationSpec, StepCallback, StepInfo
from reelgen.models.wan import WanConfig, WanModel
from reelgen.models.wan_random import random_pipeline
from reelgen.scheduler.cost import latent_tokens, measured_models


class Timed(WanModel):
    """The Wan adapter, recording when each step and each decode ran."""

    def __init__(self, pipe: Any, config: WanConfig, device: str):
        super().__init__("reference", config)  # the name the bench's worker serves
        self.pipe = pipe
        self.device = device
        self.steps_at: list[tuple[float, float]] = []
        self.decodes: list[float] = []

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        last = [time.monotonic()]

        def timed(info: StepInfo) -> None:
            self._sync()
            now = time.monotonic()
            self.steps_at.append((last[0], now))
            on_step(info)
            last[0] = time.monotonic()

        return super().generate(spec, timed, resume_from)

    def decode(self, latents: Any) -> Any:
        started = time.monotonic()
        video = super().decode(latents)
        self._sync()
        self.decodes.append(time.monotonic() - started)
        return video


def measure_switch(model: Timed) -> dict[str, float]:
    """A multi-model worker's switch on this model: the first park (copying the weights to
    pinned host memory), then a load (host to device) and a park (dropping the device's copy)
    twice; seconds, and the gigabytes moved."""
    timings: dict[str, float] = {}
    for what, call in [
        ("first park s", model.park),
        ("load s", model.load),
        ("park s", model.park),
        ("load again s", model.load),
    ]:
        started = time.monotonic()
        call()
        model._sync()
        timings[what] = time.monotonic() - started
        timings[f"device GB after {what.removesuffix(' s')}"] = _device_gb(model.device)
    host = model._host
    timings["GB"] = sum(t.numel() * t.element_size() for t in host.hosts) / 1e9 if host else 0.0
    return timings


def measure_batch(model: Timed, width: int, height: int, batch: int = 4) -> dict[str, float]:
    """Seconds per clip of `batch` one-second previews run one by one and as one batch (the
    denoising steps; each clip's decode runs alone either way), and the cost model's gain
    for their forwards."""
    specs = [
        GenerationSpec(f"a preview, take {k}", 1, width, height, seed=k, fps=model.fps)
        for k in range(batch)
    ]

    def timed(call: Any) -> float:
        model._sync()
        began = time.monotonic()
        call()
        model._sync()
        return time.monotonic() - began

    def each() -> None:
        for spec in specs:
            WanModel.generate(model, spec, lambda info: None)

    WanModel.generate(model, specs[0], lambda info: None)  # warm: kernels for this shape
    alone = timed(each)
    together = timed(lambda: model.generate_batch(specs, [lambda info: None] * batch))
    cost = measured_models()["1.3B"]
    tokens = latent_tokens(width, height, specs[0].num_frames)
    predicted = batch * cost.forward_s(tokens, 1) / cost.forward_s(tokens, batch)
    return {"alone": alone / batch, "batched": together / batch, "predicted": predicted}


def _device_gb(device: str) -> float:
    """Memory the tensors on the device hold (0 on the CPU)."""
    if not device.startswith("cuda"):
        return 0.0
    import torch

    return float(torch.cuda.memory_allocated()) / 1e9


def sample_gpu(stop: threading.Event, out: list[int]) -> None:
    if shutil.which("nvidia-smi") is None:
        return
    while not stop.is_set():
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        )
        if answer.returncode == 0 and answer.stdout.strip():
            out.append(int(answer.stdout.split()[0]))
        stop.wait(0.1)


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--seconds", default="2")
    parser.add_argument("--tiny", action="store_true", help="a tiny pipeline on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    size = "64x64" if args.tiny else args.size

    started = time.monotonic()
    pipe = random_pipeline("tiny" if args.tiny else "1.3b", device)
    built_s = time.monotonic() - started
    log(f"pipeline built in {built_s:.1f} s on {device}")
    config = WanConfig(
        path=None,
        steps=args.steps,
        device=device,
        dtype="float32" if args.tiny else "bfloat16",
        max_sequence_length=16 if args.tiny else 512,
    )
    model = Timed(pipe, config, device)

    utilization: list[int] = []
    sampling = threading.Event()
    body = {"prompt": "a red boat on the sea at night", "seconds": args.seconds, "size": size}
    submitted: dict[str, float] = {}
    with platform_serving([model], paid_max_concurrent=100) as http:
        threading.Thread(target=sample_gpu, args=(sampling, utilization), daemon=True).start()
        try:
            for _ in range(args.jobs):
                video_id = http.post("/v1/videos", json=body).json()["id"]
                submitted[video_id] = time.monotonic()
            ended = wait_all(http, submitted, 270)
        finally:
            sampling.set()
    switch = measure_switch(model)
    log(f"park and load: {switch}")
    preview_w, preview_h = (64, 64) if args.tiny else (448, 256)
    batched = measure_batch(model, preview_w, preview_h)
    log(f"a batch of 4 previews: {batched}")
    ends = {video_id: at for video_id, (_video, at) in ended.items()}
    statuses = {video_id: video["status"] for video_id, (video, _at) in ended.items()}

    steps = model.steps_at
    per_step = [end - start for start, end in steps]
    gaps = [steps[k + 1][0] - steps[k][1] for k in range(len(steps) - 1)]
    job_gaps = [gaps[k] for k in range(args.steps - 1, len(gaps), args.steps)]
    span = steps[-1][1] - steps[0][0] if steps else float("nan")
    busy = sum(per_step) / span if steps else float("nan")
    e2e = [ends[v] - submitted[v] for v in ends]
    completed = sum(1 for s in statuses.values() if s == "completed")
    rows = [
        [
            device,
            f"{completed} / {args.jobs}",
            f"{size}, {args.seconds} s, {args.steps} steps",
            fmt(statistics.median(per_step), 3) if per_step else "-",
            fmt(statistics.median(model.decodes), 2) if model.decodes else "-",
            fmt(min(e2e), 1) if e2e else "-",
            fmt(max(job_gaps, default=float("nan")) * 1000, 0),
            f"{busy:.1%}",
            f"{statistics.mean(utilization):.0f} %" if utilization else "no nvidia-smi",
            fmt(switch["GB"], 2),
            fmt(switch["first park s"], 2),
            f"{fmt(switch['load s'], 3)} / {fmt(switch['load again s'], 3)}",
            fmt(switch["park s"], 3),
        ]
    ]
    parked, loaded = switch["device GB after park"], switch["device GB after load again"]
    checks = [
        Check("jobs completed", float(completed), "jobs", f"{args.jobs}", completed == args.jobs),
        Check(
            "device memory a parked model leaves",
            parked,
            "GB",
            f"<= 10 % of loaded ({fmt(loaded, 2)} GB)",
            parked <= 0.1 * loaded if device == "cuda" else None,
        ),
        Check(
            "device busy between the first and last step", 100 * busy, "%", ">= 98 %", busy >= 0.98
        ),
        Check(
            "seconds per denoising step, median",
            statistics.median(per_step) if per_step else float("nan"),
            "s",
            "none",
            None,
        ),
    ]
    gain = batched["alone"] / batched["batched"]
    checks.append(
        Check(
            f"a batch of 4 previews ({preview_w}x{preview_h}, 1 s): gain per clip",
            gain,
            "x",
            f"cost model {fmt(batched['predicted'], 2)} x for the forwards",
            None,
        )
    )
    md = [
        __doc__ or "",
        f"Pipeline built in {built_s:.1f} s.",
        "",
        table(
            [
                "device",
                "completed",
                "clip",
                "s per step",
                "VAE decode s",
                "first clip submit -> completed s",
                "max gap between jobs ms",
                "device busy (steps)",
                "GPU utilization (nvidia-smi)",
                "weights GB",
                "first park s",
                "load s (twice)",
                "park s",
            ],
            rows,
        ),
        "",
        f"Previews ({preview_w}x{preview_h}, 1 s, {args.steps} steps): "
        f"{fmt(batched['alone'], 3)} s per clip one by one, {fmt(batched['batched'], 3)} s per "
        f"clip in a batch of 4.",
        "",
        checks_table(checks),
    ]
    return emit(args, "GPU smoke: Wan 1.3B-shaped model through the worker", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
