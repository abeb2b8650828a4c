"""GPU-seconds per clip: one cost model for scheduling, quotas, ETAs and the simulator.

A diffusion transformer spends its time in denoising forwards; a forward over a batch of
clips costs a fixed part (kernel launches, small ops) plus, per clip, a part linear in the
clip's latent tokens (projections, MLPs) and a part quadratic in them (attention):

    forward(T, b) = fixed + b * (linear * T + quadratic * T**2)

A clip takes `steps` forwards (twice that with classifier-free guidance), then one VAE decode
linear in its pixels. The coefficients are fitted to measurements (`measurements/`, one
H200), not looked up, so sizes that were never measured are estimated too. Batching pays only
where `fixed` is a large share of a forward: small clips, never full-size ones.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 16
"""The VAE's 8x spatial compression times the transformer's 2x2 patch."""


def latent_tokens(width: int, height: int, frames: int) -> int:
    """Tokens a Wan-style DiT attends over for one clip."""
    latent_frames = (max(1, frames) - 1) // TEMPORAL_COMPRESSION + 1
    return (height // SPATIAL_COMPRESSION) * (width // SPATIAL_COMPRESSION) * latent_frames


@dataclass(frozen=True, slots=True)
class CostModel:
    """What one model class costs on one GPU type; see the module docstring."""

    fixed_s: float
    linear_s: float
    """Seconds per token per clip per forward."""
    quadratic_s: float
    """Seconds per token squared per clip per forward."""
    decode_s_per_pixel_frame: float
    steps: int = 50
    guidance: bool = True
    load_s: float = 0.0
    """Bringing the weights onto the GPU from pinned host memory (a planned switch)."""
    load_cold_s: float = 0.0
    """The same from local disk (a worker's first load)."""
    parallel_overhead: float = 0.036
    """Per extra GPU in sequence/CFG parallel runs: k GPUs run a clip at
    1 / (k * (1 + overhead * (k - 1))) of its one-GPU time (Wan 14B 720p: 1,838 s on one
    GPU, 288 s on eight)."""

    def forward_s(self, tokens: int, batch: int = 1) -> float:
        per_clip = self.linear_s * tokens + self.quadratic_s * tokens * tokens
        return self.fixed_s + batch * per_clip

    def forwards(self, steps: int | None = None) -> int:
        return (self.steps if steps is None else steps) * (2 if self.guidance else 1)

    def gpu_seconds(
        self,
        width: int,
        height: int,
        frames: int,
        *,
        steps: int | None = None,
        batch: int = 1,
        gpus: int = 1,
    ) -> float:
        """GPU-seconds one clip costs (its share of a batch; all of its GPUs' time)."""
        tokens = latent_tokens(width, height, frames)
        denoise = self.forwards(steps) * self.forward_s(tokens, batch) / batch
        decode = self.decode_s_per_pixel_frame * width * height * frames
        return (denoise + decode) * self.parallel_cost(gpus)

    def wall_seconds(
        self,
        width: int,
        height: int,
        frames: int,
        *,
        steps: int | None = None,
        batch: int = 1,
        gpus: int = 1,
    ) -> float:
        """How long the run takes (the whole batch, on `gpus` GPUs at once)."""
        per_clip = self.gpu_seconds(width, height, frames, steps=steps, batch=batch, gpus=gpus)
        return per_clip * batch / gpus

    def parallel_cost(self, gpus: int) -> float:
        """GPU-seconds on `gpus` GPUs over GPU-seconds on one."""
        return 1.0 + self.parallel_overhead * (max(1, gpus) - 1)

    def batch_gain(self, width: int, height: int, frames: int, batch: int) -> float:
        """GPU-seconds of one clip alone over its share of a batch of `batch` (>= 1)."""
        alone = self.gpu_seconds(width, height, frames)
        return alone / self.gpu_seconds(width, height, frames, batch=batch)


def _nonnegative_lstsq(columns: Sequence[Sequence[float]], targets: Sequence[float]) -> list[float]:
    """Least squares with every coefficient >= 0, by trying each subset of free
    coefficients (there are three): the best fit whose solution is feasible."""
    import numpy as np

    a = np.array(columns, dtype=float).T
    y = np.array(targets, dtype=float)
    n = a.shape[1]
    best: tuple[float, list[float]] | None = None
    for size in range(n, 0, -1):
        for free in itertools.combinations(range(n), size):
            # Relative error: a 0.03 s forward matters as much as a 12 s one.
            weights = 1.0 / y
            sub = a[:, free] * weights[:, None]
            solution, *_ = np.linalg.lstsq(sub, y * weights, rcond=None)
            if (solution < 0).any():
                continue
            coef = [0.0] * n
            for i, value in zip(free, solution, strict=True):
                coef[i] = float(value)
            residual = float((((a @ np.array(coef)) - y) * weights) ** 2 @ np.ones(len(y)))
            if best is None or residual < best[0] - 1e-15:
                best = (residual, coef)
    if best is None:
        raise ValueError("no nonnegative fit")
    return best[1]


def fit(
    forwards: Iterable[Mapping[str, Any]],
    decodes: Iterable[Mapping[str, Any]],
    switch: Mapping[str, Any] | None = None,
) -> CostModel:
    """A cost model fitted to one model's `dit_forward` rows, the `vae_decode` rows and
    (optionally) its `model_switch` row, in the shape of the files in `measurements/`."""
    rows = list(forwards)
    if not rows:
        raise ValueError("no forward measurements to fit")
    columns = [
        [1.0 for _ in rows],
        [r["batch"] * r["tokens_per_clip"] for r in rows],
        [r["batch"] * r["tokens_per_clip"] ** 2 for r in rows],
    ]
    fixed, linear, quadratic = _nonnegative_lstsq(columns, [r["sec_per_forward"] for r in rows])
    pixel_frames = [(d["h"] * d["w"] * d["frames"], d["sec"]) for d in decodes]
    decode = sum(s for _, s in pixel_frames) / sum(p for p, _ in pixel_frames)
    model = CostModel(fixed, linear, quadratic, decode)
    if switch is not None:
        model = replace(
            model,
            load_s=float(switch["host_ram_pinned_to_gpu_s"]),
            load_cold_s=float(switch["load_from_disk_s"]),
        )
    return model


def _jsonl(name: str) -> list[dict[str, Any]]:
    text = resources.files("reelgen.scheduler").joinpath("measurements", name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def measured_models() -> dict[str, CostModel]:
    """Cost models fitted to the shipped H200 measurements, by model class ("1.3B", "14B").
    Reads the package's files; call it at start-up, not per request."""
    rows = _jsonl("gpu_cost_h200.jsonl")
    switches = {r["model"]: r for r in _jsonl("model_switch_h200.jsonl")}
    decodes = [r for r in rows if r.get("kind") == "vae_decode"]
    classes = sorted({r["model"] for r in rows if r.get("kind") == "dit_forward"})
    return {
        name: fit(
            [r for r in rows if r.get("kind") == "dit_forward" and r["model"] == name],
            decodes,
            switches.get(name),
        )
        for name in classes
    }


def speedup(model: CostModel, gpus: int) -> float:
    """How much faster a clip runs on `gpus` GPUs than on one."""
    return gpus / model.parallel_cost(gpus) if gpus > 0 else math.nan
