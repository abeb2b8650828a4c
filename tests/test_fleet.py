"""Fleet mode on PostgreSQL with real processes: crashes, failover, drain, fencing, cancel."""

from __future__ import annotations

import itertools
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelgen.domain.jobs import Status
from reelgen.media.encode import probe_video

from .conftest import free_port
from .fleet import Fleet, make_fleet, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    f = make_fleet(tmp_path, pg_url)
    yield f
    f.stop_all()
    f.platform.close()


def _step(fleet: Fleet, job_id: str) -> int:
    return fleet.job(job_id).step


def test_chaos_sigkill_workers_every_job_completes_once(tmp_path: Path, pg_url: str) -> None:
    fleet = make_fleet(tmp_path, pg_url, REELGEN_REFERENCE_STEPS="60", REELGEN_MAX_ATTEMPTS="20")
    rng = random.Random(7)
    try:
        fleet.spawn("controller")
        workers = [fleet.spawn("worker") for _ in range(2)]
        jobs = [
            # Fixed seeds: the clips, and so the output checks' verdicts, are the same each run.
            fleet.submit(
                f"chaos {i} waves under a neon sky", size="256x144", seconds=2, seed=1000 + i
            )
            for i in range(30)
        ]
        ids = [j.id for j in jobs]
        deadline = time.monotonic() + 300
        kills = 0
        while time.monotonic() < deadline:
            states = fleet.platform.jobs.job_states(ids)
            if all(s[1] in ("completed", "failed", "cancelled") for s in states):
                break
            time.sleep(rng.uniform(1.5, 3.0))
            if kills < 10:
                victim = rng.randrange(len(workers))
                workers[victim].kill()
                kills += 1
                workers[victim] = fleet.spawn("worker")
        assert kills >= 5

        resumed = 0
        for job_id in ids:
            job = fleet.job(job_id)
            assert job.status is Status.COMPLETED, (job_id, job.status, job.error_message)
            events = fleet.events(job_id)
            kinds = [e.kind for e in events]
            assert kinds.count("completed") == 1
            starts = [e for e in events if e.kind == "started"]
            lost = [e for e in events if e.kind == "worker_lost"]
            for loss, restart in zip(lost, starts[1:], strict=False):
                assert restart.payload.resume_step == loss.payload.checkpoint_step
            done = next(e for e in events if e.kind == "completed")
            last_resume = starts[-1].payload.resume_step
            assert done.payload.first_step == last_resume + 1
            if last_resume > 0:
                resumed += 1
            assert job.video_key is not None and f"/a{job.attempt}/" in job.video_key
            path = fleet.root / f"{job_id}.mp4"
            path.write_bytes(fleet.platform.objects.get(job.video_key))
            info = probe_video(path)
            assert (info.width, info.height, info.num_frames) == (256, 144, 48)
        assert resumed >= 1, "no job was resumed from a checkpoint"
    finally:
        fleet.stop_all()
        fleet.platform.close()


def test_poison_job_fails_after_max_attempts_and_refunds_quota(fleet: Fleet) -> None:
    fleet.spawn("controller")
    job = fleet.submit("poison", size="256x144", seconds=2)
    for attempt in (1, 2, 3):
        # No checkpoint is ever reached: every attempt dies at the same point.
        worker = fleet.spawn(
            "worker", REELGEN_REFERENCE_STEPS="100000", REELGEN_CHECKPOINT_EVERY_STEPS="1000000"
        )
        wait_until(
            lambda a=attempt: (
                fleet.job(job.id).attempt == a and fleet.job(job.id).status is Status.IN_PROGRESS
            ),
            60,
            f"attempt {attempt}",
        )
        worker.kill()
    final = wait_until(
        lambda: fleet.job(job.id).status is Status.FAILED and fleet.job(job.id), 30, "failure"
    )
    assert final.error_code == "worker_lost"
    assert final.quota_refunded is True
    assert [e.kind for e in fleet.events(job.id)].count("worker_lost") == 3


def test_controller_failover_keeps_reaping(fleet: Fleet) -> None:
    a = fleet.spawn("controller")
    b = fleet.spawn("controller")
    leader = wait_until(
        lambda: next((p for p in (a, b) if p.logged("became the leader")), None), 30, "a leader"
    )
    standby = b if leader is a else a
    time.sleep(1.0)
    assert not standby.logged("became the leader")

    leader.kill()
    killed_at = time.monotonic()
    wait_until(lambda: standby.logged("became the leader"), 15, "the standby to take over")
    assert time.monotonic() - killed_at <= 15

    job = fleet.submit("orphaned by a vanished worker")
    fleet.platform.jobs.register_worker("ghost", "reference", "nowhere", fleet.platform.clock())
    # The new leader's dispatcher gives the job to the only worker it knows.
    wait_until(
        lambda: fleet.platform.jobs.scheduling_rows([job.id])[job.id].assigned_worker == "ghost",
        15,
        "the job assigned to the ghost",
    )
    [claimed] = fleet.platform.jobs.claim(
        worker_id="ghost",
        now=fleet.platform.clock(),
        lease_seconds=1.0,
        lease_token="ghost-token",
    )
    assert claimed.id == job.id
    wait_until(
        lambda: "worker_lost" in [e.kind for e in fleet.events(job.id)], 15, "the lease reaped"
    )
    assert fleet.job(job.id).status is Status.QUEUED


def test_sigterm_drains_a_worker_without_losing_work(fleet: Fleet) -> None:
    fleet.spawn("controller")  # dispatches
    worker = fleet.spawn("worker", REELGEN_REFERENCE_STEPS="400")
    job = fleet.submit("drain me", size="256x144", seconds=2)
    wait_until(lambda: _step(fleet, job.id) >= 20, 60, "step 20")
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0

    drained = fleet.job(job.id)
    assert drained.status is Status.QUEUED
    released = [e for e in fleet.events(job.id) if e.kind == "released"]
    assert len(released) == 1 and released[0].payload.reason == "worker_shutdown"
    assert drained.checkpoint_step >= 20

    fleet.spawn("worker", REELGEN_REFERENCE_STEPS="400")
    done = wait_until(
        lambda: fleet.job(job.id).status is Status.COMPLETED and fleet.job(job.id), 120, "done"
    )
    starts = [e for e in fleet.events(job.id) if e.kind == "started"]
    assert [s.payload.attempt for s in starts] == [1, 1]
    assert starts[1].payload.resume_step == drained.checkpoint_step
    assert done.attempt == 1


def test_stale_worker_is_fenced(fleet: Fleet) -> None:
    fleet.spawn("controller")
    stale = fleet.spawn("worker", REELGEN_REFERENCE_STEPS="300")
    job = fleet.submit("fence me", size="256x144", seconds=2)
    wait_until(lambda: _step(fleet, job.id) >= 10, 60, "step 10")
    stale.signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: "worker_lost" in [e.kind for e in fleet.events(job.id)], 30, "lease expiry"
        )
        fleet.spawn("worker", REELGEN_REFERENCE_STEPS="300")
        wait_until(lambda: fleet.job(job.id).attempt == 2, 30, "the second attempt")
    finally:
        stale.signal(signal.SIGCONT)
    wait_until(
        lambda: any(e.get("job_id") == job.id and "lease lost" in e["msg"] for e in stale.lines()),
        30,
        "the stale worker to notice it was fenced",
    )
    done = wait_until(
        lambda: fleet.job(job.id).status is Status.COMPLETED and fleet.job(job.id), 120, "done"
    )
    kinds = [e.kind for e in fleet.events(job.id)]
    assert kinds.count("completed") == 1
    assert done.video_key is not None and "/a2/" in done.video_key
    outputs = list((fleet.root / "objects" / "videos" / job.id).iterdir())
    assert [p.name for p in outputs] == ["a2"]
    assert stale.popen.poll() is None, "the fenced worker should keep serving"


def test_cancel_reaches_a_worker_in_another_process(fleet: Fleet) -> None:
    fleet.spawn("controller")  # dispatches
    fleet.spawn("worker", REELGEN_REFERENCE_STEPS="2000")
    job = fleet.submit("cancel me", size="256x144", seconds=2)
    wait_until(lambda: _step(fleet, job.id) >= 5, 60, "step 5")
    fleet.platform.jobs.request_cancel(job.id, fleet.platform.clock())
    final = wait_until(
        lambda: fleet.job(job.id).status is Status.CANCELLED and fleet.job(job.id), 30, "cancel"
    )
    assert final.step < 2000
    assert final.error_code == "cancelled"


def test_progress_reaches_sse_on_another_api_replica(fleet: Fleet) -> None:
    port = free_port()
    fleet.spawn("controller")  # dispatches
    api = fleet.spawn("api", "--port", str(port), REELGEN_BOOTSTRAP_API_KEY="rg_fleet_sse")
    fleet.spawn("worker", REELGEN_REFERENCE_STEPS="400")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(url), 30, "the API")
    headers = {"Authorization": "Bearer rg_fleet_sse"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        video = http.post(
            "/v1/videos", json={"prompt": "sse across processes", "size": "256x144", "seconds": "2"}
        ).json()
        updates = []
        stamps = []
        with http.stream("GET", f"/v1/videos/{video['id']}/events") as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    import json

                    updates.append(json.loads(line[6:]))
                    stamps.append(time.monotonic())
        metrics = http.get("/metrics").text
    assert updates[-1]["status"] == "completed"
    progress = [u["progress"] for u in updates if u["status"] == "in_progress"]
    assert len(set(progress)) >= 2, updates
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert sum(1 for g in gaps[:-1] if g < 0.5) <= 1, gaps  # throttled to ~1 per second
    assert "reelgen_queue_depth" in metrics or "reelgen_workers" in metrics
    assert api.popen.poll() is None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_worker_logs_are_json_with_job_and_attempt(fleet: Fleet) -> None:
    fleet.spawn("controller")  # dispatches
    worker = fleet.spawn("worker")
    job = fleet.submit("log me")
    wait_until(lambda: fleet.job(job.id).status is Status.COMPLETED, 60, "done")
    wait_until(lambda: worker.logged("completed"), 10, "the log line")
    about_job = [e for e in worker.lines() if e.get("job_id") == job.id]
    assert about_job and all(e["attempt"] == 1 for e in about_job)


def test_one_worker_process_serves_two_models(tmp_path: Path, pg_url: str) -> None:
    """`reelgen worker --model reference --model cog-remote`: one real worker process serves
    the reference model and a model behind a Cog service; jobs of both complete on it, it
    reports what it holds, and its log tells each switch."""
    import json as jsonlib

    from .cog_standin import CogStandIn

    standin = CogStandIn(step_s=0.02, steps=4)
    try:
        remote = {"cog-remote": {"url": standin.url, "steps": 4, "polling": True}}
        fleet = make_fleet(tmp_path, pg_url, REELGEN_REMOTE_MODELS=jsonlib.dumps(remote))
        try:
            fleet.spawn("controller")
            worker = fleet.spawn("worker", "--model", "reference", "--model", "cog-remote")
            done = []
            for model in ["cog-remote", "reference", "cog-remote"]:
                job = fleet.submit(f"a lantern for {model}", model=model, seed=3)
                wait_until(lambda j=job: fleet.job(j.id).status.is_terminal, 60, f"{model} job")
                done.append(fleet.job(job.id))
            assert [j.status for j in done] == [Status.COMPLETED] * 3, [
                j.error_message for j in done
            ]
            (row,) = fleet.platform.jobs.live_workers()
            assert row.holds == ("cog-remote", "reference") and row.model == "reference"
            switches = [e for e in worker.lines() if str(e.get("msg", "")).startswith("switched")]
            assert len(switches) == 3
        finally:
            fleet.stop_all()
            fleet.platform.close()
    finally:
        standin.close()


def test_a_fleet_shares_an_s3_bucket_instead_of_a_directory(tmp_path: Path, pg_url: str) -> None:
    """API, controller and two workers in their own processes with no shared directory: the
    worker that checkpointed is killed, the other resumes from the checkpoint in the bucket
    and uploads the video there, and the API serves it from the bucket."""
    from .s3_servers import ACCESS_KEY, SECRET_KEY, credentials, moto_server

    with moto_server() as s3, credentials():
        s3.create_bucket("fleet-media")
        fleet = make_fleet(
            tmp_path,
            pg_url,
            REELGEN_STORAGE_URL=s3.url("fleet-media", "fleet"),
            REELGEN_CHECKPOINT_EVERY_STEPS="2",
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        )
        try:
            port = free_port()
            fleet.spawn("api", "--port", str(port), REELGEN_BOOTSTRAP_API_KEY="rg-s3-fleet")
            fleet.spawn("controller")
            first = fleet.spawn("worker", REELGEN_DATA_DIR=str(tmp_path / "w1"))
            http = httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": "Bearer rg-s3-fleet"},
                timeout=30,
            )
            wait_until(lambda: _answers(http), 30, "the API")
            body = {"prompt": "a paper boat on a pond", "seed": 3, "size": "128x72", "seconds": "1"}
            job = fleet.job(http.post("/v1/videos", json=body).json()["id"])
            wait_until(lambda: fleet.job(job.id).checkpoint_step >= 4, 60, "a checkpoint")
            first.popen.send_signal(signal.SIGKILL)
            fleet.spawn("worker", REELGEN_DATA_DIR=str(tmp_path / "w2"))
            wait_until(lambda: fleet.job(job.id).status.is_terminal, 90, "the resumed job")
            done = fleet.job(job.id)
            assert done.status is Status.COMPLETED and done.attempt == 2, done.error_message
            resumed = [e for e in fleet.events(job.id) if e.kind == "started"][-1]
            assert resumed.payload.resume_step >= 4
            listed = s3.client().list_objects_v2(Bucket="fleet-media", Prefix="fleet/")
            assert f"fleet/{done.video_key}" in {o["Key"] for o in listed["Contents"]}
            assert not (tmp_path / "objects").exists()  # nothing on a local disk
            video = tmp_path / "downloaded.mp4"
            answer = http.get(f"/v1/videos/{job.id}/content")
            assert answer.status_code == 200, answer.text
            video.write_bytes(answer.content)
            assert probe_video(video).num_frames > 0
        finally:
            fleet.stop_all()
            fleet.platform.close()


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/v1/models").status_code == 200
    except httpx.TransportError:
        return False
