"""The remote adapter: a worker drives an inference service that speaks Cog's HTTP
predictions API (a stand-in server on loopback), by polling and by webhook, with progress
from its logs, cancel, failures, and the whole path through a live server."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import av
import numpy as np
import pytest

from reelgen.models.base import GenerationSpec, StepInfo
from reelgen.models.cog import CogConfig, CogModel
from reelgen.models.registry import available, build_model, served
from reelgen.settings import Settings

from .cog_standin import CogStandIn

SPEC = GenerationSpec(
    prompt="a paper boat on a stream", seconds=1, width=160, height=96, seed=7, run_id="job:1"
)


@pytest.fixture
def standin() -> Iterator[CogStandIn]:
    server = CogStandIn()
    yield server
    server.close()


def _model(standin: CogStandIn, **extra: object) -> CogModel:
    extra = {"polling": True, **extra} if "webhook_listen" not in extra else extra
    model = CogModel("remote", CogConfig(url=standin.url, steps=8, poll_interval_s=0.02, **extra))
    model.load()
    return model


@pytest.mark.parametrize("mode", ["poll", "webhook"])
def test_a_prediction_runs_to_a_clip_with_progress(standin: CogStandIn, mode: str) -> None:
    extra = {"webhook_listen": "127.0.0.1:0"} if mode == "webhook" else {}
    model = _model(standin, **extra)
    seen: list[int] = []
    clip = model.generate(SPEC, lambda info: seen.append(info.step))
    frames = list(clip.frames)
    assert len(frames) == SPEC.num_frames == clip.num_frames
    assert frames[0].shape == (96, 160, 3) and frames[0].dtype == np.uint8
    assert frames[0][:, -1, 0].mean() > 200 > frames[0][:, 0, 0].mean()  # the service's image
    assert clip.audio.shape == (2, 48_000) and np.abs(clip.audio).max() > 0.1
    assert seen == sorted(seen) and seen[-1] == 8 and len(set(seen)) > 3
    [prediction] = standin.predictions.values()
    assert prediction.input["prompt"] == SPEC.prompt
    assert prediction.input["num_frames"] == 24 and prediction.input["num_inference_steps"] == 8
    if mode == "webhook":
        assert standin.webhooks_sent > 3 and standin.puts == 1  # told, never asked again
    else:
        assert standin.puts > 3 and standin.webhooks_sent == 0


def test_the_same_attempt_finds_the_same_prediction(standin: CogStandIn) -> None:
    model = _model(standin)
    model.generate(SPEC, lambda info: None)
    model.generate(SPEC, lambda info: None)
    assert len(standin.predictions) == 1  # a retried attempt does not start a second run
    model.generate(dataclasses.replace(SPEC, run_id="job:2"), lambda info: None)
    assert len(standin.predictions) == 2  # the next attempt is a new prediction


def test_cancel_from_the_step_callback_cancels_the_prediction(standin: CogStandIn) -> None:
    model = _model(standin)

    class Stop(Exception):
        pass

    def on_step(info: StepInfo) -> None:
        assert info.snapshot is None  # a remote run keeps no checkpoint
        if info.step >= 3:
            raise Stop

    with pytest.raises(Stop):
        model.generate(SPEC, on_step)
    assert list(standin.cancelled) == list(standin.predictions)
    [prediction] = standin.predictions.values()
    prediction.cancel.wait(1)
    with pytest.raises(ValueError, match="cannot be resumed"):
        model.generate(SPEC, lambda info: None, resume_from=b"x")


def test_a_failed_prediction_fails_the_attempt_with_its_error(standin: CogStandIn) -> None:
    model = _model(standin)
    spec = dataclasses.replace(SPEC, prompt="explode", run_id="j:9")
    with pytest.raises(RuntimeError, match="failed: CUDA out of memory"):
        model.generate(spec, lambda info: None)
    unreachable = CogModel(
        "x", CogConfig(url="http://127.0.0.1:9", poll_interval_s=0.01, polling=True)
    )
    with pytest.raises(RuntimeError, match="unreachable"):
        unreachable.generate(SPEC, lambda info: None)


def test_remote_models_come_from_the_settings(standin: CogStandIn) -> None:
    settings = Settings(
        remote_models={"wan-remote": {"url": standin.url, "steps": 8, "polling": True}}
    )
    assert "wan-remote" in available(settings) and "wan2.1-t2v-1.3b" in available(settings)
    assert served(settings) == ("reference", "wan-remote")  # wan2.1 is not named: not offered
    model = build_model("wan-remote", settings)
    assert isinstance(model, CogModel) and model.num_steps(SPEC) == 8
    with pytest.raises(ValueError, match="http"):
        Settings(remote_models={"x": {"url": "ftp://nowhere", "polling": True}})
    with pytest.raises(ValueError, match="only by webhook"):  # Cog does not answer polls
        Settings(remote_models={"x": {"url": standin.url}})
    with pytest.raises(ValueError, match="only by webhook"):
        CogModel("x", CogConfig(url=standin.url)).load()


def test_through_the_api_a_remote_model_makes_the_video(start_server, standin) -> None:
    def prepare(platform) -> None:  # the remote service serves what the worker serves
        platform.models["reference"] = CogModel(
            "reference", CogConfig(url=standin.url, steps=8, poll_interval_s=0.02, polling=True)
        )

    live = start_server(prepare=prepare)
    with live.client() as http:
        created = http.post(
            "/v1/videos", json={"prompt": "a paper boat", "seconds": "1", "size": "256x144"}
        ).json()
        video = live.wait_for(created["id"])
        assert video["status"] == "completed", video
        got = http.get(f"/v1/videos/{video['id']}/content", follow_redirects=True)
        assert got.status_code == 200
    with av.open(io.BytesIO(got.content)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (256, 144)
        assert sum(1 for _ in container.decode(stream)) == 24

    standin.step_s = 0.5  # long enough to cancel midway
    with live.client() as http:
        created = http.post(
            "/v1/videos", json={"prompt": "a slow boat", "seconds": "1", "size": "256x144"}
        ).json()
        standin.wait_until("running")
        assert http.post(f"/v1/videos/{created['id']}/cancel").status_code == 200
        cancelled = live.wait_for(created["id"])
    assert cancelled["status"] == "failed" and cancelled["error"]["code"] == "cancelled", cancelled
    assert standin.cancelled  # the service was told


def test_inputs_the_service_takes_decide_what_the_api_offers(
    start_server, standin, tmp_path
) -> None:
    """The default mapping sends no source video, so the API refuses to edit with that model
    (rather than making a clip that ignores the source); a service that maps `source_video`
    gets the clip as a data URL; one that maps no image refuses reference images."""
    from reelgen.models.base import Conditioning
    from reelgen.models.cog import DEFAULT_INPUTS

    from .cog_standin import make_mp4
    from .helpers import png_bytes

    assert CogModel("r", CogConfig(url=standin.url)).accepts == {Conditioning.IMAGE}
    editing = _model(standin, inputs={**DEFAULT_INPUTS, "source_video": "video"})
    assert editing.accepts == {Conditioning.IMAGE, Conditioning.VIDEO}
    source = tmp_path / "source.mp4"
    source.write_bytes(make_mp4(160, 96, 24, 24))
    clip = editing.generate(dataclasses.replace(SPEC, source_video=source), lambda _: None)
    assert len(list(clip.frames)) == clip.num_frames
    (sent,) = standin.predictions.values()
    assert sent.input["video"].startswith("data:video/mp4;base64,")

    def prepare(platform) -> None:
        platform.models["reference"] = CogModel(
            "reference",
            CogConfig(
                url=standin.url,
                steps=8,
                polling=True,
                inputs={**DEFAULT_INPUTS, "reference_image": ""},
            ),
        )

    live = start_server(prepare=prepare)
    with live.client() as http:
        edit = http.post(
            "/v1/videos/edits",
            files={"video": ("a.mp4", make_mp4(256, 144, 24, 24), "video/mp4")},
            data={"prompt": "a paper boat at night"},
        )
        assert edit.status_code == 400, edit.text
        error = edit.json()["error"]
        assert error["code"] == "unsupported_input" and error["param"] == "video"
        assert "cannot edit videos" in error["message"]
        image = http.post(
            "/v1/videos",
            files={"input_reference": ("a.png", png_bytes(), "image/png")},
            data={"prompt": "a paper boat", "size": "256x144"},
        )
        assert image.status_code == 400, image.text
        assert image.json()["error"]["param"] == "input_reference"
        assert http.get("/v1/videos").json()["data"] == []  # nothing was accepted
