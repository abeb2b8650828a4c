"""Job lifecycle over real HTTP: cancel, idempotency, quotas, isolation, SSE, content."""

from __future__ import annotations

import json
import time

import httpx
from sqlalchemy import select

from reelgen.domain.jobs import Tier
from reelgen.services.accounts import create_key
from reelgen.store.schema import jobs

SMALL = {"size": "64x64", "seconds": "1"}


def _create(http: httpx.Client, prompt: str = "a fox", **extra) -> dict:
    r = http.post("/v1/videos", json={"prompt": prompt, **SMALL, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def _events(live, video_id: str) -> list[str]:
    return [e.kind for e in live.platform.jobs.events_after(video_id)]


def _placed(http: httpx.Client, video_id: str, *, with_eta: bool = False) -> dict:
    """The video once the dispatcher's forecast has placed it (within a second or so)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        video = http.get(f"/v1/videos/{video_id}").json()
        if video["queue_position"] is not None and (video["eta_seconds"] or not with_eta):
            return video
        time.sleep(0.05)
    raise AssertionError(f"{video_id} was never placed: {video}")


def test_queued_job_reports_position_eta_and_poll_header(start_server) -> None:
    live = start_server(workers=0)
    with live.client() as http:
        first, second = _create(http), _create(http)
        placed = [_placed(http, v["id"]) for v in (first, second)]
        assert [v["queue_position"] for v in placed] == [0, 1]
        assert [v["eta_seconds"] for v in placed] == [None, None]  # no worker serves them
        # A worker that takes the first job and never finishes: the second waits for it.
        live.platform.jobs.register_worker("w", "reference", "h", live.platform.clock())
        second = _placed(http, second["id"], with_eta=True)
        assert second["queue_position"] == 0
        assert second["eta_seconds"] >= live.platform.jobs.get(second["id"]).estimated_seconds
        r = http.get(f"/v1/videos/{second['id']}")
        assert r.headers["openai-poll-after-ms"] == "100"
        assert r.json()["stage"] == "waiting_for_gpu"


def test_paid_jobs_queue_ahead_of_free_ones(start_server) -> None:
    live = start_server(workers=0)
    with live.client(live.free_key) as free, live.client() as paid:
        f = _create(free)
        p = _create(paid)
        assert _placed(free, f["id"])["queue_position"] == 1
        assert _placed(paid, p["id"])["queue_position"] == 0


def test_cancel_queued_job_at_once(start_server_any) -> None:
    live = start_server_any(workers=0)
    with live.client() as http:
        video = _create(http)
        r = http.post(f"/v1/videos/{video['id']}/cancel")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "failed" and body["error"]["code"] == "cancelled"
        assert http.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
    assert _events(live, video["id"]) == ["created", "cancelled"]


def test_cancel_running_job_at_next_step(start_server) -> None:
    live = start_server(reference_steps=400, checkpoint_every_steps=1000)
    with live.client() as http:
        video = _create(http, size="256x144", seconds="2")
        deadline = time.monotonic() + 30
        while http.get(f"/v1/videos/{video['id']}").json()["progress"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert http.post(f"/v1/videos/{video['id']}/cancel").status_code == 200
        done = live.wait_for(video["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
    job = live.platform.jobs.get(video["id"])
    assert job is not None and job.step < 400
    assert _events(live, video["id"])[-2:] == ["cancel_requested", "cancelled"]
    with live.client() as http:
        r = http.post(f"/v1/videos/{video['id']}/cancel")
        assert r.status_code == 200  # already cancelled: idempotent


def test_cancel_completed_job_conflicts(live) -> None:
    with live.client() as http:
        video = _create(http)
        live.wait_for(video["id"])
        r = http.post(f"/v1/videos/{video['id']}/cancel")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "job_finished"


def test_idempotency_key(start_server_any) -> None:
    live = start_server_any(workers=0)
    with live.client() as http:
        h = {"Idempotency-Key": "abc-1"}
        a = http.post("/v1/videos", json={"prompt": "a fox", **SMALL}, headers=h)
        b = http.post("/v1/videos", json={"prompt": "a fox", **SMALL}, headers=h)
        assert a.status_code == b.status_code == 200
        assert a.json()["id"] == b.json()["id"]
        assert b.headers["Idempotent-Replayed"] == "true"
        c = http.post("/v1/videos", json={"prompt": "a cat", **SMALL}, headers=h)
        assert c.status_code == 409
        assert c.json()["error"]["code"] == "idempotency_key_reused"
    with live.client(live.free_key) as other:
        d = other.post("/v1/videos", json={"prompt": "a fox", **SMALL}, headers=h)
        assert d.status_code == 200 and d.json()["id"] != a.json()["id"]
    with live.platform.db.read() as conn:
        assert len(conn.execute(select(jobs.c.id)).all()) == 2


def test_tenant_isolation(start_server_any) -> None:
    live = start_server_any()
    with live.client() as alice, live.client(live.free_key) as bob:
        video = _create(alice)
        live.wait_for(video["id"])
        vid = video["id"]
        assert bob.get(f"/v1/videos/{vid}").status_code == 404
        assert bob.get(f"/v1/videos/{vid}/content").status_code == 404
        assert bob.get(f"/v1/videos/{vid}/events").status_code == 404
        assert bob.post(f"/v1/videos/{vid}/cancel").status_code == 404
        assert bob.post(f"/v1/videos/{vid}/remix", json={"prompt": "x"}).status_code == 404
        assert bob.delete(f"/v1/videos/{vid}").status_code == 404
        assert bob.get("/v1/videos").json()["data"] == []
        assert bob.get("/v1/videos", params={"after": vid}).status_code == 404
        assert alice.get(f"/v1/videos/{vid}").status_code == 200


def test_free_tier_concurrency_limit(start_server_any) -> None:
    live = start_server_any(workers=0)
    with live.client(live.free_key) as http:
        _create(http)
        _create(http)
        r = http.post("/v1/videos", json={"prompt": "third", **SMALL})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    err = r.json()["error"]
    assert err["code"] == "concurrency_limit_exceeded" and "2 concurrent" in err["message"]


def test_daily_limit(start_server_any) -> None:
    live = start_server_any(paid_max_per_day=2)
    with live.client() as http:
        for _ in range(2):
            live.wait_for(_create(http)["id"])
        r = http.post("/v1/videos", json={"prompt": "again", **SMALL})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "daily_limit_exceeded"
    assert 86_000 < int(r.headers["Retry-After"]) <= 86_400


def test_a_daily_budget_of_gpu_seconds_is_kept_per_tier(start_server) -> None:
    live = start_server(workers=0, free_gpu_seconds_per_day=1.0, free_max_concurrent=5)
    with live.client(live.free_key) as http:
        first = _create(http)  # well under a second of estimated work
        big = {"prompt": "over budget", "size": "1280x720", "seconds": "8"}
        r = http.post("/v1/videos", json=big)
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["code"] == "daily_limit_exceeded" and "GPU-seconds" in err["message"]
        assert 86_000 < int(r.headers["Retry-After"]) <= 86_400
    job = live.platform.jobs.get(first["id"])
    assert job is not None and 0 < job.estimated_seconds <= 1.0


def test_service_tier_batch_queues_apart_from_the_keys_own_limits(start_server) -> None:
    live = start_server(workers=0, free_max_concurrent=1)
    with live.client(live.free_key) as http:
        interactive = _create(http)
        batch = [_create(http, service_tier="batch")["id"] for _ in range(3)]
        flex = http.post("/v1/videos", json={"prompt": "f", "service_tier": "flex", **SMALL})
        assert flex.status_code == 200
        refused = http.post("/v1/videos", json={"prompt": "again", **SMALL})
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        bad = http.post("/v1/videos", json={"prompt": "x", "service_tier": "priority", **SMALL})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "service_tier"
        assert "batch" in bad.json()["error"]["message"]
        form = http.post(
            "/v1/videos", files={"prompt": (None, "as a form"), "service_tier": (None, "batch")}
        )
        assert form.status_code == 200
    tiers = {i: live.platform.jobs.get(i).tier for i in [*batch, form.json()["id"]]}
    assert set(tiers.values()) == {Tier.BATCH}
    assert live.platform.jobs.get(interactive["id"]).tier is Tier.FREE


def test_a_key_without_batch_may_not_ask_for_it(start_server) -> None:
    live = start_server(workers=0)
    key = create_key(live.platform, user_name="erin", tier=Tier.FREE, allow_batch=False)
    with live.client(key) as http:
        for tier in ("batch", "flex"):
            r = http.post("/v1/videos", json={"prompt": "x", "service_tier": tier, **SMALL})
            assert r.status_code == 403
            err = r.json()["error"]
            assert err["type"] == "permission_error" and err["param"] == "service_tier"
            assert "may not use service_tier" in err["message"]
        kept = _create(http, service_tier="default")
    assert live.platform.jobs.get(kept["id"]).tier is Tier.FREE
    with live.platform.db.read() as conn:
        assert [row.id for row in conn.execute(select(jobs.c.id))] == [kept["id"]]


def test_sse_streams_until_the_job_ends(live) -> None:
    with live.client() as http:
        video = _create(http, size="128x72")
        updates = []
        with http.stream("GET", f"/v1/videos/{video['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    updates.append(json.loads(line[6:]))
    assert updates[-1]["status"] == "completed"
    progresses = [u["progress"] for u in updates]
    assert progresses == sorted(progresses)
    assert len(updates) >= 2


def test_sse_follows_the_event_log_for_changes_the_bus_never_carried(
    start_server_any,
) -> None:
    """A change made by another process reaches the stream through the event log alone:
    here the store itself cancels the queued job, and nobody publishes on the bus."""
    live = start_server_any(workers=0)
    with live.client() as http:
        video = _create(http, size="128x72")
        updates: list[dict] = []
        with http.stream("GET", f"/v1/videos/{video['id']}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    updates.append(json.loads(line[6:]))
                    if len(updates) == 1:
                        live.platform.jobs.request_cancel(video["id"], live.platform.clock())
    assert [u["status"] for u in updates] == ["queued", "failed"]
    assert updates[-1]["error"]["code"] == "cancelled"


def test_content_range_etag_and_caching(live) -> None:
    with live.client() as http:
        video = _create(http, size="128x72")
        live.wait_for(video["id"])
        url = f"/v1/videos/{video['id']}/content"
        full = http.get(url)
        assert full.status_code == 200
        assert full.headers["content-type"] == "video/mp4"
        assert int(full.headers["content-length"]) == len(full.content)
        assert "max-age" in full.headers["cache-control"]
        etag = full.headers["etag"]
        part = http.get(url, headers={"Range": "bytes=10-109"})
        assert part.status_code == 206
        assert part.content == full.content[10:110]
        assert part.headers["content-range"] == f"bytes 10-109/{len(full.content)}"
        tail = http.get(url, headers={"Range": "bytes=-16"})
        assert tail.content == full.content[-16:]
        assert http.get(url, headers={"If-None-Match": etag}).status_code == 304
        head = http.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(full.content))
        bad = http.get(url, params={"variant": "poster"})
        assert bad.status_code == 400


def test_content_before_completion_is_a_clear_error(start_server) -> None:
    live = start_server(workers=0)
    with live.client() as http:
        video = _create(http)
        r = http.get(f"/v1/videos/{video['id']}/content")
    assert r.status_code == 400
    assert "queued" in r.json()["error"]["message"]


def test_signed_redirect_urls(start_server) -> None:
    live = start_server(content_redirect=True, signed_url_ttl_seconds=60)
    with live.client() as http:
        video = _create(http, size="128x72")
        live.wait_for(video["id"])
        r = http.get(f"/v1/videos/{video['id']}/content")
        assert r.status_code == 302
        location = r.headers["location"]
        assert location.startswith("/files/")
        ok = httpx.get(live.url + location)
        assert ok.status_code == 200 and ok.content[4:8] == b"ftyp"
        assert "public" in ok.headers["cache-control"]
        part = httpx.get(live.url + location, headers={"Range": "bytes=0-3"})
        assert part.status_code == 206 and len(part.content) == 4
        thumb = http.get(
            f"/v1/videos/{video['id']}/content",
            params={"variant": "thumbnail"},
            follow_redirects=True,
        )
        assert thumb.headers["content-type"] == "image/webp"

        tampered = location.replace("video.mp4", "thumbnail.webp")
        assert httpx.get(live.url + tampered).status_code == 403
        sig_flip = location[:-1] + ("0" if location[-1] != "0" else "1")
        assert httpx.get(live.url + sig_flip).status_code == 403
        base, _, query = location.partition("?")
        params = dict(p.split("=") for p in query.split("&"))
        later = f"{base}?expires={int(params['expires']) + 100}&signature={params['signature']}"
        assert httpx.get(live.url + later).status_code == 403

    live.platform.clock = lambda: time.time() + 120
    expired = httpx.get(live.url + location)
    assert expired.status_code == 403
    assert expired.json()["error"]["code"] == "invalid_signature"


def test_health_and_openapi(live) -> None:
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    spec = httpx.get(f"{live.url}/openapi.json").json()
    assert "/v1/videos" in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]


def test_preempted_job_checkpoints_hands_back_and_resumes(start_server) -> None:
    live = start_server(reference_steps=300, checkpoint_every_steps=50)
    with live.client() as http:
        video = _create(http, size="256x144", seconds="2")
        deadline = time.monotonic() + 30
        while (job := live.platform.jobs.get(video["id"])) is not None and job.step < 20:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert live.platform.jobs.request_preempt(video["id"], live.platform.clock())
        done = live.wait_for(video["id"])
    assert done["status"] == "completed"
    events = live.platform.jobs.events_after(video["id"])
    released = [e for e in events if e.kind == "released"]
    assert len(released) == 1 and released[0].payload.reason == "preempted"
    starts = [e for e in events if e.kind == "started"]
    assert len(starts) == 2 and starts[1].payload.resume_step == released[0].payload.step > 0
    completed = next(e for e in events if e.kind == "completed")
    assert completed.payload.first_step == starts[1].payload.resume_step + 1


def test_an_edit_upload_replays_under_its_idempotency_key_and_another_clip_conflicts(
    live,
) -> None:
    """The uploaded clip is part of what an Idempotency-Key names: the same upload replays
    the job, another clip under the same key is refused."""
    from .cog_standin import make_mp4

    first, second = make_mp4(64, 64, 24, 24), make_mp4(64, 64, 24, 12)
    with live.client() as http:

        def edit(clip: bytes) -> httpx.Response:
            return http.post(
                "/v1/videos/edits",
                files={"video": ("clip.mp4", clip, "video/mp4")},
                data={"prompt": "the same, at night"},
                headers={"Idempotency-Key": "edit-1"},
            )

        a, b = edit(first), edit(first)
        assert a.status_code == b.status_code == 200 and a.json()["id"] == b.json()["id"]
        other = edit(second)
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
