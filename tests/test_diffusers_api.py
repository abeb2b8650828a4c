"""Each diffusers family (wan, ltx, cogvideox) behind the API with real workers: a job
preempted mid-run checkpoints, is handed back, resumes from its checkpoint on a worker and
makes, frame for frame, the video of an uninterrupted job; a cancelled job stops at its next
step and the worker goes on with the next one; an uploaded clip is extended by the
image-capable model of each family, conditioned on the clip's last frame. Tiny random-weight
pipelines on the CPU (`make test-diffusers`); each step is paced so that the test can act
mid-run.

The frames are compared as the model hands them to the encoder: libx264's output for the
same frames is not bit-identical from run to run when the machine is busy."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reelgen.models.base import GenerationSpec, StepCallback

FAMILIES = ["wan", "ltx", "cogvideox"]
STEP_S = 0.02


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import torch

    torch.set_num_threads(1)  # sums in one order, whichever worker thread runs a step
    name = request.param
    root = tmp_path_factory.mktemp(name) / "tiny"
    if name == "wan":
        from .wan_tiny import build
    elif name == "ltx":
        from .ltx_tiny import build  # type: ignore[assignment]
    else:
        from .cogvideox_tiny import build  # type: ignore[assignment]
    return name, build(root)


def _adapter(
    name: str,
    path: Path,
    steps: int,
    made: dict[str, list[str]] | None = None,
    task: str = "t2v",
    images: list[bytes] | None = None,
) -> Any:
    """The family's adapter, serving as the test server's model, each step paced; `made`:
    each run's frames (hashed) by job id, as the encoder receives them; `images`: the
    reference image of each run."""
    common: dict[str, Any] = dict(
        path=path, steps=steps, device="cpu", dtype="float32", max_sequence_length=16
    )
    if name == "wan":
        from reelgen.models.wan import WanConfig, WanModel

        model: Any = WanModel("reference", WanConfig(**common, task=task))  # type: ignore[arg-type]
    elif name == "ltx":
        from reelgen.models.ltx import LtxConfig, LtxModel

        model = LtxModel("reference", LtxConfig(**common, fps=8))
    else:
        from reelgen.models.cogvideox import CogVideoXConfig, CogVideoXModel

        model = CogVideoXModel(
            "reference",
            CogVideoXConfig(**common, dynamic_cfg=True, task=task),  # type: ignore[arg-type]
        )
    model.load()
    generate = model.generate

    def paced(spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None):
        if images is not None and spec.reference_image is not None:
            images.append(spec.reference_image)

        def step(info: Any) -> None:
            time.sleep(STEP_S)
            on_step(info)

        clip = generate(spec, step, resume_from)
        if made is not None:
            frames = clip.frames

            def hashed() -> Any:
                seen = made.setdefault(spec.run_id.split(":")[0], [])
                for frame in frames:
                    seen.append(hashlib.sha256(frame.tobytes()).hexdigest())
                    yield frame

            clip.frames = hashed()
        return clip

    model.generate = paced
    return model


def _wait_step(live, video_id: str, step: int) -> None:
    deadline = time.monotonic() + 60
    while (job := live.platform.jobs.get(video_id)) is not None and job.step < step:
        assert time.monotonic() < deadline, (job.status, job.stage, job.step, job.error_code)
        time.sleep(0.01)


def _frames(data: bytes) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.diffusers
def test_job_through_the_api_preempted_and_resumed(start_server, family) -> None:
    name, path = family

    made: dict[str, list[str]] = {}

    def prepare(platform) -> None:
        platform.models["reference"] = _adapter(name, path, steps=16, made=made)

    live = start_server(workers=2, prepare=prepare, checkpoint_every_steps=1)
    fps = live.platform.models["reference"].fps
    body = {"prompt": "a blue cat", "seconds": "1", "size": "64x64", "seed": 11}
    with live.client() as http:
        preempted = http.post("/v1/videos", json=body).json()["id"]
        _wait_step(live, preempted, 5)
        assert live.platform.jobs.request_preempt(preempted, live.platform.clock())
        assert live.wait_for(preempted, timeout=120)["status"] == "completed"
        whole = http.post("/v1/videos", json=body).json()["id"]
        assert live.wait_for(whole, timeout=120)["status"] == "completed"
        clips = [
            http.get(f"/v1/videos/{v}/content", follow_redirects=True).content
            for v in (preempted, whole)
        ]
    events = live.platform.jobs.events_after(preempted)
    released = [e for e in events if e.kind == "released"]
    assert len(released) == 1 and released[0].payload.reason == "preempted"
    starts = [e for e in events if e.kind == "started"]
    assert len(starts) == 2 and starts[1].payload.resume_step == released[0].payload.step > 0
    assert len(made[preempted]) == fps and made[preempted] == made[whole]
    a, b = _frames(clips[0]), _frames(clips[1])
    assert a.shape == b.shape == (fps, 64, 64, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 5  # the same frames, encoded twice


@pytest.mark.diffusers
def test_job_through_the_api_cancelled_mid_run(start_server, family) -> None:
    name, path = family

    def prepare(platform) -> None:
        platform.models["reference"] = _adapter(name, path, steps=200)

    live = start_server(prepare=prepare, checkpoint_every_steps=1000)
    with live.client() as http:
        body = {"prompt": "a red boat", "seconds": "1", "size": "64x64"}
        cancelled = http.post("/v1/videos", json=body).json()["id"]
        _wait_step(live, cancelled, 2)
        assert http.post(f"/v1/videos/{cancelled}/cancel").status_code == 200
        done = live.wait_for(cancelled, timeout=60)
        assert done["status"] == "failed" and done["error"]["code"] == "cancelled", done
        job = live.platform.jobs.get(cancelled)
        assert job is not None and job.step < 200
        kinds = [e.kind for e in live.platform.jobs.events_after(cancelled)]
        assert kinds[-2:] == ["cancel_requested", "cancelled"]
        quick = http.post(
            "/v1/videos", json={**body, "seconds": "1"}, headers={"Idempotency-Key": "next"}
        ).json()["id"]
        _wait_step(live, quick, 1)  # the worker took the next job
        assert http.post(f"/v1/videos/{quick}/cancel").status_code == 200
        assert live.wait_for(quick, timeout=60)["error"]["code"] == "cancelled"


@pytest.fixture(scope="module", params=FAMILIES)
def image_family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Each family's image-to-video model: Wan 2.2 I2V's layout, LTX-Video (one model for
    both), CogVideoX I2V."""
    import torch

    torch.set_num_threads(1)
    name = request.param
    root = tmp_path_factory.mktemp(name) / "tiny-i2v"
    if name == "wan":
        from .wan_tiny import build

        return name, build(root, "i2v"), "i2v"
    if name == "ltx":
        from .ltx_tiny import build as build_ltx

        return name, build_ltx(root), "t2v"
    from .cogvideox_tiny import build as build_cogvideox

    return name, build_cogvideox(root, i2v=True), "i2v"


@pytest.mark.diffusers
def test_job_through_the_api_extends_an_uploaded_clip(start_server, image_family) -> None:
    from PIL import Image

    from .cog_standin import make_mp4

    name, path, task = image_family
    images: list[bytes] = []

    def prepare(platform) -> None:
        platform.models["reference"] = _adapter(name, path, steps=4, task=task, images=images)

    live = start_server(prepare=prepare)
    fps = live.platform.models["reference"].fps
    source = make_mp4(64, 64, fps, fps)
    with live.client() as http:
        made = http.post(
            "/v1/videos/extensions",
            files={"video": ("source.mp4", source, "video/mp4")},
            data={"prompt": "the boat sails on", "seconds": "2"},
        )
        assert made.status_code == 200, made.text
        video = live.wait_for(made.json()["id"], timeout=120)
        assert video["status"] == "completed" and video["seconds"] == "2", video
        data = http.get(f"/v1/videos/{video['id']}/content", follow_redirects=True).content
    out, before = _frames(data).astype(int), _frames(source).astype(int)
    assert out.shape == (2 * fps, 64, 64, 3)
    assert np.abs(out[:fps] - before).mean() < 8  # the source first, encoded again
    (image,) = images  # the model was conditioned on the source's last frame
    last = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).astype(int)
    assert last.shape == (64, 64, 3) and np.abs(last - before[-1]).mean() < 8


@pytest.mark.diffusers
def test_wan_small_jobs_through_the_api_run_as_one_batch(start_server, family) -> None:
    """Four small clips of one size queue while the worker is busy: the dispatcher gives
    them to the worker together and it runs them in one batch. One is cancelled mid-run and
    ends cancelled; one is preempted mid-run, handed back with its checkpoint and resumed
    alone; the others complete. Each completed clip has the frames its job makes alone (up
    to rounding)."""
    name, path = family
    if name != "wan":
        pytest.skip("batches: Wan text-to-video")
    from reelgen.scheduler.cost import measured_models

    hold = threading.Event()
    batches: list[list[str]] = []
    made: dict[str, list[str]] = {}

    def prepare(platform) -> None:
        model = _adapter(name, path, steps=40, made=made)
        model.config = dataclasses.replace(model.config, cost=measured_models()["1.3B"])
        generate, generate_batch = model.generate, model.generate_batch

        def held(spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None):
            def step(info: Any) -> None:
                on_step(info)
                if info.step == 1:  # the first job waits here while the small ones queue
                    hold.wait(60)

            return generate(spec, step, resume_from)

        def paced(specs: list[GenerationSpec], on_steps: list[StepCallback]) -> list[Any]:
            batches.append([s.run_id.split(":")[0] for s in specs])

            def step(on_step: StepCallback) -> StepCallback:
                def call(info: Any) -> None:
                    time.sleep(STEP_S)
                    on_step(info)

                return call

            return generate_batch(specs, [step(c) for c in on_steps])

        model.generate, model.generate_batch = held, paced
        platform.models["reference"] = model

    live = start_server(prepare=prepare, checkpoint_every_steps=1000)
    small = {"seconds": "1", "size": "64x64"}
    prompts = [("a red boat", 3), ("green hills", 4), ("a small cat", 5), ("rain at dusk", 6)]
    with live.client() as http:
        first = http.post("/v1/videos", json={**small, "seconds": "2", "prompt": "a long pan"})
        _wait_step(live, first.json()["id"], 1)
        ids = [
            http.post("/v1/videos", json={**small, "prompt": p, "seed": seed}).json()["id"]
            for p, seed in prompts
        ]
        time.sleep(1.0)  # the dispatcher reads them
        hold.set()
        _wait_step(live, ids[1], 3)
        assert http.post(f"/v1/videos/{ids[1]}/cancel").status_code == 200
        assert live.platform.jobs.request_preempt(ids[3], live.platform.clock())
        done = [live.wait_for(i, timeout=120) for i in ids]
        alone = {}
        for k in (0, 3):
            body = {**small, "prompt": prompts[k][0], "seed": prompts[k][1]}
            alone[k] = http.post("/v1/videos", json=body).json()["id"]
            assert live.wait_for(alone[k], timeout=120)["status"] == "completed"
        clips = {
            v: _frames(http.get(f"/v1/videos/{v}/content", follow_redirects=True).content)
            for v in (ids[0], ids[3], *alone.values())
        }
    assert batches == [ids]  # the preempted job resumed alone
    assert [d["status"] for d in done] == ["completed", "failed", "completed", "completed"], done
    assert done[1]["error"]["code"] == "cancelled"
    events = {i: live.platform.jobs.events_after(i) for i in ids}
    first_starts = [next(e for e in events[i] if e.kind == "started") for i in ids]
    assert len({(e.at, e.payload.worker_id) for e in first_starts}) == 1  # one claim
    (released,) = [e for e in events[ids[3]] if e.kind == "released"]
    assert released.payload.reason == "preempted"
    (cancelled,) = [e for e in events[ids[1]] if e.kind == "cancelled"]
    batch_done = next(e.at for e in events[ids[0]] if e.kind == "completed")
    assert cancelled.at < batch_done and released.at < batch_done  # at once, not at the end
    resumed = [e for e in events[ids[3]] if e.kind == "started"][1]
    assert resumed.payload.resume_step == released.payload.step > 0
    for k in (0, 3):
        a, b = clips[ids[k]], clips[alone[k]]
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 5
