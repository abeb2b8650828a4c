"""Regressions for defects found by using Reelgen as a client would (the SDK, curl, the CLI)."""

from __future__ import annotations

import base64
import io
import threading
import warnings

import httpx
import openai
import pytest
from PIL import Image

from reelgen.domain.jobs import Tier
from reelgen.platform import build_api
from reelgen.services.accounts import create_key, ensure_bootstrap_key
from reelgen.settings import Settings
from reelgen.store.database import upgrade

from .conftest import make_settings

warnings.filterwarnings("ignore", category=DeprecationWarning)


def _noisy_png(target_bytes: int) -> bytes:
    """A PNG of roughly `target_bytes` (random pixels do not compress)."""
    import numpy as np

    side = int((target_bytes / 3) ** 0.5) + 1
    pixels = np.random.default_rng(7).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (method, path)
        for method in ("GET", "POST", "DELETE")
        for path in ("/v1/videos/characters", "/v1/videos/characters/char_1")
    ],
)
def test_characters_answer_a_clear_error(live, method: str, path: str) -> None:
    with live.client() as http:
        r = http.request(method, path)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_operation"


def test_list_cursor_survives_deleting_its_video(live) -> None:
    sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.paid_key, max_retries=0)
    ids = [sdk.videos.create(prompt=f"clip {i}", size="64x64", seconds="1").id for i in range(4)]
    page = sdk.videos.list(limit=2, order="asc")
    assert [v.id for v in page.data] == ids[:2]
    sdk.videos.delete(ids[1])  # the page's cursor
    rest = page.get_next_page()
    assert [v.id for v in rest.data] == ids[2:]
    with live.client() as http:
        r = http.get("/v1/videos", params={"after": "video_never_existed"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "after"


def test_list_cursor_of_another_user_is_not_found(live) -> None:
    with live.client() as http:
        vid = http.post("/v1/videos", json={"prompt": "x", "size": "64x64", "seconds": "1"})
    with live.client(live.free_key) as bob:
        r = bob.get("/v1/videos", params={"after": vid.json()["id"]})
    assert r.status_code == 404


def test_data_url_in_multipart_has_the_same_limit_as_a_file(start_server) -> None:
    live = start_server(workers=0, max_reference_bytes=3 * 1024 * 1024)
    image = _noisy_png(2 * 1024 * 1024)  # well over the old 1 MiB part cap, under the limit
    assert 1024 * 1024 < len(image) < 3 * 1024 * 1024
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    form = {"prompt": "a lake", "size": "64x64", "seconds": "1", "input_reference[image_url]": url}
    with live.client() as http:
        as_url = http.post("/v1/videos", files={k: (None, v) for k, v in form.items()})
        as_file = http.post(
            "/v1/videos",
            data={"prompt": "a lake", "size": "64x64", "seconds": "1"},
            files={"input_reference": ("ref.png", image, "image/png")},
        )
    assert as_url.status_code == 200, as_url.text
    assert as_file.status_code == 200, as_file.text
    big = _noisy_png(4 * 1024 * 1024)
    url = "data:image/png;base64," + base64.b64encode(big).decode()
    with live.client() as http:
        r = http.post(
            "/v1/videos",
            files={"prompt": (None, "x"), "input_reference[image_url]": (None, url)},
        )
    assert r.status_code == 400 and "limit" in r.json()["error"]["message"]


def test_permanent_errors_tell_the_sdk_not_to_retry(live) -> None:
    calls: list[int] = []

    def count(request: httpx.Request) -> None:
        calls.append(1)

    http = httpx.Client(event_hooks={"request": [count]})
    sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.paid_key, http_client=http)
    headers = {"Idempotency-Key": "same-key"}
    sdk.videos.create(prompt="one", size="64x64", seconds="1", extra_headers=headers)
    calls.clear()
    with pytest.raises(openai.ConflictError):
        sdk.videos.create(prompt="two", size="64x64", seconds="1", extra_headers=headers)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(openai.BadRequestError):
        sdk.videos.create(prompt="x", size="3x3", seconds="1")  # type: ignore[arg-type]
    assert len(calls) == 1
    with live.client() as raw:
        limited = None
        for _ in range(3):
            limited = raw.post("/v1/videos", json={"prompt": "x", "size": "bad"})
        assert limited is not None and limited.headers["x-should-retry"] == "false"


def test_remix_of_a_video_whose_reference_expired_is_a_clear_error(live) -> None:
    from .helpers import png_bytes

    with live.client() as http:
        created = http.post(
            "/v1/videos",
            data={"prompt": "a red fox", "size": "64x64", "seconds": "1"},
            files={"input_reference": ("ref.png", png_bytes(), "image/png")},
        ).json()
    live.wait_for(created["id"])
    job = live.platform.jobs.get(created["id"])
    assert job.spec.reference_key is not None
    live.platform.objects.delete(job.spec.reference_key)
    with live.client() as http:
        r = http.post(f"/v1/videos/{created['id']}/remix", json={"prompt": "a blue fox"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "reference_expired"


def test_keys_create_without_tier_keeps_the_users_tier(tmp_path) -> None:
    platform = build_api(make_settings(tmp_path))
    try:
        upgrade(platform.db.engine)
        key = create_key(platform, user_name="carol", tier=Tier.PAID)
        create_key(platform, user_name="carol", tier=None)
        from reelgen.services.accounts import authenticate

        platform.key_cache = type(platform.key_cache)(ttl_s=0.0)
        assert authenticate(platform, key).tier is Tier.PAID
        newcomer = create_key(platform, user_name="dave", tier=None)
        assert authenticate(platform, newcomer).tier is Tier.FREE
    finally:
        platform.close()


def test_replicas_bootstrapping_at_once_do_not_crash(database_url: str, tmp_path) -> None:
    """Several `reelgen api` processes on a fresh database create the same user and key."""
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, bootstrap_api_key="rg_bootstrap_key_1"
    )
    first = build_api(settings)
    upgrade(first.db.engine)
    platforms = [first] + [build_api(settings) for _ in range(5)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(platforms))

    def boot(p) -> None:
        try:
            barrier.wait()
            ensure_bootstrap_key(p, create_if_empty=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(p,)) for p in platforms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        from reelgen.services.accounts import authenticate

        assert authenticate(first, "rg_bootstrap_key_1").name == "admin"
    finally:
        for p in platforms:
            p.close()


def test_a_model_name_pointing_at_no_adapter_stops_the_start_up(tmp_path) -> None:
    settings = make_settings(tmp_path, model_names={"sora-2": "wan-14b"})
    with pytest.raises(ValueError, match=r"REELGEN_MODEL_NAMES .*points at unknown adapters"):
        build_api(settings)
