"""CogVideoX 1.0 / 1.5 text-to-video and image-to-video through diffusers
(`CogVideoXPipeline`, `CogVideoXImageToVideoPipeline`; the `diffusers` extra), loaded from a
local directory the operator downloaded; nothing is fetched.

The adapter owns the denoising loop, as for Wan and LTX-Video: the pipeline's own
`encode_prompt`, `prepare_latents` and rotary embeddings, then per step the transformer
(negative and positive prompt in one batch, with CogVideoX's optional dynamic guidance) and
the scheduler's step. CogVideoX's DPM scheduler keeps history outside itself: each step
takes the previous step's predicted clean sample, and draws fresh noise from the job's
generator. A checkpoint therefore holds, besides the latents and the scheduler's state, that
prediction and the generator's state, so a resumed run gives the same video as an
uninterrupted one (a test holds the loop to the pipeline's own output and resumes it).

The image-to-video models (`task = "i2v"`, their own weights) need an image: its latents,
sampled from the VAE with the job's generator, ride beside the noise on the channel axis at
the first latent frame, as `CogVideoXImageToVideoPipeline` does.

Edits (text-to-video models): as `CogVideoXVideoToVideoPipeline` does, the source clip's
latents (sampled from the VAE with the job's generator) are noised to the level of step
`(1 - edit_strength) * steps` and only the rest of the schedule runs (dynamic guidance
rises over those steps, as in that pipeline). CogVideoX 1.5's padded latent frames repeat
the source's last frame and are dropped at the end.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import math
import threading
from collections.abc import Iterator
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
    restore,
    rounded,
    save,
)
from reelgen.scheduler.cost import CostModel

_SNAPSHOT_FORMAT = "reelgen-cogvideox-snapshot/1"
SAMPLE_RATE = 48_000


@dataclass(frozen=True, slots=True)
class CogVideoXConfig:
    path: Path | None
    """The pipeline's directory (model_index.json and its components); a worker needs it."""
    steps: int = 50
    guidance_scale: float = 6.0
    dynamic_cfg: bool = False
    """Guidance that rises over the schedule (recommended for the 5B models)."""
    negative_prompt: str = ""
    max_sequence_length: int = 226
    device: str = "cuda"
    dtype: str = "bfloat16"
    fps: int = 8
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
    task: Literal["t2v", "i2v"] = "t2v"
    edit_strength: float = 0.7
    """How much of the schedule an edit runs (text-to-video models)."""


class CogVideoXModel(PipelineModel[CogVideoXConfig]):
    """`VideoModel` over a diffusers `CogVideoXPipeline` directory."""

    rough_step_s = (3.6, 720 * 480 * 49)  # CogVideoX-5B: about 3 min, 50 steps, 720x480x49

    def __init__(self, name: str, config: CogVideoXConfig):
        super().__init__(name, config)
        if config.task == "i2v":
            self.accepts = self.requires = frozenset({Conditioning.IMAGE})
        else:
            self.accepts = frozenset({Conditioning.VIDEO})

    def pipeline_class(self) -> str:
        return "CogVideoXPipeline" if self.config.task == "t2v" else "CogVideoXImageToVideoPipeline"

    def geometry(self, spec: GenerationSpec) -> tuple[int, int, int]:
        """(height, width, frames) the pipeline runs at: sizes rounded down to what the VAE
        and patches divide, frames up to `4k + 1` (the extra ones are dropped). A model
        with learned positional embeddings (CogVideoX-5B-I2V) runs only at the size and
        length it was trained at (720x480, 49 frames): its clip is resized to the job's size
        and cut to its length."""
        pipe = self.pipe
        config = pipe.transformer.config
        if config.use_learned_positional_embeddings:
            scale = pipe.vae_scale_factor_spatial
            return config.sample_height * scale, config.sample_width * scale, config.sample_frames
        unit = pipe.vae_scale_factor_spatial * config.patch_size
        return rounded(spec, unit, unit, pipe.vae_scale_factor_temporal)

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        import torch
        from diffusers import CogVideoXDPMScheduler

        if self.pipe is None:
            self.load()
        pipe, cfg = self.pipe, self.config
        device = pipe._execution_device
        height, width, frames = self.geometry(spec)
        fingerprint = self._fingerprint(spec, height, width, frames)
        cfg_on = cfg.guidance_scale > 1.0
        with self._device, torch.no_grad():
            embeds, negative = pipe.encode_prompt(
                spec.prompt,
                cfg.negative_prompt,
                cfg_on,
                num_videos_per_prompt=1,
                max_sequence_length=cfg.max_sequence_length,
                device=device,
            )
        if cfg_on:
            embeds = torch.cat([negative, embeds], dim=0)
        scheduler = copy.deepcopy(pipe.scheduler)  # a run's own state (several may share a pipe)
        scheduler.set_timesteps(cfg.steps, device=device)
        timesteps = scheduler.timesteps
        padding = 0  # CogVideoX 1.5: latent frames padded to a multiple of the time patch
        patch_t = pipe.transformer.config.patch_size_t
        latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
        if patch_t is not None and latent_frames % patch_t:
            padding = patch_t - latent_frames % patch_t
        generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        padded = frames + padding * pipe.vae_scale_factor_temporal
        skip = self._skipped(spec)
        kept = slice(padding, None)  # the pipeline drops the padded latent frames in front
        with self._device, torch.no_grad():  # the VAE encodes the image or the source clip
            if spec.source_video is not None:
                size = (height, width, padded)
                latents = self._noised_source(spec, size, scheduler, timesteps[skip], generator)
                image, kept = None, slice(0, latent_frames)  # the source's tail repeats
            else:
                latents, image = self._latents(spec, padded, height, width, embeds.dtype, generator)
        ofs = None  # CogVideoX 1.5 I2V's fixed offset embedding
        if pipe.transformer.config.ofs_embed_dim is not None:
            ofs = latents.new_full((1,), fill_value=2.0)
        dpm = isinstance(scheduler, CogVideoXDPMScheduler)
        previous = None  # the DPM solver's last predicted clean sample
        start = 0
        if resume_from is not None:
            start, latents, extra = restore(
                resume_from, fingerprint, scheduler, device, "CogVideoX"
            )
            previous = extra.get("previous")
            generator.set_state(extra["generator"].cpu())
        rotary = None
        if pipe.transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(
                height, width, latents.size(1), device
            )
        run = cfg.steps - skip
        for i in range(skip + start, cfg.steps):
            t = timesteps[i]
            with self._device, torch.no_grad():
                model_input = torch.cat([latents] * 2) if cfg_on else latents
                model_input = scheduler.scale_model_input(model_input, t)
                if image is not None:
                    beside = torch.cat([image] * 2) if cfg_on else image
                    model_input = torch.cat([model_input, beside], dim=2)
                noise = pipe.transformer(
                    hidden_states=model_input,
                    encoder_hidden_states=embeds,
                    timestep=t.expand(model_input.shape[0]),
                    ofs=ofs,
                    image_rotary_emb=rotary,
                    return_dict=False,
                )[0].float()
                if cfg_on:
                    scale = cfg.guidance_scale
                    if cfg.dynamic_cfg:  # over the steps the run makes, as the pipelines do
                        rise = (run - t.item()) / run
                        scale = 1 + scale * (1 - math.cos(math.pi * rise**5.0)) / 2
                    uncond, cond = noise.chunk(2)
                    noise = uncond + scale * (cond - uncond)
                if dpm:
                    back = timesteps[i - 1] if i > skip else None
                    latents, previous = scheduler.step(
                        noise, previous, t, back, latents, generator=generator, return_dict=False
                    )
                else:
                    latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                latents = latents.to(embeds.dtype)
            extra = {"previous": previous, "generator": generator.get_state()}
            done = i + 1 - skip
            snapshot = functools.partial(save, fingerprint, done, latents, scheduler, extra)
            on_step(StepInfo(done, run, snapshot))
        decoded = threading.Event()
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=self._decode(latents[:, kept], spec, decoded),
            audio=np.zeros((2, spec.seconds * SAMPLE_RATE), dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            decoded=decoded,
        )

    def _noised_source(
        self,
        spec: GenerationSpec,
        size: tuple[int, int, int],
        scheduler: Any,
        t: Any,
        generator: Any,
    ) -> Any:
        """An edit's starting latents: the source clip, read at the job's rate and the run's
        size (its last frame repeated to `frames`), sampled from the VAE with the job's
        generator, scaled, and noised to timestep `t`, as
        `CogVideoXVideoToVideoPipeline.prepare_latents` does."""
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_video2video import (
            retrieve_latents,
        )
        from diffusers.utils.torch_utils import randn_tensor

        assert spec.source_video is not None
        pipe, (height, width, frames) = self.pipe, size
        device, dtype = pipe._execution_device, pipe.text_encoder.dtype  # the embeddings'
        video = clip_pixels(pipe, spec.source_video, height, width, frames, spec.fps)
        encoded = retrieve_latents(pipe.vae.encode(video.to(device, dtype=dtype)), generator)
        encoded = pipe.vae_scaling_factor_image * encoded.to(dtype).permute(0, 2, 1, 3, 4)
        noise = randn_tensor(encoded.shape, generator=generator, device=device, dtype=dtype)
        latents = scheduler.add_noise(encoded, noise, t.reshape(1))
        return latents * scheduler.init_noise_sigma

    def _latents(
        self, spec: GenerationSpec, frames: int, height: int, width: int, dtype: Any, generator: Any
    ) -> tuple[Any, Any]:
        """(the starting noise, the image's latents or None), drawn as the pipelines do."""
        pipe = self.pipe
        device = pipe._execution_device
        channels = pipe.transformer.config.in_channels
        if self.config.task == "t2v":
            latents = pipe.prepare_latents(
                1, channels, frames, height, width, dtype, device, generator
            )
            return latents, None
        if spec.reference_image is None:
            raise ValueError(f"{self.name} makes videos from an image; the job has none")
        from PIL import Image

        picture = Image.open(io.BytesIO(spec.reference_image)).convert("RGB")
        pixels = pipe.video_processor.preprocess(picture, height=height, width=width)
        latents, image = pipe.prepare_latents(
            pixels.to(device, dtype=dtype), 1, channels // 2, frames, height, width, dtype,
            device, generator,
        )  # fmt: skip
        return latents, image

    def decode(self, latents: Any) -> Any:
        """Latents -> video in [0, 1], (frames, height, width, 3) float32 on the CPU."""
        import torch

        pipe = self.pipe
        with self._device, torch.no_grad():
            video = pipe.decode_latents(latents.to(pipe.vae.dtype))
            video = pipe.video_processor.postprocess_video(video=video, output_type="np")
        return video[0]

    def _decode(
        self, latents: Any, spec: GenerationSpec, decoded: threading.Event
    ) -> Iterator[np.ndarray]:
        video = self.decode(latents)
        decoded.set()
        yield from job_frames(video, spec)

    def _fingerprint(self, spec: GenerationSpec, height: int, width: int, frames: int) -> str:
        cfg = self.config
        fields = {
            "format": _SNAPSHOT_FORMAT,
            "model": self.name,
            "steps": cfg.steps,
            "guidance": [cfg.guidance_scale, cfg.dynamic_cfg],
            "negative": cfg.negative_prompt,
            "prompt": spec.prompt,
            "seed": spec.seed,
            "geometry": [height, width, frames],
            "task": cfg.task,
            "source": spec.source_sha256(),
            "edit_strength": cfg.edit_strength if spec.source_video is not None else None,
            "image": (
                hashlib.sha256(spec.reference_image).hexdigest()
                if spec.reference_image and cfg.task == "i2v"
                else None
            ),
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
