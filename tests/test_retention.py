"""Retention: a finished video's `expires_at` comes from its tier; the controller's garbage
collector deletes expired videos' objects (a directory or a bucket), then their rows' keys,
in batches, counts what it did, and retries a batch that failed without losing track."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select

from reelgen.api.schemas import VideoPublic
from reelgen.controller.loop import collect_garbage
from reelgen.domain.jobs import DAY_S, Stage, Status, Tier, Variant
from reelgen.platform import Core, build_api, build_core
from reelgen.services.accounts import authenticate, create_key
from reelgen.storage import keys
from reelgen.store.accounts import AccountStore
from reelgen.store.database import upgrade
from reelgen.store.schema import jobs

from .conftest import make_settings
from .s3_servers import S3Server, credentials, moto_server


def _finished(platform: Core, job_id: str, expires_at: float) -> list[str]:
    """A completed job as a worker leaves one, with its three outputs and its reference
    image stored; returns their keys."""
    row = dict(
        id=job_id, user_id="u", tier=Tier.FREE.value, model="reference",
        requested_model="reference",
        prompt="p", seconds=1, width=64, height=64, fps=24, seed=1, style=None,
        reference_key=keys.reference(job_id), parent_id=None, operation="create",
        status=Status.COMPLETED.value, stage=Stage.DONE.value, progress=100, step=6,
        total_steps=6, estimated_seconds=1.0, created_at=0.0, not_before=0.0, attempt=1,
        max_attempts=3, strikes=0, attempt_start_step=0, cancel_requested=False,
        checkpoint_step=0, completed_at=1.0, expires_at=expires_at,
        video_key=keys.output(job_id, 1, Variant.VIDEO),
        thumbnail_key=keys.output(job_id, 1, Variant.THUMBNAIL),
        spritesheet_key=keys.output(job_id, 1, Variant.SPRITESHEET),
    )  # fmt: skip
    platform.jobs.submit(row, admit=lambda _u: None, idempotency=None, request_hash="h")
    stored = [keys.output(job_id, 1, v) for v in Variant] + [keys.reference(job_id)]
    for key in stored:
        platform.objects.put(key, b"bytes")
    return stored


@pytest.fixture(params=["directory", "bucket"])
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Core]:
    overrides: dict[str, Any] = {"gc_batch": 3}
    server: Any = None
    with credentials():
        if request.param == "bucket":
            server = moto_server()
            s3: S3Server = server.__enter__()
            s3.create_bucket("retention")
            overrides["storage_url"] = s3.url("retention", "gc")
        core = build_core(make_settings(tmp_path, **overrides))
        upgrade(core.db.engine)
        AccountStore(core.db).get_or_create_user(user_id="u", name="u", tier=None, now=0.0)
        try:
            yield core
        finally:
            core.close()
            if server is not None:
                server.__exit__(None, None, None)


def _metric(platform: Core, name: str) -> float:
    for line in generate_latest(platform.metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name}")


def test_the_garbage_collector_deletes_expired_videos_in_batches(platform: Core) -> None:
    expired = {f"old{i}": _finished(platform, f"old{i}", expires_at=100.0 + i) for i in range(7)}
    kept = _finished(platform, "fresh", expires_at=10_000.0)
    assert collect_garbage(platform, now=1000.0) == 7  # three batches of at most 3
    for job_id, stored in expired.items():
        assert not any(platform.objects.exists(k) for k in stored)
        job = platform.jobs.get(job_id)
        assert job is not None and job.video_key is None and job.thumbnail_key is None
        assert platform.jobs.events_after(job_id)[-1].kind == "expired"
    assert all(platform.objects.exists(k) for k in kept)
    assert _metric(platform, "reelgen_gc_expired_videos_total") == 7
    assert _metric(platform, "reelgen_gc_backlog_videos") == 0
    assert collect_garbage(platform, now=1000.0) == 0  # nothing twice


def test_a_failed_batch_keeps_its_rows_and_the_next_round_finishes_it(platform: Core) -> None:
    """Objects are deleted before rows are cleared: a storage failure (or a crash between
    the two) leaves the rows, which the next round deletes again."""
    stored = _finished(platform, "old", expires_at=5.0)
    real = platform.objects.delete_many
    calls: list[Sequence[str]] = []

    def failing(doomed: Sequence[str]) -> None:
        calls.append(doomed)
        real(doomed[:1])  # part of the batch went before the failure
        raise OSError("storage went away")

    platform.objects.delete_many = failing  # type: ignore[method-assign]
    assert collect_garbage(platform, now=10.0) == 0
    assert platform.jobs.get("old").video_key is not None  # type: ignore[union-attr]
    assert _metric(platform, "reelgen_gc_failures_total") == 1
    platform.objects.delete_many = real  # type: ignore[method-assign]
    assert collect_garbage(platform, now=11.0) == 1
    assert not any(platform.objects.exists(k) for k in stored)
    assert set(calls[0]) >= set(stored)


def test_expires_at_follows_the_tier(start_server) -> None:
    live = start_server(paid_retention_days=30, free_retention_days=7)
    body = {"prompt": "a kite over dunes", "seconds": "1", "size": "64x64", "seed": 7}
    for key, days in ((live.paid_key, 30), (live.free_key, 7)):
        with live.client(key) as http:
            video_id = http.post("/v1/videos", json=body).json()["id"]
        done = live.wait_for(video_id, key=key)
        assert done["status"] == "completed", done
        assert abs(done["expires_at"] - done["completed_at"] - days * DAY_S) <= 2


def test_past_its_retention_a_finished_jobs_prompt_is_kept_only_as_a_hash(
    tmp_path: Path, database_url: str
) -> None:
    import hashlib

    from reelgen.controller.loop import forget_prompts
    from reelgen.services.videos import CreateVideo, VideoView, submit

    platform = build_api(make_settings(tmp_path, database_url=database_url, gc_batch=2))
    try:
        upgrade(platform.db.engine)
        user = authenticate(platform, create_key(platform, user_name="ret", tier=Tier.PAID))
        prompts = ["a secret garden at noon", "a lighthouse", "a fox in snow"]
        made = [submit(platform, user, CreateVideo(prompt=p))[0] for p in prompts]
        for job in made[:2]:  # finished; the third is still queued
            platform.jobs.request_cancel(job.id, platform.clock())
        now = platform.clock() + 31 * DAY_S
        assert forget_prompts(platform, now) == 2
        for job, prompt in zip(made[:2], prompts, strict=False):
            kept = platform.jobs.get(job.id)
            assert kept is not None and kept.spec.prompt == ""
            with platform.db.read() as conn:
                digest = conn.execute(
                    select(jobs.c.prompt_sha256).where(jobs.c.id == job.id)
                ).scalar()
            assert digest == hashlib.sha256(prompt.encode()).hexdigest()
            assert VideoPublic.from_view(VideoView(kept, None, None)).prompt is None
        queued = platform.jobs.get(made[2].id)
        assert queued is not None and queued.spec.prompt == prompts[2]
        assert forget_prompts(platform, now) == 0
        assert forget_prompts(platform, platform.clock() + DAY_S) == 0  # within its retention
    finally:
        platform.close()
