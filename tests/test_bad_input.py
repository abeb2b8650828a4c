"""Bad input gets a 400 that says what is wrong, and nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from reelgen.store.schema import jobs

from .helpers import png_bomb, png_bytes


def _assert_nothing_stored(live) -> None:
    with live.platform.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
    inputs = Path(live.platform.settings.data_dir) / "objects" / "inputs"
    assert not inputs.exists() or not any(inputs.iterdir())


def _error(response) -> dict:
    assert response.status_code == 400, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    return body


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"prompt": "x" * 4001}, "prompt", "4000"),
        ({"prompt": "ok", "size": "100x100"}, "size", "Unsupported size"),
        ({"prompt": "ok", "seconds": "0"}, "seconds", "1 to 20"),
        ({"prompt": "ok", "seconds": "21"}, "seconds", "1 to 20"),
        ({"prompt": "ok", "seconds": "four"}, "seconds", "1 to 20"),
        ({"prompt": "ok", "style": "vaporwave"}, "style", "Unknown style"),
        ({"prompt": "ok", "model": "nope"}, "model", "Unknown model"),
        ({"prompt": "ok", "colour": "red"}, "colour", "Unknown field"),
        ({"size": "64x64"}, "prompt", "prompt"),
        (
            {"prompt": "ok", "input_reference": {"image_url": "https://example.com/a.png"}},
            "input_reference",
            "does not fetch",
        ),
    ],
)
def test_json_bad_fields(live, body: dict, param: str, needle: str) -> None:
    with live.client() as http:
        err = _error(http.post("/v1/videos", json=body))
    assert err["param"] == param
    assert needle in err["message"]
    _assert_nothing_stored(live)


def test_malformed_json(live) -> None:
    with live.client() as http:
        r = http.post(
            "/v1/videos", content=b'{"prompt": ', headers={"Content-Type": "application/json"}
        )
        assert "not valid JSON" in _error(r)["message"]
        r = http.post("/v1/videos", content=b"[1, 2]", headers={"Content-Type": "application/json"})
        assert "JSON object" in _error(r)["message"]
        r = http.post("/v1/videos", content=b"prompt=x", headers={"Content-Type": "text/plain"})
        assert "Content-Type" in _error(r)["message"]
    _assert_nothing_stored(live)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"this is not an image", "not a readable image"),
        (png_bomb(), "decompression bomb"),
        (b"GIF89a" + b"\x00" * 64, "not a readable image"),
    ],
)
def test_bad_reference_images(live, payload: bytes, needle: str) -> None:
    with live.client() as http:
        r = http.post(
            "/v1/videos",
            data={"prompt": "ok", "size": "64x64", "seconds": "1"},
            files={"input_reference": ("ref.png", payload, "image/png")},
        )
    err = _error(r)
    assert err["param"] == "input_reference"
    assert needle in err["message"]
    _assert_nothing_stored(live)


def test_oversized_reference_image(start_server) -> None:
    live = start_server(max_reference_bytes=4096)
    with live.client() as http:
        r = http.post(
            "/v1/videos",
            data={"prompt": "ok"},
            files={"input_reference": ("ref.png", png_bytes(400, 400) + b"\0" * 5000, "image/png")},
        )
    assert "limit is 4096 bytes" in _error(r)["message"]
    _assert_nothing_stored(live)


def test_multipart_unknown_field_and_duplicates(live) -> None:
    with live.client() as http:
        r = http.post("/v1/videos", data={"prompt": "ok", "mood": "happy"})
        assert _error(r)["param"] == "mood"
        r = http.post("/v1/videos", data={"prompt": "ok", "seed": "-3"})
        assert _error(r)["param"] == "seed"
    _assert_nothing_stored(live)


def test_reference_as_data_url_json(live) -> None:
    import base64

    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    with live.client() as http:
        r = http.post(
            "/v1/videos",
            json={
                "prompt": "ok",
                "size": "64x64",
                "seconds": "1",
                "input_reference": {"image_url": url},
            },
        )
        assert r.status_code == 200, r.text
        r = http.post(
            "/v1/videos",
            json={"prompt": "ok", "input_reference": {"image_url": "data:image/png;base64,!!!"}},
        )
        assert _error(r)["param"] == "input_reference"


def test_multipart_bracket_image_url(live) -> None:
    import base64

    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    with live.client() as http:
        r = http.post(
            "/v1/videos",
            data={
                "prompt": "ok",
                "size": "64x64",
                "seconds": "1",
                "input_reference[image_url]": url,
            },
        )
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["status"] in ("queued", "in_progress")


def test_auth_errors(live) -> None:
    with live.client("rg_not_a_key") as http:
        r = http.get("/v1/videos")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    import httpx

    r = httpx.get(f"{live.url}/v1/videos")
    assert r.status_code == 401
    assert "Missing API key" in r.json()["error"]["message"]


def test_list_bad_params(live) -> None:
    with live.client() as http:
        assert _error(http.get("/v1/videos", params={"limit": 0}))["param"] == "limit"
        assert _error(http.get("/v1/videos", params={"limit": "many"}))["param"] == "limit"
        assert _error(http.get("/v1/videos", params={"order": "up"}))["param"] == "order"
        assert http.get("/v1/videos", params={"after": "video_missing"}).status_code == 404


def test_an_image_to_video_model_needs_its_image(start_server) -> None:
    """A model that `requires` an image refuses a text-only request (rather than failing it
    on a worker later) and takes one with an image."""
    from reelgen.models.base import Conditioning
    from reelgen.models.reference import ReferenceModel

    class ImageOnly(ReferenceModel):
        requires = frozenset({Conditioning.IMAGE})

    def prepare(platform) -> None:
        platform.models["reference"] = ImageOnly(steps=2)

    live = start_server(prepare=prepare)
    with live.client() as http:
        body = _error(http.post("/v1/videos", json={"prompt": "a boat", "size": "64x64"}))
        assert body["code"] == "missing_input" and body["param"] == "input_reference"
        assert "from an image" in body["message"]
        _assert_nothing_stored(live)
        ok = http.post(
            "/v1/videos",
            files={"input_reference": ("a.png", png_bytes(64, 64), "image/png")},
            data={"prompt": "a boat", "size": "64x64", "seconds": "1"},
        )
        assert ok.status_code == 200, ok.text
        assert live.wait_for(ok.json()["id"])["status"] == "completed"


def test_a_size_or_length_the_model_does_not_make_is_refused(start_server) -> None:
    """The registry's `sizes` and `max_seconds`: a request outside them is refused with
    what the model makes; an extension counts only the part the model adds."""
    from reelgen.models.reference import ReferenceModel

    from .cog_standin import make_mp4

    class Small(ReferenceModel):
        sizes = frozenset({"64x64", "128x72"})
        max_seconds = 2

    def prepare(platform) -> None:
        platform.models["reference"] = Small(steps=2)

    live = start_server(prepare=prepare)
    with live.client() as http:
        body = _error(http.post("/v1/videos", json={"prompt": "a boat", "size": "256x144"}))
        assert body["code"] == "unsupported_size" and body["param"] == "size"
        assert "128x72, 64x64, not 256x144" in body["message"]
        body = _error(
            http.post("/v1/videos", json={"prompt": "a boat", "size": "64x64", "seconds": "3"})
        )
        assert body["code"] == "unsupported_duration" and body["param"] == "seconds"
        assert "at most 2 s" in body["message"]
        upload = {"video": ("clip.mp4", make_mp4(64, 64, 24, 48), "video/mp4")}  # 2 s
        edit = http.post(  # the edit of a 256x144 clip would be 256x144
            "/v1/videos/edits",
            files={"video": ("c.mp4", make_mp4(256, 144, 24, 24), "video/mp4")},
            data={"prompt": "at night"},
        )
        body = _error(edit)
        assert body["code"] == "unsupported_size" and body["param"] == "video"
        extension = http.post(  # the size is the upload's too
            "/v1/videos/extensions",
            files={"video": ("c.mp4", make_mp4(256, 144, 24, 24), "video/mp4")},
            data={"prompt": "on", "seconds": "2"},
        )
        body = _error(extension)
        assert body["code"] == "unsupported_size" and body["param"] == "video"
        _assert_nothing_stored(live)
        too_long = http.post(
            "/v1/videos/extensions", files=upload, data={"prompt": "on", "seconds": "5"}
        )
        body = _error(too_long)
        assert body["code"] == "unsupported_duration" and "adds at most 2 s" in body["message"]
        _assert_nothing_stored(live)
        ok = http.post("/v1/videos/extensions", files=upload, data={"prompt": "on", "seconds": "4"})
        assert ok.status_code == 200, ok.text
        done = live.wait_for(ok.json()["id"])
        assert done["status"] == "completed" and done["seconds"] == "4"
