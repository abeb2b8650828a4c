"""LTX-Video text-to-video and image-to-video through diffusers (the `diffusers` extra),
loaded from a local directory the operator downloaded; nothing is fetched. One LTX-Video
directory serves both: it is loaded as `LTXImageToVideoPipeline` (the same components as
`LTXPipeline`), and a job without an image runs as `LTXPipeline` would.

As with Wan, the adapter owns the denoising loop so that a run can resume from a checkpoint:
the pipeline's own `encode_prompt` and `prepare_latents` (packed into a token sequence),
the flow-matching schedule shifted for the clip's sequence length as `LTXPipeline.__call__`
computes it, then per step the transformer (negative and positive prompt in one batch) and
the scheduler's step. The same seed gives the same video as the pipeline (a test holds it to
the pipeline's own output). The VAE decode (with LTX 0.9.1+'s timestep-conditioned decoder,
a little noise drawn from the job's generator) runs when the clip's frames are read, on the
worker's finishing thread.

With an image (a reference image, or the last frame of a video being extended), as
`LTXImageToVideoPipeline` does: the image's latents (sampled from the VAE with the job's
generator) are the first latent frame, whose tokens get timestep zero and are never
stepped; the other frames start from noise.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reelgen.domain.jobs import MAX_SECONDS, SIZES
from reelgen.models.base import Clip, Conditioning, GenerationSpec, StepCallback, StepInfo
from reelgen.models.diffusers_shared import PipelineModel, job_frames, restore, rounded, save
from reelgen.scheduler.cost import CostModel

_SNAPSHOT_FORMAT = "reelgen-ltx-snapshot/1"
SAMPLE_RATE = 48_000


@dataclass(frozen=True, slots=True)
class LtxConfig:
    path: Path | None
    """The pipeline's directory (model_index.json and its components); a worker needs it."""
    steps: int = 50
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.0
    negative_prompt: str = ""
    max_sequence_length: int = 128
    decode_timestep: float = 0.0
    decode_noise_scale: float | None = None
    """For a timestep-conditioned VAE (None: `decode_timestep`)."""
    device: str = "cuda"
    dtype: str = "bfloat16"
    fps: int = 24
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
    condition: bool = False
    """An `LTXConditionPipeline` directory (LTX-Video 0.9.5+, `models/ltx_condition.py`)."""
    image_cond_noise_scale: float = 0.15
    """`LTXConditionPipeline`: noise kept on a conditioning image's latents (motion)."""
    edit_strength: float = 0.7
    """`LTXConditionPipeline`: how much of the schedule an edit runs."""
    context_frames: int = 17
    """`LTXConditionPipeline`: how many of a continued video's last frames condition an
    extension (rounded down to `8k + 1`)."""


class LtxModel(PipelineModel[LtxConfig]):
    """`VideoModel` over a diffusers `LTXPipeline` directory."""

    rough_step_s = (1.5, 768 * 512 * 121)  # about 4x Wan 1.3B's speed at 768x512x121

    accepts = frozenset({Conditioning.IMAGE})

    def pipeline_class(self) -> str:
        return "LTXImageToVideoPipeline"

    def geometry(self, spec: GenerationSpec) -> tuple[int, int, int]:
        """(height, width, frames) the pipeline runs at: sizes rounded down to what the VAE
        and patches divide, frames up to `8k + 1` (the extra ones are dropped)."""
        pipe = self.pipe
        unit = pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size
        t_unit = pipe.vae_temporal_compression_ratio * pipe.transformer_temporal_patch_size
        return rounded(spec, unit, unit, t_unit)

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        import torch
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, rescale_noise_cfg

        if self.pipe is None:
            self.load()
        pipe, cfg = self.pipe, self.config
        device = pipe._execution_device
        height, width, frames = self.geometry(spec)
        fingerprint = self._fingerprint(spec, height, width, frames)
        cfg_on = cfg.guidance_scale > 1.0
        image = None
        if spec.reference_image is not None:
            from PIL import Image

            image = Image.open(io.BytesIO(spec.reference_image)).convert("RGB")
        embeds, mask = self._prompt(spec, cfg_on)
        generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        with self._device, torch.no_grad():  # the VAE encodes the image
            latents, first = self._latents(image, height, width, frames, embeds.dtype, generator)
        if first is not None and cfg_on:
            first = torch.cat([first, first])
        grid = (
            (frames - 1) // pipe.vae_temporal_compression_ratio + 1,
            height // pipe.vae_spatial_compression_ratio,
            width // pipe.vae_spatial_compression_ratio,
        )
        scheduler = copy.deepcopy(pipe.scheduler)  # a run's own state (several may share a pipe)
        conf = scheduler.config
        mu = calculate_shift(
            grid[0] * grid[1] * grid[2],
            conf.get("base_image_seq_len", 256),
            conf.get("max_image_seq_len", 4096),
            conf.get("base_shift", 0.5),
            conf.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / cfg.steps, cfg.steps)
        scheduler.set_timesteps(sigmas=sigmas, device=device, mu=mu)
        timesteps = scheduler.timesteps
        start = 0
        if resume_from is not None:
            start, latents, _ = restore(resume_from, fingerprint, scheduler, device, "LTX-Video")
        rope = (
            pipe.vae_temporal_compression_ratio / spec.fps,
            pipe.vae_spatial_compression_ratio,
            pipe.vae_spatial_compression_ratio,
        )
        for i in range(start, cfg.steps):
            t = timesteps[i]
            with self._device, torch.no_grad():
                model_input = torch.cat([latents] * 2) if cfg_on else latents
                model_input = model_input.to(embeds.dtype)
                timestep = t.expand(model_input.shape[0])
                if first is not None:  # the image's tokens are clean
                    timestep = timestep.unsqueeze(-1) * (1 - first)
                noise = pipe.transformer(
                    hidden_states=model_input,
                    encoder_hidden_states=embeds,
                    timestep=timestep,
                    encoder_attention_mask=mask,
                    num_frames=grid[0],
                    height=grid[1],
                    width=grid[2],
                    rope_interpolation_scale=rope,
                    return_dict=False,
                )[0].float()
                if cfg_on:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + cfg.guidance_scale * (cond - uncond)
                    if cfg.guidance_rescale > 0:
                        noise = rescale_noise_cfg(
                            noise, cond, guidance_rescale=cfg.guidance_rescale
                        )
                if first is None:
                    latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                else:
                    latents = self._step_after_image(scheduler, noise, t, latents, grid)
            snapshot = functools.partial(save, fingerprint, i + 1, latents, scheduler)
            on_step(StepInfo(i + 1, cfg.steps, snapshot))
        decoded = threading.Event()
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=self._decode(latents, grid, embeds.dtype, generator, spec, decoded),
            audio=np.zeros((2, spec.seconds * SAMPLE_RATE), dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            decoded=decoded,
        )

    def _prompt(self, spec: GenerationSpec, cfg_on: bool) -> tuple[Any, Any]:
        """(the prompt's embeddings and attention mask), the negative prompt's in front of
        them in one batch when guidance is on, as the pipelines run them."""
        import torch

        pipe, cfg = self.pipe, self.config
        with self._device, torch.no_grad():
            embeds, mask, negative, negative_mask = pipe.encode_prompt(
                prompt=spec.prompt,
                negative_prompt=cfg.negative_prompt,
                do_classifier_free_guidance=cfg_on,
                num_videos_per_prompt=1,
                max_sequence_length=cfg.max_sequence_length,
                device=pipe._execution_device,
            )
        if cfg_on:
            embeds = torch.cat([negative, embeds], dim=0)
            mask = torch.cat([negative_mask, mask], dim=0)
        return embeds, mask

    def _latents(
        self, image: Any, height: int, width: int, frames: int, dtype: Any, generator: Any
    ) -> tuple[Any, Any]:
        """(the starting latents, packed; the mask of the image's tokens, or None), drawn as
        `LTXPipeline` (no image) or `LTXImageToVideoPipeline` draws them."""
        import torch
        from diffusers import LTXPipeline

        pipe = self.pipe
        device = pipe._execution_device
        channels = pipe.transformer.config.in_channels
        if image is None:
            latents = LTXPipeline.prepare_latents(
                pipe, 1, channels, height, width, frames, torch.float32, device, generator
            )
            return latents, None
        pixels = pipe.video_processor.preprocess(image, height=height, width=width)
        latents, first = pipe.prepare_latents(
            pixels.to(device=device, dtype=dtype), 1, channels, height, width, frames,
            torch.float32, device, generator,
        )  # fmt: skip
        return latents, first

    def _step_after_image(
        self, scheduler: Any, noise: Any, t: Any, latents: Any, grid: tuple[int, int, int]
    ) -> Any:
        """The scheduler's step for every latent frame but the image's."""
        import torch

        pipe = self.pipe
        p, p_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        noise = pipe._unpack_latents(noise, *grid, p, p_t)
        latents = pipe._unpack_latents(latents, *grid, p, p_t)
        stepped = scheduler.step(noise[:, :, 1:], t, latents[:, :, 1:], return_dict=False)[0]
        return pipe._pack_latents(torch.cat([latents[:, :, :1], stepped], dim=2), p, p_t)

    def decode(self, latents: Any, grid: tuple[int, int, int], dtype: Any, generator: Any) -> Any:
        """Packed latents -> video in [0, 1], (frames, height, width, 3) float32 on the CPU,
        as the pipeline decodes them (the decode noise drawn from the job's generator)."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        pipe, cfg = self.pipe, self.config
        vae = pipe.vae
        with self._device, torch.no_grad():
            latents = pipe._unpack_latents(
                latents, *grid, pipe.transformer_spatial_patch_size,
                pipe.transformer_temporal_patch_size,
            )  # fmt: skip
            latents = pipe._denormalize_latents(
                latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
            ).to(dtype)
            timestep = None
            if vae.config.timestep_conditioning:
                noise = randn_tensor(
                    latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
                )
                scale = cfg.decode_noise_scale
                scale = cfg.decode_timestep if scale is None else scale
                timestep = torch.tensor([cfg.decode_timestep], device=latents.device, dtype=dtype)
                latents = (1 - scale) * latents + scale * noise
            video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
            video = pipe.video_processor.postprocess_video(video, output_type="np")
        return video[0]

    def _decode(
        self,
        latents: Any,
        grid: tuple[int, int, int],
        dtype: Any,
        generator: Any,
        spec: GenerationSpec,
        decoded: threading.Event,
        first: int = 0,
    ) -> Iterator[np.ndarray]:
        """The job's frames from the decoded video's frame `first` on (before it: frames of
        a video being continued, which the worker stitches from the source itself)."""
        video = self.decode(latents, grid, dtype, generator)
        decoded.set()
        yield from job_frames(video[first:], spec)

    def _fingerprint(self, spec: GenerationSpec, height: int, width: int, frames: int) -> str:
        cfg = self.config
        fields = {
            "format": _SNAPSHOT_FORMAT,
            "model": self.name,
            "steps": cfg.steps,
            "guidance": [cfg.guidance_scale, cfg.guidance_rescale],
            "negative": cfg.negative_prompt,
            "prompt": spec.prompt,
            "seed": spec.seed,
            "fps": spec.fps,
            "geometry": [height, width, frames],
            "image": (
                hashlib.sha256(spec.reference_image).hexdigest() if spec.reference_image else None
            ),
            "pipeline": self.pipeline_class(),
            "source": spec.source_sha256(),
            "edit_strength": cfg.edit_strength if spec.source_video is not None else None,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
