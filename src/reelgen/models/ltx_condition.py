"""LTX-Video 0.9.5+ through diffusers' `LTXConditionPipeline` (the `diffusers` extra): text,
an image for the first frame, and edits, from a local directory the operator downloaded.

The adapter owns the loop, as `LTXConditionPipeline.__call__` runs it: its linear-quadratic
schedule, its `prepare_latents` (the conditioning image VAE-encoded into the first latent
frame with a per-token conditioning mask; an edit's source latents noised to the level
where its run joins the schedule), then per step the timestep-dependent noise it keeps on
the image's latents (drawn from the job's generator), the transformer with per-token
timesteps and the video's coordinates, and the scheduler's step on the tokens still to be
denoised. A checkpoint holds the latents, the scheduler's state and the generator's, so a
resumed run gives the same video; the mask and coordinates are made again from the job.
The decode is `LtxModel`'s (the same VAE).

Extensions: the continued video's last frames (`context_frames`, of the part the output
shows) are a video condition at frame 0, so the run's first frames are theirs and the rest
carry on their motion; the worker stitches the source and the frames after them.

Edits: the source clip's latents (the VAE's mode, normalized) go in as the pipeline's
`latents` with `denoise_strength = edit_strength`: the last `edit_strength` of the schedule
runs from them, mixed with noise at that step's sigma.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import io
import math
import threading
from typing import Any

import numpy as np

from reelgen.media.decode import read_frames
from reelgen.models.base import Clip, Conditioning, GenerationSpec, StepCallback, StepInfo
from reelgen.models.diffusers_shared import clip_pixels, restore, save
from reelgen.models.ltx import SAMPLE_RATE, LtxModel


class LtxConditionModel(LtxModel):
    """`VideoModel` over a diffusers `LTXConditionPipeline` directory."""

    accepts = frozenset({Conditioning.IMAGE, Conditioning.VIDEO, Conditioning.CLIP})

    def pipeline_class(self) -> str:
        return "LTXConditionPipeline"

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        """As `LtxModel`'s, with an extension's context frames, which the run makes too."""
        if spec.context_video is None:
            return super().estimate_seconds(spec)
        made = super().estimate_seconds(dataclasses.replace(spec, context_video=None))
        context = min(self.config.context_frames, spec.context_seconds * spec.fps)
        return made * (spec.num_frames + context) / max(1, spec.num_frames)

    def geometry(self, spec: GenerationSpec) -> tuple[int, int, int]:
        """As `LtxModel`'s, with an extension's context frames in front of the new ones."""
        height, width, frames = super().geometry(spec)
        context = self._context_frames(spec)
        if context:
            t_unit = self.pipe.vae_temporal_compression_ratio
            frames = math.ceil((context + spec.num_frames - 1) / t_unit) * t_unit + 1
        return height, width, frames

    def _context_frames(self, spec: GenerationSpec) -> int:
        """How many of the continued video's last frames condition the run (`8k + 1`)."""
        if spec.context_video is None:
            return 0
        t_unit = int(self.pipe.vae_temporal_compression_ratio)
        shown = spec.context_seconds * spec.fps
        return (min(self.config.context_frames, shown) - 1) // t_unit * t_unit + 1

    def context(self, spec: GenerationSpec, height: int, width: int) -> list[Any]:
        """The continued video's last frames (of the part the output shows), at the run's
        size and the job's rate, as PIL images."""
        from PIL import Image

        assert spec.context_video is not None
        count = self._context_frames(spec)
        shown = spec.context_seconds * spec.fps
        tail = collections.deque(
            read_frames(spec.context_video, width, height, shown, fps=spec.fps), maxlen=count
        )
        return [Image.fromarray(frame) for frame in tail]

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        import torch
        from diffusers.pipelines.ltx.pipeline_ltx_condition import (
            linear_quadratic_schedule,
            rescale_noise_cfg,
        )

        if self.pipe is None:
            self.load()
        pipe, cfg = self.pipe, self.config
        device = pipe._execution_device
        height, width, frames = self.geometry(spec)
        fingerprint = self._fingerprint(spec, height, width, frames)
        cfg_on = cfg.guidance_scale > 1.0
        embeds, mask = self._prompt(spec, cfg_on)
        conditions = []
        if spec.reference_image is not None:
            from PIL import Image

            image = Image.open(io.BytesIO(spec.reference_image)).convert("RGB")
            pixels = pipe.video_processor.preprocess(image, height, width).unsqueeze(2)
            conditions.append(pixels.to(device, dtype=pipe.vae.dtype))
        context = self._context_frames(spec)
        if context:
            tail = self.context(spec, height, width)
            clip = pipe.video_processor.preprocess_video(tail, height=height, width=width)
            conditions.append(clip.to(device, dtype=pipe.vae.dtype))
        scheduler = copy.deepcopy(pipe.scheduler)  # a run's own state (several may share a pipe)
        schedule = linear_quadratic_schedule(cfg.steps) * 1000
        scheduler.set_timesteps(timesteps=schedule, device=device)
        timesteps, sigmas = scheduler.timesteps, scheduler.sigmas
        skip = self._skipped(spec)
        source, sigma = None, None
        generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        with self._device, torch.no_grad():  # the VAE encodes the image or the source clip
            if spec.source_video is not None:
                source = self.source_latents(spec, height, width, frames)
                sigma = sigmas[skip : skip + 1]
            latents, cond_mask, coords, extra_tokens = pipe.prepare_latents(
                conditions, [1.0] * len(conditions), [0] * len(conditions), batch_size=1,
                num_channels_latents=pipe.transformer.config.in_channels, height=height,
                width=width, num_frames=frames, sigma=sigma, latents=source,
                generator=generator, device=device, dtype=torch.float32,
            )  # fmt: skip
        coords = coords.float()
        coords[:, 0] = coords[:, 0] * (1.0 / spec.fps)
        initial = latents.clone() if conditions else None
        if cfg_on:
            coords = torch.cat([coords, coords], dim=0)
        done = 0
        if resume_from is not None:
            done, latents, extra = restore(resume_from, fingerprint, scheduler, device, "LTX-Video")
            generator.set_state(extra["generator"].cpu())
        run = cfg.steps - skip
        for i in range(skip + done, cfg.steps):
            t = timesteps[i]
            with self._device, torch.no_grad():
                if cfg.image_cond_noise_scale > 0 and initial is not None:
                    latents = pipe.add_noise_to_image_conditioning_latents(
                        t / 1000.0, initial, latents, cfg.image_cond_noise_scale, cond_mask,
                        generator,
                    )  # fmt: skip
                model_input = torch.cat([latents] * 2) if cfg_on else latents
                model_input = model_input.to(embeds.dtype)
                timestep = t.expand(model_input.shape[0]).unsqueeze(-1).float()
                if conditions:  # the image's tokens are (nearly) clean
                    both = torch.cat([cond_mask, cond_mask]) if cfg_on else cond_mask
                    timestep = torch.min(timestep, (1 - both) * 1000.0)
                noise = pipe.transformer(
                    hidden_states=model_input,
                    encoder_hidden_states=embeds,
                    timestep=timestep,
                    encoder_attention_mask=mask,
                    video_coords=coords,
                    return_dict=False,
                )[0]
                if cfg_on:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + cfg.guidance_scale * (cond - uncond)
                    timestep, _ = timestep.chunk(2)
                    if cfg.guidance_rescale > 0:
                        noise = rescale_noise_cfg(
                            noise, cond, guidance_rescale=cfg.guidance_rescale
                        )
                stepped = scheduler.step(
                    -noise, t, latents, per_token_timesteps=timestep, return_dict=False
                )[0]
                if conditions:
                    still_noisy = (t / 1000 - 1e-6 < (1.0 - cond_mask)).unsqueeze(-1)
                    latents = torch.where(still_noisy, stepped, latents)
                else:
                    latents = stepped
            extra = {"generator": generator.get_state()}
            step = i + 1 - skip
            snapshot = functools.partial(save, fingerprint, step, latents, scheduler, extra)
            on_step(StepInfo(step, run, snapshot))
        grid = (
            (frames - 1) // pipe.vae_temporal_compression_ratio + 1,
            height // pipe.vae_spatial_compression_ratio,
            width // pipe.vae_spatial_compression_ratio,
        )
        decoded = threading.Event()
        latents = latents[:, extra_tokens:]  # the conditioning's own tokens, if any
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=self._decode(
                latents, grid, embeds.dtype, generator, spec, decoded, first=context
            ),
            audio=np.zeros((2, spec.seconds * SAMPLE_RATE), dtype=np.float32),
            sample_rate=SAMPLE_RATE,
            decoded=decoded,
        )

    def source_latents(self, spec: GenerationSpec, height: int, width: int, frames: int) -> Any:
        """An edit's source clip, read at the job's rate and the run's size, as the
        pipeline's `latents` take it: the VAE's mode, normalized, (1, C, F, H, W)."""
        import torch
        from diffusers.pipelines.ltx.pipeline_ltx_condition import retrieve_latents

        assert spec.source_video is not None
        pipe = self.pipe
        video = clip_pixels(pipe, spec.source_video, height, width, frames, spec.fps)
        vae = pipe.vae
        encoded = retrieve_latents(
            vae.encode(video.to(pipe._execution_device, dtype=vae.dtype)), sample_mode="argmax"
        )
        return pipe._normalize_latents(encoded, vae.latents_mean, vae.latents_std).to(torch.float32)
