"""Output moderation of a 4-second 720p clip on this machine's CPUs: the reference model
renders a 1280x720, 4 s, 24 fps clip; its frames stream through the sampler (as they do on
their way to the encoder: one a second plus scene cuts, downscaled), then the image checks
(OpenCV faces, NudeNet nudity when the `nudity` extra is installed) and the audio analysis
run. Timed: the sampler's share of the stream (the frames themselves are the model's) and
the checks after it; their sum is what moderation adds to a job.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from _common import bench_args, check_max, checks_table, emit, fmt, log, table

from reelgen.models.base import GenerationSpec
from reelgen.models.registry import build_model
from reelgen.platform import build_output_moderator
from reelgen.safety.output import FrameSampler
from reelgen.settings import Settings

TARGET_S = 2.0


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), reference_steps=4)
        moderator = build_output_moderator(settings)
        model = build_model("reference", settings)
        spec = GenerationSpec(
            prompt="a lighthouse on a cliff at dusk, waves below", seconds=4, width=1280,
            height=720, seed=7,
        )  # fmt: skip
        rows, totals = [], []
        for run in range(args.runs):
            clip = model.generate(spec, lambda _info: None)
            frames = list(clip.frames)
            sampler = FrameSampler(clip.fps)
            t0 = time.perf_counter()
            for _ in sampler.tee(iter(frames)):
                pass
            sample_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            verdict = moderator.check(
                sampler.samples, clip.audio, clip.sample_rate, prompt=spec.prompt
            )
            check_s = time.perf_counter() - t0
            totals.append(sample_s + check_s)
            log(
                f"run {run + 1}: sampling {sample_s:.3f} s, checks {check_s:.3f} s "
                f"({verdict.action})"
            )
            rows.append(
                [
                    str(run + 1),
                    str(len(frames)),
                    str(len(sampler.samples)),
                    fmt(sample_s, 3),
                    fmt(check_s, 3),
                    fmt(sample_s + check_s, 3),
                    verdict.action.value,
                ]
            )
    checks = [
        check_max(
            "output moderation, 4 s 720p clip, median", statistics.median(totals), "s", TARGET_S
        ),
        check_max("output moderation, 4 s 720p clip, max", max(totals), "s", TARGET_S),
    ]
    md = [
        __doc__.split("\n\n", 1)[0].strip() if __doc__ else "",
        "",
        f"Checks: `{moderator.version}`.",
        "",
        table(["run", "frames", "samples", "sampling s", "checks s", "total s", "verdict"], rows),
        "",
        checks_table(checks),
    ]
    return emit(args, "Output moderation of a 4 s 720p clip", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
