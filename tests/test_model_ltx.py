"""The LTX-Video adapter: its own denoising loop gives the pipeline's video, checkpoints
resume to the same video, and the registry entry builds without torch. The pipeline tests
run a tiny random-weight pipeline on the CPU (`make test-diffusers`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from reelgen.models.base import Conditioning, GenerationSpec
from reelgen.models.ltx import LtxConfig, LtxModel
from reelgen.models.registry import build_model
from reelgen.settings import Settings

from .helpers import picture, stopped_at

SPEC = GenerationSpec(prompt="a red boat on the sea", seconds=1, width=32, height=32, seed=5, fps=8)


def test_ltx_registry_entry_builds_without_torch() -> None:
    model = build_model("ltx-video-2b", Settings(default_model="ltx-video-2b"))
    assert isinstance(model, LtxModel) and model.fps == 24 and model.num_steps(SPEC) == 50
    assert model.accepts == {Conditioning.IMAGE} and model.requires == frozenset()
    assert model.config.decode_timestep == 0.03 and model.config.decode_noise_scale == 0.025
    spec = GenerationSpec(prompt="x", seconds=5, width=768, height=512, seed=1, fps=24)
    assert model.estimate_seconds(spec) > 10
    longer = GenerationSpec(prompt="x", seconds=10, width=768, height=512, seed=1, fps=24)
    assert model.estimate_seconds(longer) == pytest.approx(2 * model.estimate_seconds(spec))
    with pytest.raises(ValueError, match="needs its weights"):
        model.load()


@pytest.fixture(scope="module", params=[False, True], ids=["plain-vae", "timestep-vae"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from .ltx_tiny import build

    return build(tmp_path_factory.mktemp("ltx") / "tiny", timestep_conditioning=request.param)


def _model(path: Path, steps: int = 4) -> LtxModel:
    model = LtxModel(
        "ltx-tiny",
        LtxConfig(
            path=path, steps=steps, device="cpu", dtype="float32", max_sequence_length=16,
            decode_timestep=0.05, decode_noise_scale=0.025,
        ),
    )  # fmt: skip
    model.load()
    return model


@pytest.mark.diffusers
def test_ltx_own_loop_gives_the_pipelines_video(tiny: Path) -> None:
    import torch

    model = _model(tiny)
    steps: list[int] = []
    clip = model.generate(SPEC, lambda info: steps.append(info.step))
    frames = np.stack(list(clip.frames))
    assert steps == [1, 2, 3, 4]
    height, width, count = model.geometry(SPEC)
    assert (height, width) == (32, 32) and count % 4 == 1 and count >= 8
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    from diffusers import LTXPipeline

    text_only = LTXPipeline(**model.pipe.components)
    text_only.set_progress_bar_config(disable=True)
    expected = text_only(
        prompt=SPEC.prompt, negative_prompt="", height=height, width=width, num_frames=count,
        frame_rate=SPEC.fps, num_inference_steps=4, guidance_scale=3.0, max_sequence_length=16,
        decode_timestep=0.05, decode_noise_scale=0.025, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    expected = (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8]
    assert np.array_equal(frames, expected)
    assert frames.std() > 1


@pytest.mark.diffusers
def test_ltx_checkpoint_resumes_to_the_same_video(tiny: Path) -> None:
    model = _model(tiny)
    whole = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    state = stopped_at(model, SPEC, 2)
    other = _model(tiny)  # another worker's copy
    steps: list[int] = []
    resumed = other.generate(SPEC, lambda info: steps.append(info.step), state)
    assert steps == [3, 4]
    assert np.array_equal(np.stack(list(resumed.frames)), whole)
    reseeded = dataclasses.replace(SPEC, seed=6)
    with pytest.raises(ValueError, match="another job"):
        other.generate(reseeded, lambda info: None, state)
    with pytest.raises(ValueError, match="not a checkpoint of LTX-Video"):
        other.generate(SPEC, lambda info: None, b"garbage")


I2V_SPEC = dataclasses.replace(SPEC, reference_image=picture())


@pytest.mark.diffusers
def test_ltx_image_to_video_own_loop_gives_the_pipelines_video(tiny: Path) -> None:
    """With an image, the loop makes what `LTXImageToVideoPipeline.__call__` makes from the
    same image and seed, and another image makes another clip."""
    import io

    import torch
    from PIL import Image

    model = _model(tiny)
    frames = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    height, width, count = model.geometry(SPEC)
    expected = model.pipe(
        image=Image.open(io.BytesIO(picture())).convert("RGB"), prompt=SPEC.prompt,
        negative_prompt="", height=height, width=width, num_frames=count, frame_rate=SPEC.fps,
        num_inference_steps=4, guidance_scale=3.0, max_sequence_length=16,
        decode_timestep=0.05, decode_noise_scale=0.025, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    assert np.array_equal(frames, (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8])
    other = dataclasses.replace(I2V_SPEC, reference_image=picture(3))
    assert not np.array_equal(np.stack(list(model.generate(other, lambda i: None).frames)), frames)


@pytest.mark.diffusers
def test_ltx_image_to_video_checkpoint_resumes_to_the_same_video(tiny: Path) -> None:
    model = _model(tiny)
    whole = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    state = stopped_at(model, I2V_SPEC, 2)
    resumed = _model(tiny).generate(I2V_SPEC, lambda info: None, state)
    assert np.array_equal(np.stack(list(resumed.frames)), whole)
    with pytest.raises(ValueError, match="another job"):  # the image is in the fingerprint
        _model(tiny).generate(SPEC, lambda info: None, state)
