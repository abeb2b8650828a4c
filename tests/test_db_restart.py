"""PostgreSQL restarts in the middle of a fleet run: nothing accepted is lost.

The server is the test's own (`tests.pgserver`), stopped with a fast shutdown (every client
disconnected, as in a restart or failover) and started again a few seconds later.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from reelgen.api.app import create_app
from reelgen.domain.errors import Unavailable
from reelgen.domain.jobs import Status
from reelgen.platform import ApiContext, build_api
from reelgen.store.database import make_engine, upgrade

from .conftest import free_port, make_settings
from .fleet import make_fleet, wait_until
from .pgserver import PgServer

KEY = "rg_restart_0123456789"


@pytest.fixture
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer()
    except (RuntimeError, OSError, KeyError) as exc:
        if os.environ.get("REELGEN_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"cannot run a PostgreSQL server of our own: {exc}")
    server.start()
    yield server
    server.destroy()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _follow(url: str, video_id: str, out: list[Any], opened: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        with (
            httpx.Client(base_url=url, headers=headers, timeout=120) as http,
            http.stream("GET", f"/v1/videos/{video_id}/events") as r,
        ):
            if r.status_code != 200:
                out.append((r.status_code, r.read()))
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out.append(json.loads(line[6:]))
                    opened.set()
    except Exception as exc:
        out.append(exc)


def test_an_unreachable_database_answers_503_with_retry_after(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    platform = build_api(make_settings(tmp_path, database_url=dead))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(platform), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the API")
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            for method, path in (("GET", "/v1/videos/video_1"), ("POST", "/v1/videos")):
                r = http.request(method, path, json={"prompt": "p"}, timeout=15)
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "2"
                assert "x-should-retry" not in r.headers
                error = r.json()["error"]
                assert error["code"] == "service_unavailable"
                assert "database is not reachable" in error["message"]
            assert http.get("/readyz").status_code == 503
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        platform.close()


def test_a_claim_whose_answer_was_lost_is_picked_up_not_orphaned(start_server_any) -> None:
    """The claim commits, then the connection dies before the answer: the worker finds the
    job it holds instead of leaving it to the lease reaper."""

    def lose_one_answer(platform: ApiContext) -> None:
        real = platform.jobs.claim
        lost: list[str] = []

        def claim(**kwargs: Any) -> Any:
            jobs = real(**kwargs)
            if jobs and not lost:
                lost.append(jobs[0].id)
                raise Unavailable("the answer to this claim was lost")
            return jobs

        platform.jobs.claim = claim  # type: ignore[method-assign]

    live = start_server_any(prepare=lose_one_answer, lease_seconds=600)
    with live.client() as http:
        video = http.post("/v1/videos", json={"prompt": "p", "size": "64x64"}).json()
    done = live.wait_for(video["id"], timeout=30)
    assert done["status"] == "completed", done
    kinds = [e.kind for e in live.platform.jobs.events_after(video["id"])]
    assert kinds.count("started") == 1 and "worker_lost" not in kinds, kinds


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_postgres_restart_mid_run_loses_nothing(tmp_path: Path, pg_server: PgServer) -> None:
    engine = make_engine(pg_server.url)
    upgrade(engine)
    engine.dispose()
    # The database stays away longer than a lease: the controller must not take that as
    # every worker being lost.
    fleet = make_fleet(
        tmp_path, pg_server.url, REELGEN_REFERENCE_STEPS="60", REELGEN_LEASE_SECONDS="3"
    )
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        fleet.spawn("api", "--port", str(port), REELGEN_BOOTSTRAP_API_KEY=KEY)
        fleet.spawn("controller")
        for _ in range(2):
            fleet.spawn("worker")
        wait_until(lambda: _ready(url), 30, "the API")
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        ids = []
        for i in range(8):
            r = http.post(
                "/v1/videos", json={"prompt": f"restart {i}", "size": "256x144", "seconds": "2"}
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        streamed: list[Any] = []
        opened = threading.Event()
        follower = threading.Thread(
            target=_follow, args=(url, ids[-1], streamed, opened), daemon=True
        )
        follower.start()
        assert opened.wait(30), streamed
        wait_until(
            lambda: any(s[1] == "in_progress" for s in fleet.platform.jobs.job_states(ids)),
            30,
            "a job to start",
        )

        pg_server.stop()
        down_since = time.monotonic()
        answers = []
        while time.monotonic() - down_since < 4:
            started = time.monotonic()
            r = http.get(f"/v1/videos/{ids[0]}")
            answers.append(
                (r.status_code, r.headers.get("retry-after"), time.monotonic() - started)
            )
            submit = http.post("/v1/videos", json={"prompt": "while down", "size": "64x64"})
            answers.append((submit.status_code, submit.headers.get("retry-after"), 0.0))
            assert submit.status_code != 200, "a submit was answered while the database was away"
            time.sleep(0.3)
        pg_server.start()

        assert answers
        for status, retry_after, took in answers:
            assert status == 503, answers
            assert retry_after is not None and int(retry_after) >= 1
            assert took < 10
        assert not any(s == 500 for s, _r, _t in answers)

        def all_done() -> bool:
            try:  # this process's pooled connections learn of the restart on first use
                states = fleet.platform.jobs.job_states(ids)
            except Unavailable:
                return False
            return all(s[1] in ("completed", "failed", "cancelled") for s in states)

        wait_until(all_done, 180, "every accepted job to finish", every=0.5)
        for job_id in ids:
            job = fleet.job(job_id)
            assert job.status is Status.COMPLETED, (job_id, job.status, job.error_message)
            kinds = [e.kind for e in fleet.events(job_id)]
            assert kinds.count("completed") == 1, kinds
            assert "worker_lost" not in kinds, kinds
            assert job.video_key is not None
            assert fleet.platform.objects.exists(job.video_key)

        follower.join(timeout=30)
        assert streamed and isinstance(streamed[-1], dict), streamed
        assert streamed[-1]["status"] == "completed", streamed[-3:]

        after = http.post("/v1/videos", json={"prompt": "after the restart", "size": "64x64"})
        assert after.status_code == 200, after.text
        wait_until(
            lambda: fleet.job(after.json()["id"]).status is Status.COMPLETED, 60, "a new job"
        )
        http.close()
    finally:
        fleet.stop_all()
        fleet.platform.close()
