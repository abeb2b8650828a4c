"""The Wan back-end (diffusers) on a tiny random-weight pipeline built offline: load from a
local directory, the adapter's own denoising loop against the pipeline's own output, a
checkpoint that resumes to the same video (also with flow-matching Euler), cancel from the
step callback, and a whole job through a live server, preempted on one worker and resumed
on another. The `diffusers` tier: `make test` runs it in a venv with the CPU build of torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from reelgen.models.base import Conditioning, GenerationSpec
from reelgen.models.registry import build_model, served
from reelgen.models.wan import WanConfig, WanModel
from reelgen.scheduler.cost import measured_models
from reelgen.settings import Settings

from .helpers import Stopped, edited_through_the_api, picture, stopped_at

SPEC = GenerationSpec(prompt="a red boat on the sea", seconds=1, width=32, height=32, seed=5, fps=8)


def test_wan_registry_entries_build_without_torch() -> None:
    """The API side prices Wan jobs without loading anything."""
    settings = Settings(default_model="wan2.1-t2v-1.3b")
    assert served(settings) == ("reference", "wan2.1-t2v-1.3b")  # sora-2 maps to reference
    model = build_model("wan2.1-t2v-1.3b", settings)
    assert isinstance(model, WanModel) and model.fps == 16 and model.num_steps(SPEC) == 50
    big = build_model("wan2.1-t2v-14b", settings)
    spec = GenerationSpec(prompt="x", seconds=5, width=1280, height=720, seed=1, fps=16)
    assert big.estimate_seconds(spec) > 3 * model.estimate_seconds(spec) > 60  # cost model
    with pytest.raises(ValueError, match="needs its weights"):
        model.load()
    assert model.accepts == {Conditioning.VIDEO} and model.requires == frozenset()  # edits
    i2v = build_model("wan2.2-i2v-a14b", settings)
    assert i2v.accepts == i2v.requires == {Conditioning.IMAGE}
    ti2v = build_model("wan2.2-ti2v-5b", settings)
    assert ti2v.accepts == {Conditioning.IMAGE} and ti2v.requires == frozenset()
    assert ti2v.fps == 24
    source = dataclasses.replace(SPEC, source_video=Path("clip.mp4"))
    faint = WanModel("wan", WanConfig(path=None, steps=4, edit_strength=0.01))
    assert faint.num_steps(source) == 1  # an edit runs one step at least
    from reelgen.models.registry import _wan

    with pytest.raises(ValueError, match=r"edit_strength 1.5; it must be in \(0, 1\]"):
        _wan("wan-x", {"adapter": "wan", "edit_strength": 1.5}, None)
    with pytest.raises(ValueError, match="sizes must be"):
        _wan("wan-x", {"adapter": "wan", "sizes": ["100x100"]}, None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from .wan_tiny import build

    return build(tmp_path_factory.mktemp("wan") / "tiny-wan")


def _model(path: Path, steps: int = 4) -> WanModel:
    model = WanModel(
        "wan-tiny",
        WanConfig(path=path, steps=steps, device="cpu", dtype="float32", max_sequence_length=16),
    )
    model.load()
    return model


@pytest.mark.diffusers
def test_wan_own_loop_gives_the_pipelines_video(tiny: Path) -> None:
    import torch

    model = _model(tiny)
    steps: list[int] = []
    clip = model.generate(SPEC, lambda info: steps.append(info.step))
    frames = np.stack(list(clip.frames))
    assert steps == [1, 2, 3, 4]
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert model.geometry(SPEC) == (32, 32, 9)  # 4k + 1 frames, the extra one dropped
    expected = model.pipe(
        prompt=SPEC.prompt, negative_prompt="", height=32, width=32, num_frames=9,
        num_inference_steps=4, guidance_scale=5.0, max_sequence_length=16, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    expected = (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8]
    assert np.array_equal(frames, expected)
    assert frames.std() > 1  # not a blank clip


@pytest.mark.diffusers
@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_wan_checkpoint_resumes_to_the_same_video(tiny: Path, scheduler: str) -> None:
    model = _model(tiny)
    if scheduler == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        model.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    whole = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    state = stopped_at(model, SPEC, 2)
    other = _model(tiny)  # another worker's copy
    other.pipe.scheduler = model.pipe.scheduler
    steps: list[int] = []
    resumed = other.generate(SPEC, lambda info: steps.append(info.step), state)
    assert steps == [3, 4]
    assert np.array_equal(np.stack(list(resumed.frames)), whole)
    with pytest.raises(ValueError, match="another job"):
        other.generate(dataclasses.replace(SPEC, seed=6), lambda info: None, state)
    with pytest.raises(ValueError, match="not a checkpoint of Wan"):
        other.generate(SPEC, lambda info: None, b"garbage")


@pytest.mark.diffusers
@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_wan_batch_makes_each_clip_as_alone_and_a_member_leaves_resumable(
    tiny: Path, scheduler: str
) -> None:
    """Three jobs in one run: each clip is the one its job makes alone, up to rounding (a
    forward over a batch may round differently). The second is stopped at step 2 (a cancel
    or preempt): the others go on, and its checkpoint resumes alone, on another worker, to
    its own video."""
    model = _model(tiny)
    if scheduler == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        model.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    specs = [
        SPEC,
        dataclasses.replace(SPEC, prompt="green hills under snow", seed=9),
        dataclasses.replace(SPEC, prompt="a cat", seed=11),
    ]
    alone = [np.stack(list(model.generate(s, lambda info: None).frames)) for s in specs]
    assert model.batch_key(specs[0]) == model.batch_key(specs[2]) is not None
    saved: list[bytes] = []
    seen: list[tuple[int, int]] = []

    def leaves(info) -> None:  # type: ignore[no-untyped-def]
        seen.append((1, info.step))
        if info.step == 2:
            saved.append(info.snapshot())
            raise Stopped

    out = model.generate_batch(
        specs, [lambda info: seen.append((0, info.step)), leaves, lambda info: None]
    )
    assert isinstance(out[1], Stopped)
    assert [s for who, s in seen if who == 1] == [1, 2]  # not called after it left
    assert [s for who, s in seen if who == 0] == [1, 2, 3, 4]
    for k in (0, 2):
        clip = out[k]
        assert not isinstance(clip, Exception)
        assert _close(np.stack(list(clip.frames)), alone[k])
    other = _model(tiny)
    other.pipe.scheduler = model.pipe.scheduler
    steps: list[int] = []
    resumed = other.generate(specs[1], lambda info: steps.append(info.step), saved[0])
    assert steps == [3, 4]
    assert _close(np.stack(list(resumed.frames)), alone[1])


def _close(frames: np.ndarray, expected: np.ndarray) -> bool:
    return frames.shape == expected.shape and int(np.abs(frames - expected.astype(int)).max()) <= 2


def test_wan_batches_only_text_jobs_of_one_shape() -> None:
    cost = measured_models()["1.3B"]
    model = WanModel("wan", WanConfig(path=None, steps=4, cost=cost))
    small = GenerationSpec(prompt="x", seconds=1, width=448, height=256, seed=1, fps=16)
    assert model.batch_key(small) == model.batch_key(dataclasses.replace(small, seed=2))
    assert model.batch_key(small) != model.batch_key(dataclasses.replace(small, seconds=2))
    assert model.batch_key(dataclasses.replace(small, reference_image=b"png")) is None
    assert model.batch_key(dataclasses.replace(small, source_video=Path("a.mp4"))) is None
    assert model.batch_gain(small, 4) > 1.3  # small clips: mostly fixed cost per forward
    full = GenerationSpec(prompt="x", seconds=5, width=832, height=480, seed=1, fps=16)
    assert model.batch_gain(full, 4) < 1.02
    i2v = WanModel("wan-i2v", WanConfig(path=None, task="i2v"))
    assert i2v.batch_key(small) is None
    with pytest.raises(ValueError, match="cannot share a run"):
        model.generate_batch([small, dataclasses.replace(small, width=256)], [print, print])


I2V_SPEC = dataclasses.replace(SPEC, reference_image=picture())


@pytest.fixture(scope="module", params=["i2v", "i2v-clip", "ti2v"])
def tiny_i2v(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from .wan_tiny import build

    task = request.param
    return task, build(tmp_path_factory.mktemp("wan") / f"tiny-{task}", task)


def _i2v_model(task: str, path: Path) -> WanModel:
    model = WanModel(
        "wan-tiny-i2v",
        WanConfig(
            path=path, steps=4, device="cpu", dtype="float32", max_sequence_length=16,
            task="i2v" if task == "i2v-clip" else task,  # type: ignore[arg-type]
        ),
    )  # fmt: skip
    model.load()
    return model


@pytest.mark.diffusers
def test_wan_image_to_video_own_loop_gives_the_pipelines_video(tiny_i2v) -> None:
    """Each image-to-video layout: the adapter's loop makes, frame for frame, what
    `WanImageToVideoPipeline.__call__` makes from the same image and seed."""
    import io

    import torch
    from PIL import Image

    task, path = tiny_i2v
    model = _i2v_model(task, path)
    assert Conditioning.IMAGE in model.accepts
    assert model.requires == (frozenset() if task == "ti2v" else {Conditioning.IMAGE})
    frames = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    image = Image.open(io.BytesIO(picture())).convert("RGB")
    expected = model.pipe(
        image=image, prompt=SPEC.prompt, negative_prompt="", height=32, width=32, num_frames=9,
        num_inference_steps=4, guidance_scale=5.0, max_sequence_length=16, output_type="np",
        generator=torch.Generator().manual_seed(SPEC.seed),
    ).frames[0]  # fmt: skip
    expected = (np.clip(expected, 0, 1) * 255 + 0.5).astype(np.uint8)[:8]
    assert np.array_equal(frames, expected)
    other = np.stack(
        list(
            model.generate(
                dataclasses.replace(I2V_SPEC, reference_image=picture(3)),
                lambda info: None,
            ).frames
        )
    )
    assert not np.array_equal(other, frames)  # the image conditions the clip
    if task == "ti2v":  # text alone: WanPipeline's video
        from diffusers import WanPipeline

        text = np.stack(list(model.generate(SPEC, lambda info: None).frames))
        parts = {k: v for k, v in model.pipe.components.items() if not k.startswith("image_")}
        t2v = WanPipeline(**parts, expand_timesteps=True)
        t2v.set_progress_bar_config(disable=True)
        want = t2v(
            prompt=SPEC.prompt, negative_prompt="", height=32, width=32, num_frames=9,
            num_inference_steps=4, guidance_scale=5.0, max_sequence_length=16,
            output_type="np", generator=torch.Generator().manual_seed(SPEC.seed),
        ).frames[0]  # fmt: skip
        assert np.array_equal(text, (np.clip(want, 0, 1) * 255 + 0.5).astype(np.uint8)[:8])
    else:
        with pytest.raises(ValueError, match="from an image"):
            model.generate(SPEC, lambda info: None)


@pytest.mark.diffusers
def test_wan_image_to_video_checkpoint_resumes_to_the_same_video(tiny_i2v) -> None:
    task, path = tiny_i2v
    model = _i2v_model(task, path)
    whole = np.stack(list(model.generate(I2V_SPEC, lambda info: None).frames))
    state = stopped_at(model, I2V_SPEC, 2)
    other = _i2v_model(task, path)
    steps: list[int] = []
    resumed = other.generate(I2V_SPEC, lambda info: steps.append(info.step), state)
    assert steps == [3, 4]
    assert np.array_equal(np.stack(list(resumed.frames)), whole)
    another = dataclasses.replace(I2V_SPEC, reference_image=picture(3))
    with pytest.raises(ValueError, match="another job"):
        other.generate(another, lambda info: None, state)


@pytest.mark.diffusers
def test_wan_image_to_video_through_the_api(start_server, tmp_path: Path) -> None:
    """An image-to-video model behind the API: a request with `input_reference` reaches the
    worker's pipeline and makes a clip; one without is refused before anything is queued."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import io

    import av

    from .wan_tiny import build

    path = build(tmp_path / "tiny-i2v", "i2v")

    def prepare(platform) -> None:
        model = _i2v_model("i2v", path)
        model.name = "reference"
        platform.models["reference"] = model

    live = start_server(prepare=prepare)
    with live.client() as http:
        refused = http.post("/v1/videos", json={"prompt": "a red boat", "size": "64x64"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "missing_input"
        made = http.post(
            "/v1/videos",
            files={"input_reference": ("p.png", picture(), "image/png")},
            data={"prompt": "a red boat", "size": "64x64", "seconds": "1", "seed": "3"},
        )
        assert made.status_code == 200, made.text
        video = live.wait_for(made.json()["id"], timeout=120)
        assert video["status"] == "completed", video
        data = http.get(f"/v1/videos/{video['id']}/content", follow_redirects=True).content
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 16 and frames[0].shape == (64, 64, 3)


def _source_clip(path: Path) -> Path:
    from .cog_standin import make_mp4

    path.write_bytes(make_mp4(32, 32, 8, 9, audio=False))
    return path


@pytest.mark.diffusers
def test_wan_edit_own_loop_gives_the_video_to_video_pipelines_video(
    tiny: Path, tmp_path: Path
) -> None:
    """An edit (text-to-video Wan) makes what `WanVideoToVideoPipeline.__call__` makes from
    the same clip, strength and seed, in the tail of the schedule, and resumes from a
    checkpoint to the same video."""
    import torch
    from diffusers import WanVideoToVideoPipeline
    from PIL import Image

    from reelgen.media.decode import read_frames

    model = _model(tiny, steps=10)
    assert Conditioning.VIDEO in model.accepts
    source = _source_clip(tmp_path / "source.mp4")
    spec = dataclasses.replace(SPEC, source_video=source)
    assert model.num_steps(spec) == 7 and model.num_steps(SPEC) == 10
    assert model.estimate_seconds(spec) < model.estimate_seconds(SPEC)
    steps: list[tuple[int, int]] = []
    frames = np.stack(list(model.generate(spec, lambda i: steps.append((i.step, i.total))).frames))
    assert steps == [(k, 7) for k in range(1, 8)]
    parts = {k: v for k, v in model.pipe.components.items() if k != "transformer_2"}
    v2v = WanVideoToVideoPipeline(**parts)
    v2v.set_progress_bar_config(disable=True)
    video = [Image.fromarray(f) for f in read_frames(source, 32, 32, 9, fps=SPEC.fps)]
    expected = v2v(
        video=video, prompt=SPEC.prompt, negative_prompt="", height=32, width=32,
        num_inference_steps=10, strength=0.7, guidance_scale=5.0, max_sequence_length=16,
        output_type="np", generator=torch.Generator().manual_seed(SPEC.seed),
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
def test_wan_edit_through_the_api(start_server, tiny: Path) -> None:
    """`POST /v1/videos/edits` with an uploaded clip, served by text-to-video Wan: the edit
    keeps the clip's length and size."""
    assert edited_through_the_api(start_server, _model(tiny, steps=4)) == 16


@pytest.mark.diffusers
def test_wan_compiled_transformer_gives_the_same_video(tiny: Path) -> None:
    """`compile` (registry) puts `torch.compile` on the transformer at load; the video is
    the eager one's (the CPU build of torch compiles with its C++ backend here)."""
    eager = np.stack(list(_model(tiny).generate(SPEC, lambda info: None).frames))
    model = WanModel(
        "wan-tiny",
        WanConfig(
            path=tiny, steps=4, device="cpu", dtype="float32", max_sequence_length=16,
            compile=True,
        ),
    )  # fmt: skip
    model.load()
    assert type(model.pipe.transformer).__name__ == "OptimizedModule"
    compiled = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1
    offloaded = WanModel(
        "wan-tiny", WanConfig(path=tiny, device="cpu", compile=True, cpu_offload=True)
    )
    with pytest.raises(ValueError, match="cpu_offload"):
        offloaded.load()


@pytest.mark.diffusers
def test_wan_parked_in_host_memory_and_loaded_again_makes_the_same_video(tiny: Path) -> None:
    """A multi-model worker's switch: `park` points every weight at a host copy (pinned on
    CUDA; a tensor two modules share stays shared) and `load` copies them back; the video
    afterwards is the one from before."""
    model = _model(tiny)
    before = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    model.park()
    host = model._host
    assert host is not None and len(host.hosts) < len(host.slots)  # UMT5's tied embedding
    copies = {t.data_ptr() for t in host.hosts}
    for component in model.pipe.components.values():
        for tensor in [*getattr(component, "parameters", list)()]:
            assert tensor.data_ptr() in copies
    encoder = model.pipe.text_encoder
    assert encoder.shared.weight.data_ptr() == encoder.encoder.embed_tokens.weight.data_ptr()
    model.park()  # parked already: nothing moves
    model.load()
    after = np.stack(list(model.generate(SPEC, lambda info: None).frames))
    assert np.array_equal(before, after)
    model.park()
    model.load()
    assert np.array_equal(before, np.stack(list(model.generate(SPEC, lambda i: None).frames)))


@pytest.mark.diffusers
def test_wan_and_the_reference_model_on_one_worker_through_the_api(
    start_server, tiny: Path
) -> None:
    """One worker serving the reference model and Wan: Wan's jobs run after switches (the
    reference model starts on the device), and their frames are, bit for bit, the ones a
    Wan that never moved makes."""
    made: list[np.ndarray] = []

    def prepare(platform) -> None:
        model = _model(tiny)
        generate = model.generate

        def kept(spec, on_step, resume_from=None):  # type: ignore[no-untyped-def]
            clip = generate(spec, on_step, resume_from)
            frames = list(clip.frames)
            made.append(np.stack(frames))
            clip.frames = iter(frames)
            return clip

        model.generate = kept  # type: ignore[method-assign]
        platform.models["wan-tiny"] = model

    live = start_server(prepare=prepare, serves=("reference", "wan-tiny"))
    body = {"prompt": "a red boat on the sea", "seconds": "1", "size": "64x64", "seed": 5}
    with live.client() as http:
        for model in ["wan-tiny", "reference", "wan-tiny"]:
            video_id = http.post("/v1/videos", json={**body, "model": model}).json()["id"]
            video = live.wait_for(video_id, timeout=120)
            assert video["status"] == "completed", video
    switches = live.platform.metrics.model_switches
    assert switches.labels("reference", "wan-tiny")._value.get() == 2
    assert switches.labels("wan-tiny", "reference")._value.get() == 1
    spec = GenerationSpec(prompt=body["prompt"], seconds=1, width=64, height=64, seed=5, fps=16)
    unmoved = np.stack(list(_model(tiny).generate(spec, lambda info: None).frames))
    assert len(made) == 2
    for frames in made:
        assert np.array_equal(frames, unmoved)
