"""Wan 2.1 / 2.2 text-to-video and image-to-video through diffusers (the `diffusers` extra:
torch, diffusers, transformers), loaded from a local directory the operator downloaded;
nothing is fetched.

The adapter owns the denoising loop (`WanPipeline` takes no `timesteps`, so a run cannot
resume through its `__call__`): the pipeline's own `encode_prompt` and `prepare_latents`,
then per step the transformer (twice with classifier-free guidance; Wan 2.2's second expert
below `boundary_ratio`) and the scheduler's step, exactly as `WanPipeline.__call__` does, so
the same seed gives the same video (a test holds it to the pipeline's own output). After
each step the worker is called back: progress, cancel and preempt raise from there, and a
checkpoint is the latents with the scheduler's state (UniPC keeps the previous model
outputs; flow-matching Euler only its step index), so a resumed run, on any worker, ends
with the same latents as an uninterrupted one. The VAE decode runs when the clip's frames
are read, on the worker's finishing thread.

Image-to-video (`task`): `WanImageToVideoPipeline` directories. Its `prepare_latents` VAE-
encodes the reference image into a condition that each step joins to the latents: beside
them on the channel axis with a first-frame mask (Wan 2.1 I2V, which also feeds the image's
CLIP embedding to the transformer, and Wan 2.2 I2V), or in place of the first latent frame,
whose timestep is zero (Wan 2.2 TI2V, `expand_timesteps`, which also makes videos from text
alone). The reference image conditions the first frame; an extension's is the last frame of
the video it continues.

Edits (text-to-video models): as `WanVideoToVideoPipeline` does, the source clip's latents
(the VAE's mode) are noised to the level of step `(1 - edit_strength) * steps` and only the
rest of the schedule runs, so the clip's layout and motion survive under the new prompt.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reelgen.domain.jobs import MAX_SECONDS, SIZES
from reelgen.models.base import Clip, Conditioning, GenerationSpec, StepCallback, StepInfo
from reelgen.models.diffusers_shared import (
    PipelineModel,
    clip_pixels,
    job_frames,
    keep_members,
    restore,
    rounded,
    save,
)
from reelgen.scheduler.cost import CostModel

_SNAPSHOT_FORMAT = "reelgen-wan-snapshot/1"
SAMPLE_RATE = 48_000


Task = Literal["t2v", "i2v", "ti2v"]
"""t2v: a `WanPipeline`, text only; i2v: a `WanImageToVideoPipeline`, an image required;
ti2v: a `WanImageToVideoPipeline` directory that also makes videos from text alone (Wan 2.2
TI2V-5B: `expand_timesteps`, the image in place of the first latent frame)."""


@dataclass(frozen=True, slots=True)
class WanConfig:
    path: Path | None
    """The pipeline's directory (model_index.json and its components); a worker needs it."""
    steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    """Wan 2.2's low-noise expert (None: `guidance_scale`)."""
    negative_prompt: str = ""
    max_sequence_length: int = 512
    device: str = "cuda"
    dtype: str = "bfloat16"
    fps: int = 16
    cost: CostModel | None = None
    """Prices a clip for ETAs, quotas and scheduling (None: a rough per-step guess)."""
    styles: frozenset[str] = field(default_factory=frozenset)
    enable_vae_tiling: bool = False
    cpu_offload: bool = False
    compile: bool = False
    """`torch.compile` the transformer(s) at load."""
    sizes: frozenset[str] = frozenset(SIZES)
    """The sizes it makes (registry `sizes`)."""
    max_seconds: int = MAX_SECONDS
    """The longest clip of one run (registry `max_seconds`)."""
    task: Task = "t2v"
    edit_strength: float = 0.7
    """How much of the schedule an edit runs (more: further from the source clip)."""


class WanModel(PipelineModel[WanConfig]):
    """`VideoModel` over a diffusers `WanPipeline` directory."""

    rough_step_s = (30.0, 1280 * 720 * 81)  # Wan 14B at 720p, 81 frames

    def __init__(self, name: str, config: WanConfig):
        super().__init__(name, config)
        if config.task == "t2v":
            self.accepts = frozenset({Conditioning.VIDEO})
        else:
            self.accepts = frozenset({Conditioning.IMAGE})
        if config.task == "i2v":
            self.requires = frozenset({Conditioning.IMAGE})

    def pipeline_class(self) -> str:
        return "WanPipeline" if self.config.task == "t2v" else "WanImageToVideoPipeline"

    def geometry(self, spec: GenerationSpec) -> tuple[int, int, int]:
        """(height, width, frames) the pipeline runs at: sizes rounded down to what the VAE
        and patches divide, frames up to `4k + 1` (the extra ones are dropped)."""
        pipe = self.pipe
        patch = pipe.transformer.config.patch_size
        h_unit = pipe.vae_scale_factor_spatial * patch[1]
        w_unit = pipe.vae_scale_factor_spatial * patch[2]
        return rounded(spec, h_unit, w_unit, pipe.vae_scale_factor_temporal)

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        import torch

        if self.pipe is None:
            self.load()
        pipe, cfg = self.pipe, self.config
        device = pipe._execution_device
        height, width, frames = self.geometry(spec)
        image = self._image(spec)
        fingerprint = self._fingerprint(spec, height, width, frames, image is not None)
        guidance = cfg.guidance_scale
        guidance_2 = cfg.guidance_scale_2 if cfg.guidance_scale_2 is not None else guidance
        cfg_on = guidance > 1.0  # decided once, for both of Wan 2.2's experts, as the pipeline does
        expert = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        dtype = expert.dtype
        with self._device, torch.no_grad():
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=spec.prompt,
                negative_prompt=cfg.negative_prompt,
                do_classifier_free_guidance=cfg_on,
                num_videos_per_prompt=1,
                max_sequence_length=cfg.max_sequence_length,
                device=device,
            )
            extra: dict[str, Any] = {}  # Wan 2.1 I2V: the image's CLIP embedding too
            clip_dim = pipe.transformer.config.image_dim if pipe.transformer is not None else None
            if image is not None and clip_dim is not None:
                extra["encoder_hidden_states_image"] = pipe.encode_image(image, device).to(dtype)
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_embeds is not None:
            negative_embeds = negative_embeds.to(dtype)
        scheduler = copy.deepcopy(pipe.scheduler)  # a run's own state (several may share a pipe)
        scheduler.set_timesteps(cfg.steps, device=device)
        timesteps = scheduler.timesteps
        skip = self._skipped(spec)
        scheduler.set_begin_index(skip)
        generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        with self._device, torch.no_grad():  # the VAE encodes the image or the source clip
            if spec.source_video is not None:
                size = (height, width, frames)
                latents = self._noised_source(spec, size, scheduler, timesteps[skip], generator)
                condition, mask = None, torch.ones(latents.shape, device=device)
            else:
                latents, condition, mask = self._latents(
                    image, height, width, frames, expert, device, generator
                )
        done = 0
        if resume_from is not None:
            done, latents, _ = restore(resume_from, fingerprint, scheduler, device, "Wan")
        total = cfg.steps - skip
        boundary = None
        if pipe.config.boundary_ratio is not None:
            boundary = pipe.config.boundary_ratio * scheduler.config.num_train_timesteps
        expand = bool(pipe.config.expand_timesteps)
        for i in range(skip + done, cfg.steps):
            t = timesteps[i]
            model, scale = self._expert(t, boundary, guidance, guidance_2)
            with self._device, torch.no_grad():
                if condition is None:
                    model_input = latents.to(dtype)
                elif expand:
                    model_input = ((1 - mask) * condition + mask * latents).to(dtype)
                else:
                    model_input = torch.cat([latents, condition], dim=1).to(dtype)
                if expand:
                    timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0)
                else:
                    timestep = t.expand(latents.shape[0])
                embeds = (prompt_embeds, negative_embeds if cfg_on else None)
                noise = _guided(model, model_input, timestep, embeds, scale, extra)
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            snapshot = functools.partial(save, fingerprint, i + 1 - skip, latents, scheduler)
            on_step(StepInfo(i + 1 - skip, total, snapshot))
        if condition is not None and expand:  # the image is the first frame
            latents = (1 - mask) * condition + mask * latents
        return self._clip(spec, latents)

    def _expert(self, t: Any, boundary: float | None, guidance: float, guidance_2: float) -> Any:
        """The transformer for timestep `t` and its guidance scale (Wan 2.2's second expert
        below `boundary`)."""
        if boundary is None or t >= boundary:
            return self.pipe.transformer, guidance
        return self.pipe.transformer_2, guidance_2

    def _clip(self, spec: GenerationSpec, latents: Any) -> Clip:
        """The clip of finished latents, decoded when its frames are read."""
        decoded = threading.Event()
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=self._decode(latents, spec, decoded),
            audio=np.zeros((2, spec.seconds * SAMPLE_RATE), dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            decoded=decoded,
        )

    def batch_key(self, spec: GenerationSpec) -> str | None:
        """Text-to-video jobs of one size and length share a run; the steps, guidance and
        negative prompt are the model's own. Jobs with an image or a clip run alone."""
        if (
            self.config.task != "t2v"
            or spec.reference_image is not None
            or spec.source_video is not None
            or spec.context_video is not None
        ):
            return None
        return f"{self.name}:{spec.width}x{spec.height}x{spec.num_frames}"

    def batch_gain(self, spec: GenerationSpec, batch: int) -> float:
        cost = self.config.cost
        if cost is None:  # nothing measured: no gain to count on
            return 1.0
        return cost.batch_gain(spec.width, spec.height, spec.num_frames, batch)

    def generate_batch(
        self, specs: Sequence[GenerationSpec], on_steps: Sequence[StepCallback]
    ) -> list[Clip | Exception]:
        """As `generate` for each spec, with every step's forwards over all the clips still
        in the run: one noise draw per clip from its own seed, one prompt encoding per
        clip, and a clip whose callback raises leaves the batch (the latents, prompts and
        the scheduler's per-clip state are narrowed to the others)."""
        if len(specs) != len(on_steps) or not specs:
            raise ValueError("one step callback per spec, and one spec at least")
        keys = {self.batch_key(s) for s in specs}
        if len(keys) != 1 or None in keys:
            raise ValueError(f"{self.name}: these jobs cannot share a run")
        import torch
        from diffusers import WanPipeline

        if self.pipe is None:
            self.load()
        pipe, cfg = self.pipe, self.config
        device = pipe._execution_device
        height, width, frames = self.geometry(specs[0])
        fingerprints = [self._fingerprint(s, height, width, frames, False) for s in specs]
        guidance = cfg.guidance_scale
        guidance_2 = cfg.guidance_scale_2 if cfg.guidance_scale_2 is not None else guidance
        cfg_on = guidance > 1.0
        expert = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        dtype = expert.dtype
        with self._device, torch.no_grad():
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=[s.prompt for s in specs],
                negative_prompt=[cfg.negative_prompt] * len(specs),
                do_classifier_free_guidance=cfg_on,
                num_videos_per_prompt=1,
                max_sequence_length=cfg.max_sequence_length,
                device=device,
            )
            channels = expert.config.in_channels
            noise_of = [torch.Generator(device="cpu").manual_seed(s.seed) for s in specs]
            latents = torch.cat(
                [
                    WanPipeline.prepare_latents(
                        pipe, 1, channels, height, width, frames, torch.float32, device, g
                    )
                    for g in noise_of
                ]
            )
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_embeds is not None:
            negative_embeds = negative_embeds.to(dtype)
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(cfg.steps, device=device)
        scheduler.set_begin_index(0)
        timesteps = scheduler.timesteps
        boundary = None
        if pipe.config.boundary_ratio is not None:
            boundary = pipe.config.boundary_ratio * scheduler.config.num_train_timesteps
        results: list[Clip | Exception | None] = [None] * len(specs)
        members = list(range(len(specs)))
        """Which spec each row of the batch's tensors belongs to."""
        for i in range(cfg.steps):
            t = timesteps[i]
            model, scale = self._expert(t, boundary, guidance, guidance_2)
            with self._device, torch.no_grad():
                embeds = (prompt_embeds, negative_embeds if cfg_on else None)
                timestep = t.expand(latents.shape[0])
                noise = _guided(model, latents.to(dtype), timestep, embeds, scale, {})
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
            left: list[int] = []
            for row, k in enumerate(members):
                snapshot = functools.partial(
                    save, fingerprints[k], i + 1, latents, scheduler, member=row
                )
                try:
                    on_steps[k](StepInfo(i + 1, cfg.steps, snapshot))
                except Exception as exc:  # this clip stops here; the others go on
                    results[k] = exc
                    left.append(row)
            if left:
                keep = [row for row in range(len(members)) if row not in left]
                members = [members[row] for row in keep]
                if not members:
                    break
                keep_members(scheduler, tuple(latents.shape), keep)
                latents = latents[keep]
                prompt_embeds = prompt_embeds[keep]
                if negative_embeds is not None:
                    negative_embeds = negative_embeds[keep]
        for row, k in enumerate(members):
            results[k] = self._clip(specs[k], latents[row : row + 1].clone())
        done = [r for r in results if r is not None]
        assert len(done) == len(specs)
        return done

    def _image(self, spec: GenerationSpec) -> Any:
        """The reference image (PIL, RGB) an image-to-video pipeline is conditioned on."""
        if self.config.task == "t2v" or spec.reference_image is None:
            if self.config.task == "i2v":
                raise ValueError(f"{self.name} makes videos from an image; the job has none")
            return None
        from PIL import Image

        return Image.open(io.BytesIO(spec.reference_image)).convert("RGB")

    def _noised_source(
        self,
        spec: GenerationSpec,
        size: tuple[int, int, int],
        scheduler: Any,
        t: Any,
        generator: Any,
    ) -> Any:
        """An edit's starting latents: the source clip, read at the job's rate and the run's
        size, encoded (the VAE's mode), normalized and noised to timestep `t` by the run's
        scheduler, as `WanVideoToVideoPipeline.prepare_latents` does."""
        import torch
        from diffusers.pipelines.wan.pipeline_wan_video2video import retrieve_latents
        from diffusers.utils.torch_utils import randn_tensor

        assert spec.source_video is not None
        pipe, (height, width, frames) = self.pipe, size
        device, vae = pipe._execution_device, pipe.vae
        video = clip_pixels(pipe, spec.source_video, height, width, frames, spec.fps)
        encoded = retrieve_latents(
            vae.encode(video.to(device=device, dtype=vae.dtype)), sample_mode="argmax"
        ).to(torch.float32)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(device, torch.float32)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(device, torch.float32)
        encoded = (encoded - mean) * std
        noise = randn_tensor(encoded.shape, generator=generator, device=device, dtype=torch.float32)
        if hasattr(scheduler, "add_noise"):
            return scheduler.add_noise(encoded, noise, t.reshape(1))
        return scheduler.scale_noise(encoded, t.reshape(1), noise)

    def _latents(
        self,
        image: Any,
        height: int,
        width: int,
        frames: int,
        expert: Any,
        device: Any,
        generator: Any,
    ) -> tuple[Any, Any, Any]:
        """(the starting noise, the image's condition or None, the mask of latent positions
        that are denoised: all of them, except the first frame of an `expand_timesteps`
        image's), drawn and encoded as the pipelines do."""
        import torch
        from diffusers import WanPipeline

        pipe = self.pipe
        if image is None:  # `WanPipeline`'s noise, for a text job on either kind of pipeline
            latents = WanPipeline.prepare_latents(
                pipe, 1, expert.config.in_channels, height, width, frames, torch.float32,
                device, generator,
            )  # fmt: skip
            return latents, None, torch.ones(latents.shape, dtype=torch.float32, device=device)
        pixels = pipe.video_processor.preprocess(image, height=height, width=width)
        out = pipe.prepare_latents(
            pixels.to(device, dtype=torch.float32), 1, pipe.vae.config.z_dim, height, width,
            frames, torch.float32, device, generator,
        )  # fmt: skip
        if pipe.config.expand_timesteps:
            latents, condition, first_frame = out
            return latents, condition, first_frame
        latents, condition = out
        return latents, condition, torch.ones(latents.shape, dtype=torch.float32, device=device)

    def decode(self, latents: Any) -> Any:
        """Latents -> video in [0, 1], (frames, height, width, 3) float32 on the CPU."""
        import torch

        vae = self.pipe.vae
        with self._device, torch.no_grad():
            latents = latents.to(vae.device, vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
            std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents)
            video = vae.decode(latents / std + mean, return_dict=False)[0]
            video = self.pipe.video_processor.postprocess_video(video, output_type="np")
        return video[0]

    def _decode(
        self, latents: Any, spec: GenerationSpec, decoded: threading.Event
    ) -> Iterator[np.ndarray]:
        video = self.decode(latents)
        decoded.set()
        yield from job_frames(video, spec)

    def _fingerprint(
        self, spec: GenerationSpec, height: int, width: int, frames: int, image: bool
    ) -> str:
        cfg = self.config
        ref = spec.reference_image
        fields = {
            "format": _SNAPSHOT_FORMAT,
            "model": self.name,
            "task": cfg.task,
            "steps": cfg.steps,
            "guidance": [cfg.guidance_scale, cfg.guidance_scale_2],
            "negative": cfg.negative_prompt,
            "prompt": spec.prompt,
            "seed": spec.seed,
            "geometry": [height, width, frames],
            "image": hashlib.sha256(ref).hexdigest() if image and ref is not None else None,
            "source": spec.source_sha256(),
            "edit_strength": cfg.edit_strength if spec.source_video is not None else None,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _guided(
    model: Any, model_input: Any, timestep: Any, embeds: tuple[Any, Any], scale: float, extra: Any
) -> Any:
    """The transformer's noise prediction, with classifier-free guidance where the negative
    prompt's embeddings are given (`embeds`: the prompt's, the negative prompt's or None)."""
    noise, *uncond = [
        model(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=states,
            return_dict=False,
            **extra,
        )[0]
        for states in embeds
        if states is not None
    ]
    return uncond[0] + scale * (noise - uncond[0]) if uncond else noise
