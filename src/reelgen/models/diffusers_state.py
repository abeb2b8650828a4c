"""What the diffusers adapters (Wan, LTX-Video) share: loading a pipeline from the
operator's directory, a checkpoint of their own denoising loop (the latents and the
scheduler's mutable state, in torch's safe format, with a fingerprint of the job and the
settings) and the decoded video turned into the job's frames. Needs the diffusers extra for
all but `job_frames`; imported only by those adapters."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from reelgen.models.base import GenerationSpec

_STATE_TYPES = (int, float, bool, list, tuple, type(None))


def load_pipeline(
    name: str,
    path: Path | None,
    pipeline: str,
    *,
    dtype: str,
    device: str,
    cpu_offload: bool,
    vae_tiling: bool,
) -> Any:
    """The diffusers class `pipeline` from `path`, local files only, on `device` (or with
    its modules offloaded to the CPU between uses)."""
    if path is None:
        raise ValueError(f"{name} needs its weights: --model-path DIR or REELGEN_MODEL_PATH")
    if not (path / "model_index.json").is_file():
        raise ValueError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise RuntimeError(
            f"{name} needs the diffusers extra: pip install torch, then "
            f"pip install 'reelgen[diffusers]' ({exc})"
        ) from exc
    kind = getattr(diffusers, pipeline)
    pipe = kind.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    return pipe


def save(
    fingerprint: str,
    step: int,
    latents: Any,
    scheduler: Any,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The latents and the scheduler's mutable state after `step` (UniPC keeps its previous
    model outputs and order; flow-matching Euler its step index), and what else the loop
    carries between steps (`extra`: CogVideoX's previous prediction and its generator)."""
    import torch

    state = {
        key: value
        for key, value in vars(scheduler).items()
        if not key.startswith("_internal")
        and (torch.is_tensor(value) or isinstance(value, _STATE_TYPES))
    }
    kept = {key: _to(value, "cpu") for key, value in (extra or {}).items()}
    buf = io.BytesIO()
    torch.save(
        {
            "fingerprint": fingerprint,
            "step": step,
            "latents": latents.cpu(),
            "scheduler": state,
            "extra": kept,
        },
        buf,
    )
    return buf.getvalue()


def restore(
    data: bytes, fingerprint: str, scheduler: Any, device: Any, family: str
) -> tuple[int, Any, dict[str, Any]]:
    """(the step it was taken after, the latents on `device`, the loop's `extra` on
    `device`); sets the scheduler's state. Refuses another job's or setting's checkpoint."""
    import torch

    try:
        saved = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(f"not a checkpoint of {family}: {exc}") from exc
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        raise ValueError("the checkpoint belongs to another job or model setting")
    for key, value in saved["scheduler"].items():
        setattr(scheduler, key, _to(value, device))
    extra = {key: _to(value, device) for key, value in saved.get("extra", {}).items()}
    return int(saved["step"]), saved["latents"].to(device), extra


def _to(value: Any, device: Any) -> Any:
    import torch

    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def job_frames(video: np.ndarray, spec: GenerationSpec) -> Iterator[np.ndarray]:
    """A decoded video in [0, 1] (frames, height, width, 3) as exactly the job's frames:
    uint8, at its size (resized when the pipeline ran at a rounded one), the last frame
    repeated or extra ones dropped."""
    from PIL import Image

    for k in range(spec.num_frames):
        frame = video[min(k, len(video) - 1)]
        rgb = (np.clip(frame, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        if rgb.shape[:2] != (spec.height, spec.width):
            resized = Image.fromarray(rgb).resize(
                (spec.width, spec.height), Image.Resampling.BICUBIC
            )
            rgb = np.asarray(resized)
        yield rgb


def rounded(spec: GenerationSpec, h_unit: int, w_unit: int, t_unit: int) -> tuple[int, int, int]:
    """(height, width, frames) a pipeline runs the job at: sizes rounded down to what its VAE
    and patches divide, frames up to `t_unit * k + 1` (the extra ones are dropped)."""
    height = max(h_unit, spec.height // h_unit * h_unit)
    width = max(w_unit, spec.width // w_unit * w_unit)
    frames = math.ceil(max(0, spec.num_frames - 1) / t_unit) * t_unit + 1
    return height, width, frames
