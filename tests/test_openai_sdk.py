"""The official `openai` SDK, pointed at Reelgen with only base_url and api_key changed."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from reelgen.media.encode import probe_video

from .helpers import png_bytes

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.paid_key, max_retries=0)


def test_create_and_poll_then_download_all_variants(sdk: openai.OpenAI, tmp_path: Path) -> None:
    video = sdk.videos.create_and_poll(
        prompt="three red balloons rising", seconds="1", size="128x72", poll_interval_ms=50
    )
    assert video.status == "completed", video.error
    assert video.progress == 100
    assert video.object == "video"
    assert video.seconds == "1" and video.size == "128x72"
    assert video.completed_at is not None and video.expires_at > video.completed_at

    content = sdk.videos.download_content(video.id, variant="video")
    path = tmp_path / "out.mp4"
    content.write_to_file(path)
    info = probe_video(path)
    assert (info.width, info.height) == (128, 72)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.audio_codec == "aac"
    assert info.num_frames == 24
    assert abs(info.duration_seconds - 1.0) < 0.1

    thumb = Image.open(
        io.BytesIO(sdk.videos.download_content(video.id, variant="thumbnail").read())
    )
    assert thumb.format == "WEBP"
    sprite = sdk.videos.download_content(video.id, variant="spritesheet").read()
    assert Image.open(io.BytesIO(sprite)).format == "JPEG"


def test_video_object_has_the_sdk_fields_and_extras(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create(  # a fixed seed: the output checks' verdicts hold
        prompt="a calm ocean at night", size="64x64", seconds="2", extra_body={"seed": 7}
    )
    raw = video.model_dump()
    expected = {
        "id",
        "object",
        "model",
        "prompt",
        "status",
        "progress",
        "created_at",
        "completed_at",
        "expires_at",
        "seconds",
        "size",
        "remixed_from_video_id",
        "error",
        "stage",
        "queue_position",
        "eta_seconds",
    }
    assert set(raw) == expected
    assert video.status in ("queued", "in_progress")
    assert video.model == "reference"
    done = sdk.videos.poll(video.id, poll_interval_ms=50)
    assert done.status == "completed"


@pytest.mark.parametrize(
    "name",
    ["sora-2", "sora-2-pro", "sora-2-2025-10-06", "sora-2-pro-2025-10-06", "sora-2-2025-12-08"],
)
def test_sdk_model_names_map_to_an_adapter_and_are_echoed(
    sdk: openai.OpenAI, live, name: str
) -> None:
    video = sdk.videos.create(prompt="neon city", model=name, size="64x64", seconds="1")
    assert video.model == name
    assert sdk.videos.retrieve(video.id).model == name
    assert live.platform.jobs.get(video.id).spec.model == "reference"


def test_a_new_dated_name_falls_back_to_its_base_name(sdk: openai.OpenAI, live) -> None:
    video = sdk.videos.create(prompt="x", model="sora-2-pro-2031-01-31", size="64x64", seconds="1")
    assert video.model == "sora-2-pro-2031-01-31"
    assert live.platform.jobs.get(video.id).spec.model == "reference"


def test_list_paginates_with_after_and_order(sdk: openai.OpenAI) -> None:
    ids = [sdk.videos.create(prompt=f"clip {i}", size="64x64", seconds="1").id for i in range(5)]
    page = sdk.videos.list(limit=2, order="asc")
    assert [v.id for v in page.data] == ids[:2]
    assert page.has_more is True
    second = sdk.videos.list(limit=2, order="asc", after=ids[1])
    assert [v.id for v in second.data] == ids[2:4]
    desc = sdk.videos.list(limit=10, order="desc")
    assert [v.id for v in desc.data] == ids[::-1]
    assert desc.has_more is False
    assert [v.id for v in sdk.videos.list(order="asc")] == ids  # auto-pagination


def test_delete_then_retrieve_is_404(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create_and_poll(
        prompt="snowy forest", size="64x64", seconds="1", poll_interval_ms=50
    )
    deleted = sdk.videos.delete(video.id)
    assert deleted.deleted is True and deleted.id == video.id
    assert deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        sdk.videos.download_content(video.id)


def test_remix_keeps_size_and_links_the_source(sdk: openai.OpenAI) -> None:
    source = sdk.videos.create_and_poll(
        prompt="gold desert dunes", size="128x72", seconds="1", poll_interval_ms=50
    )
    remix = sdk.videos.remix(source.id, prompt="blue desert dunes at night")
    assert remix.remixed_from_video_id == source.id
    assert remix.size == source.size and remix.seconds == source.seconds
    done = sdk.videos.poll(remix.id, poll_interval_ms=50)
    assert done.status == "completed"


def test_input_reference_upload(sdk: openai.OpenAI) -> None:
    video = sdk.videos.create_and_poll(
        prompt="a red square drifting",
        size="64x64",
        seconds="1",
        input_reference=("ref.png", png_bytes(), "image/png"),
        poll_interval_ms=50,
    )
    assert video.status == "completed", video.error


def test_sdk_errors_are_typed(sdk: openai.OpenAI, live) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.videos.create(prompt="x", size="999x999")
    assert bad.value.body["code"] == "invalid_request"  # type: ignore[index]
    assert bad.value.body["param"] == "size"  # type: ignore[index]
    wrong = openai.OpenAI(base_url=f"{live.url}/v1", api_key="rg_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.videos.list()


def test_extend_continues_the_clip_to_its_new_total(sdk: openai.OpenAI, live) -> None:
    """`videos.extend` with the clip uploaded (what this SDK sends) and, over plain HTTP, by
    id: the source's frames come first, then the new part, generated from the source's last
    frame; `seconds` is the total."""
    import av
    import httpx

    source = sdk.videos.create_and_poll(  # a fixed seed: the output checks' verdicts hold
        prompt="a red kite over a beach", size="128x72", seconds="1", poll_interval_ms=50,
        extra_body={"seed": 7},
    )  # fmt: skip
    mp4 = sdk.videos.download_content(source.id).read()

    def frames(video_id: str) -> list[np.ndarray]:
        data = sdk.videos.download_content(video_id).read()
        with av.open(io.BytesIO(data)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    before = np.stack(frames(source.id)).astype(int)
    uploaded = sdk.videos.extend(
        prompt="the kite climbs into clouds", seconds="2", video=("kite.mp4", mp4, "video/mp4")
    )
    assert uploaded.size == "128x72" and uploaded.seconds == "2"
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.paid_key}"}) as h:
        r = h.post(
            "/v1/videos/extensions",
            json={"prompt": "the kite climbs into clouds", "seconds": "2",
                  "video": {"id": source.id}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        by_id = r.json()["id"]
        refused = h.post(
            "/v1/videos/extensions",
            json={"prompt": "x", "seconds": "1", "video": {"id": source.id}},
        )
        assert refused.status_code == 400 and "total length" in refused.text
        missing = h.post(
            "/v1/videos/extensions", json={"prompt": "x", "seconds": "2", "video": {"id": "v"}}
        )
        assert missing.status_code == 404
    for video_id in (uploaded.id, by_id):
        done = sdk.videos.poll(video_id, poll_interval_ms=50)
        assert done.status == "completed", done.error
        after = frames(video_id)
        assert len(after) == 48
        head = np.stack(after[:24]).astype(int)
        assert np.abs(head - before).mean() < 8  # the source, decoded and encoded again
    job = live.platform.jobs.get(by_id)
    assert job is not None and job.spec.parent_id == source.id
    with pytest.raises(openai.BadRequestError, match="cannot be read"):
        sdk.videos.extend(prompt="x", seconds="2", video=("a.mp4", b"\x00" * 10, "video/mp4"))


def test_edit_changes_a_clip_and_keeps_its_length_size_and_layout(sdk: openai.OpenAI, live) -> None:
    """`videos.edit` with the clip uploaded (what this SDK sends) and, over plain HTTP, by
    id: the edit has the source's length and size, follows its layout, and looks like the
    new prompt rather than the source."""
    import av
    import httpx

    from .cog_standin import make_mp4

    def frames(video_id: str) -> np.ndarray:
        data = sdk.videos.download_content(video_id).read()
        with av.open(io.BytesIO(data)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    def against_x(clip: np.ndarray) -> float:
        return float(np.corrcoef(clip.mean(axis=(0, 1, 3)), np.arange(clip.shape[2]))[0, 1])

    ramp = make_mp4(128, 72, 24, 24)  # a red ramp left to right
    uploaded = sdk.videos.edit(
        prompt="a green forest at dawn", video=("ramp.mp4", ramp, "video/mp4")
    )
    assert uploaded.size == "128x72" and uploaded.seconds == "1"
    source = sdk.videos.create_and_poll(  # a fixed seed: the output checks' verdicts hold
        prompt="a red kite over a beach", size="128x72", seconds="1", poll_interval_ms=50,
        extra_body={"seed": 7},
    )  # fmt: skip
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.paid_key}"}) as h:
        r = h.post(
            "/v1/videos/edits",
            json={"prompt": "the kite at night under a full moon", "video": {"id": source.id}},
        )
        assert r.status_code == 200, r.text
        by_id = r.json()["id"]
        form = h.post("/v1/videos/edits", data={"prompt": "x", "video[id]": source.id})
        assert form.status_code == 200, form.text
        unknown = h.post(
            "/v1/videos/edits", json={"prompt": "x", "seconds": "2", "video": {"id": source.id}}
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "seconds"
        missing = h.post("/v1/videos/edits", json={"prompt": "x", "video": {"id": "video_no"}})
        assert missing.status_code == 404
    edited = sdk.videos.poll(uploaded.id, poll_interval_ms=50)
    assert edited.status == "completed", edited.error
    clip = frames(uploaded.id)
    assert clip.shape == (24, 72, 128, 3)
    assert against_x(clip) > 0.9  # the ramp's layout
    assert clip[..., 1].mean() > 50  # the ramp has no green; the forest brings it
    remixed = sdk.videos.remix(uploaded.id, prompt="a calm ocean at night")
    again = sdk.videos.poll(remixed.id, poll_interval_ms=50)
    assert again.status == "completed", again.error
    redone = frames(remixed.id)
    assert against_x(redone) > 0.9 and np.abs(redone.astype(int) - clip).mean() > 10
    first, second = live.platform.jobs.get(uploaded.id), live.platform.jobs.get(remixed.id)
    assert first is not None and second is not None
    assert second.spec.seed == first.spec.seed and second.spec.model == first.spec.model

    done = sdk.videos.poll(by_id, poll_interval_ms=50)
    assert done.status == "completed", done.error
    assert (done.size, done.seconds) == (source.size, source.seconds)
    before, after = frames(source.id).astype(int), frames(by_id).astype(int)
    assert after.shape == before.shape and np.abs(after - before).mean() > 10
    job = live.platform.jobs.get(by_id)
    assert job is not None and job.spec.parent_id == source.id
    assert job.spec.operation.value == "edit" and job.spec.seed == source_seed(live, source.id)

    with pytest.raises(openai.BadRequestError, match="cannot be read"):
        sdk.videos.edit(prompt="x", video=("a.mp4", b"\x00" * 10, "video/mp4"))
    with pytest.raises(openai.BadRequestError, match="100x60") as odd:
        sdk.videos.edit(prompt="x", video=("odd.mp4", make_mp4(100, 60, 24, 24), "video/mp4"))
    assert odd.value.body["param"] == "video"  # type: ignore[index]


def source_seed(live, video_id: str) -> int:
    job = live.platform.jobs.get(video_id)
    assert job is not None
    return job.spec.seed


def test_models_list_and_retrieve_say_what_each_model_makes(sdk: openai.OpenAI) -> None:
    """`models.list` / `models.retrieve` of the official SDK: every public name, the
    adapter it runs on, and the sizes, length and inputs it takes."""
    listed = {m.id: m for m in sdk.models.list()}
    assert {"reference", "sora-2", "sora-2-pro"} <= set(listed)
    reference = listed["reference"]
    assert reference.object == "model" and reference.owned_by == "reelgen"
    extra = reference.model_extra or {}
    assert extra["adapter"] == "reference" and extra["max_seconds"] == 20
    assert "1280x720" in extra["sizes"] and extra["accepts"] == ["image", "video"]
    dated = sdk.models.retrieve("sora-2-2025-10-06")
    assert dated.id == "sora-2-2025-10-06" and (dated.model_extra or {})["adapter"] == "reference"
    with pytest.raises(openai.NotFoundError, match="No model named"):
        sdk.models.retrieve("no-such-model")
