"""The garbage collector: expired videos deleted per second, rows and objects.

Fills a store with N completed videos whose retention has run out (each with its three
outputs and its reference image stored: four objects), flushes them to disk (expired
objects were written days before), then runs the leading controller's
`collect_garbage` until none is left and times it. Three set-ups: SQLite with the local
directory store (the embedded default), PostgreSQL with the directory store, and SQLite
with an S3 bucket on `rclone serve s3` on this machine (an emulator; one delete request per
1,000 keys).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import Check, bench_args, checks_table, emit, log, table
from _pg import scratch_database
from s3_upload import ACCESS, SECRET, s3_server
from sqlalchemy import insert

from reelgen.controller.loop import collect_garbage
from reelgen.domain.jobs import Stage, Status, Tier, Variant
from reelgen.platform import Core, build_core
from reelgen.settings import Settings
from reelgen.storage import keys
from reelgen.store.accounts import AccountStore
from reelgen.store.database import upgrade
from reelgen.store.schema import jobs

TARGET = 1000.0


def _fill(platform: Core, count: int) -> None:
    """`count` expired videos: rows in one statement per 1,000, objects one by one."""
    rows: list[dict[str, Any]] = []
    for i in range(count):
        job_id = f"video_gc{i:07d}"
        rows.append(
            dict(
                id=job_id,
                user_id="u",
                tier=Tier.FREE.value,
                model="reference",
                requested_model="reference",
                prompt="p",
                seconds=1,
                width=64,
                height=64,
                fps=24,
                seed=1,
                style=None,
                reference_key=keys.reference(job_id),
                parent_id=None,
                operation="create",
                status=Status.COMPLETED.value,
                stage=Stage.DONE.value,
                progress=100,
                step=6,
                total_steps=6,
                estimated_seconds=1.0,
                created_at=0.0,
                not_before=0.0,
                attempt=1,
                max_attempts=3,
                strikes=0,
                attempt_start_step=0,
                cancel_requested=False,
                checkpoint_step=0,
                completed_at=1.0,
                expires_at=2.0 + i * 1e-3,
                video_key=keys.output(job_id, 1, Variant.VIDEO),
                thumbnail_key=keys.output(job_id, 1, Variant.THUMBNAIL),
                spritesheet_key=keys.output(job_id, 1, Variant.SPRITESHEET),
            )
        )
        for key in [keys.output(job_id, 1, v) for v in Variant] + [keys.reference(job_id)]:
            platform.objects.put(key, b"x" * 64)
    for start in range(0, len(rows), 1000):
        with platform.db.write() as conn:
            conn.execute(insert(jobs), rows[start : start + 1000])


@contextmanager
def _platform(kind: str, root: Path) -> Iterator[Core]:
    overrides: dict[str, Any] = {"gc_seconds_per_tick": 3600.0}
    with _backing(kind, root) as extra:
        settings = Settings(data_dir=root / "data", **overrides, **extra)
        core = build_core(settings)
        try:
            upgrade(core.db.engine)
            AccountStore(core.db).get_or_create_user(user_id="u", name="u", tier=None, now=0.0)
            yield core
        finally:
            core.close()


@contextmanager
def _backing(kind: str, root: Path) -> Iterator[dict[str, Any]]:
    if kind == "postgresql":
        with scratch_database("gc") as url:
            yield {"database_url": url}
    elif kind == "s3":
        with s3_server("rclone", root / "s3") as endpoint:
            (root / "s3" / "gc").mkdir(parents=True)
            url = f"s3://gc/v?endpoint_url={endpoint}&region=us-east-1&addressing_style=path"
            yield {"storage_url": url}
    else:
        yield {}


def measure(kind: str, count: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as scratch, _platform(kind, Path(scratch)) as platform:
        began = time.perf_counter()
        _fill(platform, count)
        log(f"{kind}: {count} expired videos stored in {time.perf_counter() - began:.1f} s")
        os.sync()  # written days ago, as expired videos are: no writeback left to wait on
        time.sleep(2)
        began = time.perf_counter()
        expired = 0
        while True:
            done = collect_garbage(platform, now=1e9)
            expired += done
            if done == 0:
                break
        took = time.perf_counter() - began
        left = sum(1 for _ in platform.jobs.expired_content(1e9, limit=10))
        if expired != count or left:
            raise RuntimeError(f"{kind}: expired {expired} of {count}, {left} left")
        return count / took, expired


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--s3-videos", type=int, default=3_000)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
    setups = [
        ("sqlite", "SQLite + directory", args.videos),
        ("postgresql", "PostgreSQL + directory", args.videos),
        ("s3", "SQLite + S3 (rclone serve s3)", args.s3_videos),
    ]
    rows, checks = [], []
    for kind, label, count in setups:
        rate, expired = measure(kind, count)
        log(f"{label}: {rate:,.0f} videos/s")
        rows.append([label, f"{expired:,}", f"{4 * expired:,}", f"{rate:,.0f}"])
        checks.append(
            Check(
                f"expired videos per second, {label}",
                rate,
                "videos/s",
                f">= {TARGET:,.0f}",
                rate >= TARGET,
            )
        )
    md = [
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        table(["set-up", "videos", "objects", "videos/s"], rows),
        "",
        f"Batches of {Settings().gc_batch} (`REELGEN_GC_BATCH`).",
        "",
        checks_table(checks),
    ]
    return emit(args, "Garbage collector: expired videos per second", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
