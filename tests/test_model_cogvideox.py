"""The CogVideoX adapter: its own denoising loop gives the pipeline's video, checkpoints
(with the DPM solver's history and the generator's state) resume to the same video, and
the registry entries build without torch. The pipeline tests run a tiny random-weight
pipeline on the CPU (`make test-diffusers`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from reelgen.models.base import Conditioning, GenerationSpec
from reelgen.models.cogvideox import CogVideoXConfig, CogVideoXModel
from reelgen.models.registry import build_model
from reelgen.settings import Settings

from .helpers import edited_through_the_api, picture, stopped_at

SPEC = GenerationSpec(prompt="a red boat on the sea", seconds=1, width=32, height=32, seed=5, fps=8)


def test_cogvideox_registry_entries_build_without_torch() -> None:
    settings = Settings(default_model="cogvideox-5b")
    model = build_model("cogvideox-5b", settings)
    assert isinstance(model, CogVideoXModel) and model.fps == 8 and model.num_steps(SPEC) == 50
    assert model.config.dynamic_cfg and model.requires == frozenset()
    assert model.accepts == {Conditioning.VIDEO}  # edits
    assert not build_model("cogvideox-2b", settings).config.dynamic_cfg  # type: ignore[attr-defined]
    assert build_model("cogvideox1.5-5b", settings).fps == 16
    i2v = build_model("cogvideox-5b-i2v", settings)
    assert i2v.accepts == i2v.requires == {Conditioning.IMAGE}
    assert i2v.sizes == {"832x480", "1280x720"} and i2v.max_seconds == 6  # registry
    spec = GenerationSpec(prompt="x", seconds=6, width=720, height=480, seed=1, fps=8)
    assert model.estimate_seconds(spec) > 60
    with pytest.raises(ValueError, match="needs its weights"):
        model.load()


@pytest.fixture(scope="module", params=["dpm", "ddim"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from .cogvideox_tiny import build

    return build(tmp_path_factory.mktemp("cogvideox") / "tiny", scheduler=request.param)


def _model(path: Path, dynamic: bool = True, task: str = "t2v", steps: int = 4) -> CogVideoXModel:
    model = CogVideoXModel(
        "cogvideox-tiny",
        CogVideoXConfig(
            path=path, steps=steps, device="cpu", dtype="float32", max_sequence_length=16,
            dynamic_cfg=dynamic, task=task,  # type: ignore[arg-type]
        ),
    )  # fmt: skip
    model.load()
    return model


@pytest.mark.diffusers
def test_cogvideox_own_loop_gives_the_pipelines_video(tiny) -> None:
    import torch

    path = tiny
    model = _model(path)
    steps: list[int] = []
    clip = model.generate(SPEC, lambda info: steps.append(info.step))
    frames = np.stack(list(clip.frames))
    assert steps == [1, 2, 3, 4]
    assert model.geometry(SPEC) == (32, 32, 9)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    expected = model.pipe(
        prompt=SPEC.prompt, negative_prompt="", height=32, width=32, num_frames=9,
        num_inference_steps=4, guidance_scale=6.0, use_dynamic_cfg=True,
        max_sequence_length=16, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    expected = (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8]
    assert np.array_equal(frames, expected)
    assert frames.std() > 1


@pytest.mark.diffusers
def test_cogvideox_checkpoint_resumes_to_the_same_video(tiny) -> None:
    path = tiny
    model = _model(path)
    whole = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    state = stopped_at(model, SPEC, 2)
    other = _model(path)  # another worker's copy
    steps: list[int] = []
    resumed = other.generate(SPEC, lambda info: steps.append(info.step), state)
    assert steps == [3, 4]
    assert np.array_equal(np.stack(list(resumed.frames)), whole)
    with pytest.raises(ValueError, match="another job"):
        _model(path, dynamic=False).generate(SPEC, lambda info: None, state)
    with pytest.raises(ValueError, match="not a checkpoint of CogVideoX"):
        other.generate(SPEC, lambda info: None, b"garbage")


I2V_SPEC = dataclasses.replace(SPEC, reference_image=picture())


@pytest.fixture(scope="module")
def tiny_i2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from .cogvideox_tiny import build

    return build(tmp_path_factory.mktemp("cogvideox") / "tiny-i2v", i2v=True)


@pytest.mark.diffusers
def test_cogvideox_image_to_video_own_loop_gives_the_pipelines_video(tiny_i2v: Path) -> None:
    import io

    import torch
    from PIL import Image

    model = _model(tiny_i2v, task="i2v")
    frames = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    expected = model.pipe(
        image=Image.open(io.BytesIO(picture())).convert("RGB"), prompt=SPEC.prompt,
        negative_prompt="", height=32, width=32, num_frames=9, num_inference_steps=4,
        guidance_scale=6.0, use_dynamic_cfg=True, max_sequence_length=16, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    assert np.array_equal(frames, (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8])
    other = dataclasses.replace(I2V_SPEC, reference_image=picture(3))
    assert not np.array_equal(np.stack(list(model.generate(other, lambda i: None).frames)), frames)
    with pytest.raises(ValueError, match="from an image"):
        model.generate(SPEC, lambda info: None)


@pytest.mark.diffusers
def test_cogvideox_image_to_video_checkpoint_resumes_to_the_same_video(tiny_i2v: Path) -> None:
    model = _model(tiny_i2v, task="i2v")
    whole = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    state = stopped_at(model, I2V_SPEC, 2)
    resumed = _model(tiny_i2v, task="i2v").generate(I2V_SPEC, lambda info: None, state)
    assert np.array_equal(np.stack(list(resumed.frames)), whole)


@pytest.mark.diffusers
def test_cogvideox_learned_positions_run_at_the_trained_size_and_resize(
    tmp_path: Path,
) -> None:
    """CogVideoX-5B-I2V's learned positional embeddings exist for one size and length only
    (the pipeline refuses any other size): the adapter runs there and hands the job's size
    and length."""
    pytest.importorskip("diffusers")
    from .cogvideox_tiny import build

    model = _model(build(tmp_path / "learned", i2v=True, learned=True), task="i2v")
    spec = dataclasses.replace(I2V_SPEC, width=64, height=48)
    assert model.geometry(spec) == (32, 32, 9)
    frames = np.stack(list(model.generate(spec, lambda info: None).frames))
    assert frames.shape == (8, 48, 64, 3) and frames.std() > 1
    state = stopped_at(model, spec, 2)
    resumed = np.stack(list(model.generate(spec, lambda info: None, state).frames))
    assert np.array_equal(resumed, frames)


@pytest.mark.diffusers
def test_cogvideox_edit_own_loop_gives_the_video_to_video_pipelines_video(
    tiny: Path, tmp_path: Path
) -> None:
    """An edit (text-to-video CogVideoX, with the DPM and the DDIM scheduler) makes what
    `CogVideoXVideoToVideoPipeline.__call__` makes from the same clip, strength and seed, in
    the tail of the schedule, and resumes from a checkpoint to the same video."""
    import torch
    from diffusers import CogVideoXVideoToVideoPipeline
    from PIL import Image

    from reelgen.media.decode import read_frames

    from .cog_standin import make_mp4

    model = _model(tiny, steps=10)
    assert model.accepts == {Conditioning.VIDEO}
    source = tmp_path / "source.mp4"
    source.write_bytes(make_mp4(32, 32, 8, 9, audio=False))
    spec = dataclasses.replace(SPEC, source_video=source)
    assert model.num_steps(spec) == 7 and model.num_steps(SPEC) == 10
    steps: list[tuple[int, int]] = []
    frames = np.stack(list(model.generate(spec, lambda i: steps.append((i.step, i.total))).frames))
    assert steps == [(k, 7) for k in range(1, 8)]
    v2v = CogVideoXVideoToVideoPipeline(**model.pipe.components)
    v2v.set_progress_bar_config(disable=True)
    video = [Image.fromarray(f) for f in read_frames(source, 32, 32, 9, fps=SPEC.fps)]
    expected = v2v(
        video=video, prompt=SPEC.prompt, negative_prompt="", height=32, width=32,
        num_inference_steps=10, strength=0.7, guidance_scale=6.0, use_dynamic_cfg=True,
        max_sequence_length=16, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    assert np.array_equal(frames, (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8])
    plain = np.stack(list(_model(tiny, steps=10).generate(SPEC, lambda i: None).frames))
    assert not np.array_equal(plain, frames)

    state = stopped_at(model, spec, 3)
    resumed: list[int] = []
    again = _model(tiny, steps=10).generate(spec, lambda i: resumed.append(i.step), state)
    assert resumed == [4, 5, 6, 7]
    assert np.array_equal(np.stack(list(again.frames)), frames)
    with pytest.raises(ValueError, match="another job"):  # the source is in the fingerprint
        _model(tiny, steps=10).generate(SPEC, lambda i: None, state)


@pytest.mark.diffusers
def test_cogvideox_edit_through_the_api(start_server, tiny: Path) -> None:
    """`POST /v1/videos/edits` with an uploaded clip, served by text-to-video CogVideoX:
    the edit keeps the clip's length and size."""
    assert edited_through_the_api(start_server, _model(tiny)) == 8
