"""Which model adapters this installation serves and how to build each: the shipped
registry (`registry.toml`: the reference model and the diffusers back-ends with their
defaults) and the remote models of `REELGEN_REMOTE_MODELS` (inference services that speak
Cog's HTTP API). Building an adapter loads nothing; `load` does, on the worker."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from reelgen.domain.jobs import MAX_SECONDS, MIN_SECONDS, SIZES
from reelgen.models.base import VideoModel
from reelgen.settings import Settings

ADAPTERS = frozenset({"reference", "wan", "ltx", "cogvideox"})


@cache
def registry() -> Mapping[str, Mapping[str, Any]]:
    """The shipped entries by model name (read once)."""
    text = resources.files("reelgen.models").joinpath("registry.toml").read_text("utf-8")
    entries = tomllib.loads(text)
    for name, entry in entries.items():
        if entry.get("adapter") not in ADAPTERS:
            raise ValueError(f"registry.toml: {name} has no known adapter ({entry.get('adapter')})")
    return entries


def available(settings: Settings) -> tuple[str, ...]:
    """Every adapter name this installation could build."""
    return (*registry(), *sorted(settings.remote_models))


def served(settings: Settings) -> tuple[str, ...]:
    """The adapters the API offers: the default model, those public names map to, and the
    remote models."""
    wanted = {settings.default_model, *settings.model_names.values(), *settings.remote_models}
    return tuple(name for name in available(settings) if name in wanted)


def needs_weights(name: str, settings: Settings) -> bool:
    """Whether the adapter loads weights from a directory (not the reference renderer, not
    a remote service)."""
    entry = registry().get(name)
    return (
        name not in settings.remote_models
        and entry is not None
        and (entry["adapter"] != "reference")
    )


def build_model(name: str, settings: Settings, *, path: Path | None = None) -> VideoModel:
    """The adapter for `name`, unloaded; `path`: its weights (default REELGEN_MODEL_PATH)."""
    remote = settings.remote_models.get(name)
    if remote is not None:
        return _cog(name, settings)
    entry = registry().get(name)
    if entry is None:
        raise ValueError(f"Unknown model {name!r}; available: {', '.join(available(settings))}")
    if entry["adapter"] == "reference":
        from reelgen.models.reference import ReferenceModel

        return ReferenceModel(steps=settings.reference_steps)
    if entry["adapter"] == "ltx":
        return _ltx(name, entry, path or settings.model_path)
    if entry["adapter"] == "cogvideox":
        return _cogvideox(name, entry, path or settings.model_path)
    return _wan(name, entry, path or settings.model_path)


def _wan(name: str, entry: Mapping[str, Any], path: Path | None) -> VideoModel:
    from reelgen.models.wan import WanConfig, WanModel
    from reelgen.scheduler.cost import measured_models

    known = {"adapter", "steps", "guidance_scale", "guidance_scale_2", "fps", "dtype",
             "max_sequence_length", "cost_class", "negative_prompt", "cpu_offload",
             "vae_tiling", "device", "compile", "task", "edit_strength", "sizes",
             "max_seconds"}  # fmt: skip
    _known_keys(name, entry, known)
    task = entry.get("task", "t2v")
    if task not in ("t2v", "i2v", "ti2v"):
        raise ValueError(f"registry.toml: {name} has task {task!r}; one of t2v, i2v, ti2v")
    cost = measured_models().get(str(entry.get("cost_class", "")))
    strength = _edit_strength(name, entry)
    return WanModel(
        name,
        WanConfig(
            path=path,
            steps=int(entry.get("steps", 50)),
            guidance_scale=float(entry.get("guidance_scale", 5.0)),
            guidance_scale_2=entry.get("guidance_scale_2"),
            negative_prompt=str(entry.get("negative_prompt", "")),
            max_sequence_length=int(entry.get("max_sequence_length", 512)),
            device=str(entry.get("device", "cuda")),
            dtype=str(entry.get("dtype", "bfloat16")),
            fps=int(entry.get("fps", 16)),
            cost=cost,
            enable_vae_tiling=bool(entry.get("vae_tiling", False)),
            cpu_offload=bool(entry.get("cpu_offload", False)),
            compile=bool(entry.get("compile", False)),
            task=task,
            edit_strength=strength,
            **_shape(name, entry),
        ),
    )


def _ltx(name: str, entry: Mapping[str, Any], path: Path | None) -> VideoModel:
    from reelgen.models.ltx import LtxConfig, LtxModel
    from reelgen.scheduler.cost import measured_models

    known = {"adapter", "steps", "guidance_scale", "guidance_rescale", "fps", "dtype",
             "max_sequence_length", "cost_class", "negative_prompt", "cpu_offload",
             "vae_tiling", "device", "compile", "decode_timestep",
             "decode_noise_scale", "sizes", "max_seconds", "pipeline",
             "image_cond_noise_scale", "edit_strength", "context_frames"}  # fmt: skip
    _known_keys(name, entry, known)
    noise = entry.get("decode_noise_scale")
    pipeline = entry.get("pipeline", "image")
    if pipeline not in ("image", "condition"):
        raise ValueError(f"registry.toml: {name} has pipeline {pipeline!r}; image or condition")
    kind = LtxModel
    if pipeline == "condition":
        from reelgen.models.ltx_condition import LtxConditionModel

        kind = LtxConditionModel
    return kind(
        name,
        LtxConfig(
            path=path,
            steps=int(entry.get("steps", 50)),
            guidance_scale=float(entry.get("guidance_scale", 3.0)),
            guidance_rescale=float(entry.get("guidance_rescale", 0.0)),
            negative_prompt=str(entry.get("negative_prompt", "")),
            max_sequence_length=int(entry.get("max_sequence_length", 128)),
            decode_timestep=float(entry.get("decode_timestep", 0.0)),
            decode_noise_scale=float(noise) if noise is not None else None,
            device=str(entry.get("device", "cuda")),
            dtype=str(entry.get("dtype", "bfloat16")),
            fps=int(entry.get("fps", 24)),
            cost=measured_models().get(str(entry.get("cost_class", ""))),
            enable_vae_tiling=bool(entry.get("vae_tiling", False)),
            cpu_offload=bool(entry.get("cpu_offload", False)),
            compile=bool(entry.get("compile", False)),
            condition=pipeline == "condition",
            image_cond_noise_scale=float(entry.get("image_cond_noise_scale", 0.15)),
            context_frames=max(1, int(entry.get("context_frames", 17))),
            edit_strength=_edit_strength(name, entry),
            **_shape(name, entry),
        ),
    )


def _cogvideox(name: str, entry: Mapping[str, Any], path: Path | None) -> VideoModel:
    from reelgen.models.cogvideox import CogVideoXConfig, CogVideoXModel
    from reelgen.scheduler.cost import measured_models

    known = {"adapter", "steps", "guidance_scale", "dynamic_cfg", "fps", "dtype",
             "max_sequence_length", "cost_class", "negative_prompt", "cpu_offload",
             "vae_tiling", "device", "compile", "task", "sizes", "max_seconds",
             "edit_strength"}  # fmt: skip
    _known_keys(name, entry, known)
    task = entry.get("task", "t2v")
    if task not in ("t2v", "i2v"):
        raise ValueError(f"registry.toml: {name} has task {task!r}; one of t2v, i2v")
    return CogVideoXModel(
        name,
        CogVideoXConfig(
            path=path,
            steps=int(entry.get("steps", 50)),
            guidance_scale=float(entry.get("guidance_scale", 6.0)),
            dynamic_cfg=bool(entry.get("dynamic_cfg", False)),
            negative_prompt=str(entry.get("negative_prompt", "")),
            max_sequence_length=int(entry.get("max_sequence_length", 226)),
            device=str(entry.get("device", "cuda")),
            dtype=str(entry.get("dtype", "bfloat16")),
            fps=int(entry.get("fps", 8)),
            cost=measured_models().get(str(entry.get("cost_class", ""))),
            enable_vae_tiling=bool(entry.get("vae_tiling", False)),
            cpu_offload=bool(entry.get("cpu_offload", False)),
            compile=bool(entry.get("compile", False)),
            task=task,
            edit_strength=_edit_strength(name, entry),
            **_shape(name, entry),
        ),
    )


def _edit_strength(name: str, entry: Mapping[str, Any]) -> float:
    strength = float(entry.get("edit_strength", 0.7))
    if not 0.0 < strength <= 1.0:
        raise ValueError(
            f"registry.toml: {name} has edit_strength {strength}; it must be in (0, 1]"
        )
    return strength


def _known_keys(name: str, entry: Mapping[str, Any], known: set[str]) -> None:
    unknown = set(entry) - known
    if unknown:
        raise ValueError(f"registry.toml: {name} has unknown keys {sorted(unknown)}")


def _cog(name: str, settings: Settings) -> VideoModel:
    from reelgen.models.cog import DEFAULT_INPUTS, CogConfig, CogModel

    remote = settings.remote_models[name]
    return CogModel(
        name,
        CogConfig(
            url=remote.url.rstrip("/"),
            steps=remote.steps,
            seconds_per_step=remote.seconds_per_step,
            inputs=remote.inputs if remote.inputs is not None else dict(DEFAULT_INPUTS),
            extra_input=remote.extra_input,
            poll_interval_s=remote.poll_interval_s,
            timeout_s=remote.timeout_s,
            webhook_listen=remote.webhook_listen,
            webhook_url=remote.webhook_url,
            polling=remote.polling,
            styles=frozenset(remote.styles),
            **_shape(name, {"sizes": remote.sizes, "max_seconds": remote.max_seconds}),
        ),
    )


def _shape(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """`sizes` and `max_seconds` of an entry, checked against what the API offers (absent:
    all of it)."""
    shape: dict[str, Any] = {}
    sizes = entry.get("sizes")
    if sizes is not None:
        unknown = sorted(set(sizes) - set(SIZES))
        if not sizes or unknown:
            raise ValueError(
                f"{name}: sizes must be a non-empty list of {', '.join(SIZES)}; "
                f"not {unknown or sizes}"
            )
        shape["sizes"] = frozenset(sizes)
    longest = entry.get("max_seconds")
    if longest is not None:
        if not MIN_SECONDS <= int(longest) <= MAX_SECONDS:
            raise ValueError(
                f"{name}: max_seconds must be {MIN_SECONDS} to {MAX_SECONDS}, not {longest}"
            )
        shape["max_seconds"] = int(longest)
    return shape
