"""The LTX-Video adapter: its own denoising loop gives the pipeline's video, checkpoints
resume to the same video, and the registry entry builds without torch. The pipeline tests
run a tiny random-weight pipeline on the CPU (`make test-diffusers`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reelgen.models.base import Conditioning, GenerationSpec
from reelgen.models.ltx import LtxConfig, LtxModel
from reelgen.models.registry import build_model
from reelgen.settings import Settings

from .helpers import edited_through_the_api, picture, stopped_at

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


def test_ltx_condition_registry_entry_builds_without_torch() -> None:
    from reelgen.models.ltx_condition import LtxConditionModel

    model = build_model("ltx-video-0.9.5", Settings(default_model="ltx-video-0.9.5"))
    assert isinstance(model, LtxConditionModel) and model.num_steps(SPEC) == 40
    assert model.accepts == {Conditioning.IMAGE, Conditioning.VIDEO, Conditioning.CLIP}
    assert model.pipeline_class() == "LTXConditionPipeline"
    wide = GenerationSpec(prompt="x", seconds=2, width=832, height=480, seed=1, fps=24)
    continued = dataclasses.replace(wide, context_video=Path("src.mp4"), context_seconds=4)
    assert model.estimate_seconds(continued) == pytest.approx(
        model.estimate_seconds(wide) * (48 + 17) / 48
    )  # the context frames run too


def _condition_model(path: Path, steps: int = 4) -> Any:
    from reelgen.models.ltx_condition import LtxConditionModel

    model = LtxConditionModel(
        "ltx-tiny",
        LtxConfig(
            path=path, steps=steps, device="cpu", dtype="float32", max_sequence_length=16,
            decode_timestep=0.05, decode_noise_scale=0.025, condition=True,
        ),
    )  # fmt: skip
    model.load()
    return model


def _condition_pipeline_frames(model: Any, count: int, first: int = 0, **kwargs: Any) -> np.ndarray:
    import torch

    video = model.pipe(
        prompt=SPEC.prompt, negative_prompt="", height=32, width=32, num_frames=count,
        frame_rate=SPEC.fps, guidance_scale=3.0, max_sequence_length=16,
        decode_timestep=0.05, decode_noise_scale=0.025, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed), **kwargs,
    ).frames[0]  # fmt: skip
    return (np.clip(video, 0, 1) * 255 + 0.5).astype(np.uint8)[first : first + 8]


@pytest.mark.diffusers
def test_ltx_condition_own_loop_gives_the_pipelines_video(tiny: Path, tmp_path: Path) -> None:
    """`LTXConditionPipeline` (LTX-Video 0.9.5+): from text, from an image at the first
    frame (its latents kept nearly clean, with noise drawn every step), and an edit of a
    clip, the loop makes what the pipeline's `__call__` makes; a checkpoint resumes to the
    same video."""
    import io

    from PIL import Image

    from .cog_standin import make_mp4

    model = _condition_model(tiny, steps=10)
    assert type(model.pipe).__name__ == "LTXConditionPipeline"
    _height, _width, count = model.geometry(SPEC)
    text = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    assert np.array_equal(text, _condition_pipeline_frames(model, count, num_inference_steps=10))
    assert text.std() > 1

    image = Image.open(io.BytesIO(picture())).convert("RGB")
    with_image = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    expected = _condition_pipeline_frames(
        model, count, num_inference_steps=10, image=image, frame_index=0, strength=1.0
    )
    assert np.array_equal(with_image, expected)
    assert not np.array_equal(with_image, text)
    state = stopped_at(model, I2V_SPEC, 4)
    again = _condition_model(tiny, steps=10).generate(I2V_SPEC, lambda info: None, state)
    assert np.array_equal(np.stack(list(again.frames)), with_image)

    source = tmp_path / "source.mp4"
    source.write_bytes(make_mp4(32, 32, 8, count, audio=False))
    spec = dataclasses.replace(SPEC, source_video=source)
    assert model.num_steps(spec) == 7
    steps: list[tuple[int, int]] = []
    edited = np.stack(list(model.generate(spec, lambda i: steps.append((i.step, i.total))).frames))
    assert steps == [(k, 7) for k in range(1, 8)]
    latents = model.source_latents(spec, 32, 32, count)
    expected = _condition_pipeline_frames(
        model, count, num_inference_steps=10, latents=latents, denoise_strength=0.7
    )
    assert np.array_equal(edited, expected)
    assert not np.array_equal(edited, text)
    state = stopped_at(model, spec, 3)
    resumed = _condition_model(tiny, steps=10).generate(spec, lambda info: None, state)
    assert np.array_equal(np.stack(list(resumed.frames)), edited)


@pytest.mark.diffusers
def test_ltx_condition_edit_through_the_api(start_server, tiny: Path) -> None:
    """`POST /v1/videos/edits` with an uploaded clip, served by an `LTXConditionPipeline`
    model: the edit keeps the clip's length and size."""
    assert edited_through_the_api(start_server, _condition_model(tiny)) == 24


@pytest.mark.diffusers
def test_ltx_condition_extension_carries_on_from_the_clips_last_frames(
    tiny: Path, tmp_path: Path
) -> None:
    """An extension (`Conditioning.CLIP`): the last frames of the part of the source the
    output shows condition the run at frame 0, as a video condition of the pipeline; the
    clip handed back is the frames after them, and a checkpoint resumes to it."""
    from reelgen.media.decode import read_frames

    from .cog_standin import make_mp4

    model = _condition_model(tiny, steps=6)
    assert Conditioning.CLIP in model.accepts
    source = tmp_path / "source.mp4"
    source.write_bytes(make_mp4(32, 32, 8, 24, audio=False))  # 3 s; the output shows 2
    spec = dataclasses.replace(SPEC, context_video=source, context_seconds=2)
    t_unit = model.pipe.vae_temporal_compression_ratio
    context = (16 - 1) // t_unit * t_unit + 1  # of the 16 frames shown
    height, width, count = model.geometry(spec)
    assert count >= context + 8 and count % t_unit == 1
    tail = model.context(spec, height, width)
    shown = list(read_frames(source, 32, 32, 16, fps=8))
    assert len(tail) == context and np.array_equal(np.asarray(tail[-1]), shown[-1])
    frames = np.stack(list(model.generate(spec, lambda info: None).frames))
    assert frames.shape == (8, 32, 32, 3)
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    whole = LTXVideoCondition(video=tail, frame_index=0, strength=1.0)  # one video condition
    expected = _condition_pipeline_frames(
        model, count, first=context, num_inference_steps=6, conditions=[whole]
    )
    assert np.array_equal(frames, expected)
    later = dataclasses.replace(spec, context_seconds=3)  # another ending: another clip
    assert not np.array_equal(np.stack(list(model.generate(later, lambda i: None).frames)), frames)
    state = stopped_at(model, spec, 3)
    resumed = _condition_model(tiny, steps=6).generate(spec, lambda info: None, state)
    assert np.array_equal(np.stack(list(resumed.frames)), frames)


@pytest.mark.diffusers
def test_ltx_condition_extension_through_the_api(start_server, tiny: Path) -> None:
    """`POST /v1/videos/extensions` with an uploaded clip, served by an
    `LTXConditionPipeline` model: the worker hands it the clip to carry on from (no still
    image), and the output is the source and then the new second."""
    import io

    import av

    from .cog_standin import make_mp4

    seen: list[GenerationSpec] = []

    def prepare(platform) -> None:
        model = _condition_model(tiny)
        model.name = "reference"
        generate = model.generate

        def spied(spec, on_step, resume_from=None):  # type: ignore[no-untyped-def]
            seen.append(spec)
            return generate(spec, on_step, resume_from)

        model.generate = spied  # type: ignore[method-assign]
        platform.models["reference"] = model

    live = start_server(prepare=prepare)
    source = make_mp4(64, 64, 24, 48)
    with live.client() as http:
        made = http.post(
            "/v1/videos/extensions",
            files={"video": ("clip.mp4", source, "video/mp4")},
            data={"prompt": "the boat sails on", "seconds": "3"},
        )
        assert made.status_code == 200, made.text
        video = live.wait_for(made.json()["id"], timeout=120)
        assert video["status"] == "completed", video
        data = http.get(f"/v1/videos/{video['id']}/content", follow_redirects=True).content
    (spec,) = seen
    assert spec.context_video is not None and spec.context_seconds == 2
    assert spec.reference_image is None and spec.seconds == 1
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(source)) as container:
        before = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 72
    assert np.abs(np.stack(frames[:48]).astype(int) - np.stack(before)).mean() < 8
