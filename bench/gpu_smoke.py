"""GPU smoke benchmark: a realistic-size, random-weight Wan 1.3B-shaped model through the real
worker loop, on one GPU, in under 5 minutes.

Builds the pipeline in memory (the Wan 2.1 1.3B transformer's shape: 30 layers, 12 heads of
128, FFN 8,960; the Wan VAE at its real size; a 2-layer UMT5 text encoder of the real width,
since the text encoder runs once per job), runs an in-process platform (API, controller, one
worker, SQLite) and gives it a backlog of jobs at once. Measures seconds per denoising step,
the VAE decode, submit-to-completed per clip, and the device's idle gap between consecutive
jobs (from the steps' own timestamps, and from `nvidia-smi` utilization samples when
present). `--tiny` runs the same on the CPU with a tiny pipeline (a check of the script).

Needs the diffusers extra (`make setup-diffusers`, or torch with CUDA plus
`pip install 'reelgen[diffusers]'`).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from _common import Check, bench_args, checks_table, emit, fmt, free_port, log, table

from reelgen.api.app import create_app
from reelgen.controller import loop as controller
from reelgen.domain.jobs import Tier
from reelgen.models.base import Clip, GenerationSpec, StepCallback, StepInfo
from reelgen.models.wan import WanConfig, WanModel
from reelgen.platform import build_api, worker_context
from reelgen.services.accounts import create_key
from reelgen.settings import Settings
from reelgen.store.database import upgrade
from reelgen.store.election import leadership_for
from reelgen.worker.runner import Worker

WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "cat",
    "dog",
    "on",
    "in",
    "over",
    "sea",
    "sky",
    "city",
    "night",
    "runs",
    "flies",
    "paper",
    "boat",
]


def build_pipe(*, tiny: bool, device: str) -> Any:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0 - i / 100) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    raw = Tokenizer(models.Unigram(vocab, unk_id=2))
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    dtype = torch.float32 if tiny else torch.bfloat16
    text_dim = 32 if tiny else 4096
    with torch.device(device):
        encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(vocab), d_model=text_dim, d_kv=8 if tiny else 64,
                d_ff=64 if tiny else 10240, num_layers=2, num_heads=4 if tiny else 64,
                relative_attention_num_buckets=8 if tiny else 32, is_encoder_decoder=False,
                pad_token_id=0, eos_token_id=1,
            )
        ).to(dtype)  # fmt: skip
        if tiny:
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                num_layers=2, rope_max_seq_len=32,
            )  # fmt: skip
            vae = AutoencoderKLWan(
                base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True],
            )  # fmt: skip
        else:
            transformer = WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            )  # fmt: skip
            vae = AutoencoderKLWan()
        transformer = transformer.to(dtype)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=encoder, transformer=transformer, vae=vae,
        scheduler=scheduler,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class Timed(WanModel):
    """The Wan adapter, recording when each step and each decode ran."""

    def __init__(self, pipe: Any, config: WanConfig, device: str):
        super().__init__("reference", config)  # the name the bench's worker serves
        self.pipe = pipe
        self.device = device
        self.steps_at: list[tuple[float, float]] = []
        self.decodes: list[float] = []

    def load(self) -> None:
        return None

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
    pipe = build_pipe(tiny=args.tiny, device=device)
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

    root = Path(tempfile.mkdtemp(prefix="reelgen-gpu-smoke-"))
    settings = Settings(data_dir=root, checkpoint_every_steps=1000, paid_max_concurrent=100)
    platform = build_api(settings)
    upgrade(platform.db.engine)
    key = create_key(platform, user_name="bench", tier=Tier.PAID)
    worker = Worker(worker_context(platform, model))
    stop = threading.Event()
    threading.Thread(target=worker.run, daemon=True).start()
    leadership = leadership_for(settings.resolved_database_url(), settings.data_dir)
    threading.Thread(
        target=controller.run_elected, args=(platform, stop, leadership), daemon=True
    ).start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(platform), host="127.0.0.1", port=port, log_level="error")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    utilization: list[int] = []
    sampling = threading.Event()
    threading.Thread(target=sample_gpu, args=(sampling, utilization), daemon=True).start()
    body = {"prompt": "a red boat on the sea at night", "seconds": args.seconds, "size": size}
    ends: dict[str, float] = {}
    submitted: dict[str, float] = {}
    statuses: dict[str, str] = {}
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as http:
            for _ in range(args.jobs):
                video_id = http.post("/v1/videos", json=body).json()["id"]
                submitted[video_id] = time.monotonic()
            deadline = time.monotonic() + 270
            while len(ends) < len(submitted) and time.monotonic() < deadline:
                for video_id in submitted:
                    if video_id in ends:
                        continue
                    video = http.get(f"/v1/videos/{video_id}").json()
                    if video["status"] in ("completed", "failed"):
                        ends[video_id] = time.monotonic()
                        statuses[video_id] = video["status"]
                time.sleep(0.1)
    finally:
        sampling.set()
        server.should_exit = True
        stop.set()
        worker.stop.set()
        platform.bus.wake_workers_local()
        time.sleep(0.5)
        platform.close()
        shutil.rmtree(root, ignore_errors=True)

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
        ]
    ]
    checks = [
        Check("jobs completed", float(completed), "jobs", f"{args.jobs}", completed == args.jobs),
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
            ],
            rows,
        ),
        "",
        checks_table(checks),
    ]
    return emit(args, "GPU smoke: Wan 1.3B-shaped model through the worker", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
