"""What the diffusers adapters (Wan, LTX-Video, CogVideoX) share: the adapter's frame
(`PipelineModel`: loading a pipeline once from the operator's directory, the device lock,
pricing), a checkpoint of their own denoising loop (the latents and the scheduler's
mutable state, in torch's safe format, with a fingerprint of the job and the settings),
the size a pipeline runs a job at, and the decoded video turned into the job's frames.
Torch and diffusers are imported only when a pipeline loads or runs."""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from reelgen.models.base import Conditioning, GenerationSpec
from reelgen.scheduler.cost import CostModel


class PipelineSettings(Protocol):
    """The registry settings every diffusers adapter has."""

    @property
    def path(self) -> Path | None: ...
    @property
    def steps(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def fps(self) -> int: ...
    @property
    def cost(self) -> CostModel | None: ...
    @property
    def styles(self) -> frozenset[str]: ...
    @property
    def enable_vae_tiling(self) -> bool: ...
    @property
    def cpu_offload(self) -> bool: ...
    @property
    def compile(self) -> bool: ...
    @property
    def sizes(self) -> frozenset[str]: ...
    @property
    def max_seconds(self) -> int: ...
    @property
    def edit_strength(self) -> float: ...


C = TypeVar("C", bound=PipelineSettings)


class PipelineModel(Generic[C]):
    """A `VideoModel` over a diffusers pipeline directory, less its denoising loop."""

    accepts: frozenset[Conditioning] = frozenset()
    requires: frozenset[Conditioning] = frozenset()
    rough_step_s: ClassVar[tuple[float, int]]
    """(seconds per step, at this many pixels times frames): the price of a clip when no
    cost model was measured for the model (linear in both, as the attention is not)."""

    def __init__(self, name: str, config: C):
        self.name = name
        self.config = config
        self.styles = config.styles
        self.fps = config.fps
        self.sizes = config.sizes
        self.max_seconds = config.max_seconds
        self.pipe: Any = None
        self._host: HostWeights | None = None
        self._parked = False
        self._loading = threading.Lock()
        self._device = threading.Lock()
        """Held by each denoising step and by a decode: the finishing thread's VAE decode and
        the next job's steps take turns on the device (CPU offload moves modules between
        them, and two at once would need both peaks of memory)."""

    def pipeline_class(self) -> str:
        """The diffusers class the directory holds."""
        raise NotImplementedError

    def load(self) -> None:
        """From disk once per process (workers of one process share the pipeline); after
        `park`, from the host copy."""
        with self._loading:
            if self._parked and self._host is not None:
                self._host.to_device(self.config.device)
                self._parked = False
            if self.pipe is None:
                cfg = self.config
                if cfg.compile and cfg.cpu_offload:
                    raise ValueError(
                        f"{self.name}: compile needs the pipeline resident on the device; "
                        "turn cpu_offload off"
                    )
                pipe = load_pipeline(
                    self.name, cfg.path, self.pipeline_class(), dtype=cfg.dtype,
                    device=cfg.device, cpu_offload=cfg.cpu_offload,
                    vae_tiling=cfg.enable_vae_tiling,
                )  # fmt: skip
                if cfg.compile:
                    _compile(pipe)
                self.pipe = pipe

    def park(self) -> None:
        """The weights to host memory, pinned on CUDA: copied there the first time, and as
        they never change, a later park only drops the device's copy. A CPU-offloaded
        pipeline already keeps its modules in host memory between uses: nothing moves."""
        with self._loading, self._device:  # not under a step or a decode
            if self.pipe is None or self.config.cpu_offload or self._parked:
                return
            if self._host is None:
                self._host = HostWeights.of(self.pipe, pin=self.config.device.startswith("cuda"))
            self._host.to_host()
            self._parked = True

    def num_steps(self, spec: GenerationSpec) -> int:
        return self.config.steps - self._skipped(spec)

    def _skipped(self, spec: GenerationSpec) -> int:
        """Where an edit joins the schedule (0: from pure noise); it runs one step at least.
        Only adapters that accept `Conditioning.VIDEO` are given a source clip."""
        if spec.source_video is None:
            return 0
        return edit_start(self.config.steps, self.config.edit_strength)

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        cost, steps = self.config.cost, self.num_steps(spec)
        if cost is None:
            per_step, volume = self.rough_step_s
            return steps * per_step * spec.width * spec.height * spec.num_frames / volume
        return cost.wall_seconds(spec.width, spec.height, spec.num_frames, steps=steps)


_STATE_TYPES = (int, float, bool, list, tuple, type(None))


class HostWeights:
    """A host-memory copy of every parameter and buffer of a pipeline's modules (a tensor
    two modules share is copied once and stays shared), which the modules are pointed at
    to park them and copied back from to load them. The `Parameter` objects stay the
    same: only their data moves, so a compiled module keeps its graphs."""

    def __init__(self, hosts: list[Any], slots: list[tuple[dict[str, Any], str, int, bool]]):
        self.hosts = hosts
        self.slots = slots
        """(a module's parameter or buffer table, the name in it, which host tensor, whether
        it is a parameter)"""

    @classmethod
    def of(cls, pipe: Any, *, pin: bool) -> HostWeights:
        import torch

        index: dict[int, int] = {}
        hosts: list[Any] = []
        slots: list[tuple[dict[str, Any], str, int, bool]] = []
        for component in pipe.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for module in component.modules():
                for table, is_param in ((module._parameters, True), (module._buffers, False)):
                    for key, tensor in table.items():
                        if tensor is None:
                            continue
                        k = index.setdefault(id(tensor), len(hosts))
                        if k == len(hosts):
                            copy = torch.empty_like(tensor, device="cpu", pin_memory=pin)
                            hosts.append(copy.copy_(tensor.detach()))
                        slots.append((table, key, k, is_param))
        return cls(hosts, slots)

    def to_host(self) -> None:
        self._point(self.hosts)

    def to_device(self, device: str) -> None:
        import torch

        copies = [t.to(device, non_blocking=True) for t in self.hosts]
        self._point(copies)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)  # the switch's time is the copy's

    def _point(self, tensors: list[Any]) -> None:
        for table, key, k, is_param in self.slots:
            if is_param:
                table[key].data = tensors[k]
            else:
                table[key] = tensors[k]


def _compile(pipe: Any) -> None:
    """`torch.compile` on the denoiser(s), the part that runs every step; the first job of
    each size pays the compilation."""
    import torch

    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            setattr(pipe, name, torch.compile(module))


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
    *,
    member: int | None = None,
) -> bytes:
    """The latents and the scheduler's mutable state after `step` (UniPC keeps its previous
    model outputs and order; flow-matching Euler its step index), and what else the loop
    carries between steps (`extra`: CogVideoX's previous prediction and its generator).
    `member`: one clip of a batched run, saved as the checkpoint of a run of that clip
    alone (its latents, and its part of the scheduler's per-clip tensors)."""
    import torch

    state = _scheduler_state(scheduler)
    if member is not None:
        state = {key: _members(v, latents.shape, [member]) for key, v in state.items()}
        latents = latents[member : member + 1]
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


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    import torch

    return {
        key: value
        for key, value in vars(scheduler).items()
        if not key.startswith("_internal")
        and (torch.is_tensor(value) or isinstance(value, _STATE_TYPES))
    }


def keep_members(scheduler: Any, shape: tuple[int, ...], keep: list[int]) -> None:
    """Narrows a batched run's scheduler to the clips in `keep` (the others left the run):
    its tensors of the batch's latents' `shape` (UniPC's previous outputs and sample) hold
    one row per clip."""
    for key, value in _scheduler_state(scheduler).items():
        narrowed = _members(value, shape, keep)
        if narrowed is not value:
            setattr(scheduler, key, narrowed)


def _members(value: Any, shape: tuple[int, ...], keep: list[int]) -> Any:
    import torch

    if torch.is_tensor(value):
        return value[keep] if tuple(value.shape) == tuple(shape) else value
    if isinstance(value, list | tuple):
        items = [_members(v, shape, keep) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    return value


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


def clip_pixels(pipe: Any, path: Path, height: int, width: int, frames: int, fps: int) -> Any:
    """A clip as a pipeline's video processor prepares one: `frames` frames read at `fps`
    and this size (the last repeated when it is shorter), (1, C, F, H, W) in [-1, 1]."""
    from PIL import Image

    from reelgen.media.decode import read_frames

    clip = [Image.fromarray(f) for f in read_frames(path, width, height, frames, fps=fps)]
    return pipe.video_processor.preprocess_video(clip, height=height, width=width)


def edit_start(steps: int, strength: float) -> int:
    """The step an edit joins a schedule of `steps` at, running `strength` of it, as the
    video-to-video pipelines' `get_timesteps` do; one step runs at least."""
    return min(max(steps - int(steps * strength), 0), steps - 1)


def rounded(spec: GenerationSpec, h_unit: int, w_unit: int, t_unit: int) -> tuple[int, int, int]:
    """(height, width, frames) a pipeline runs the job at: sizes rounded down to what its VAE
    and patches divide, frames up to `t_unit * k + 1` (the extra ones are dropped)."""
    height = max(h_unit, spec.height // h_unit * h_unit)
    width = max(w_unit, spec.width // w_unit * w_unit)
    frames = math.ceil(max(0, spec.num_frames - 1) / t_unit) * t_unit + 1
    return height, width, frames
