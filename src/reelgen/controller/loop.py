"""Housekeeping no single worker can do: reap lost leases, expire content, prune keys."""

from __future__ import annotations

import logging
import random
import threading

from reelgen.platform import Platform
from reelgen.scheduler.policy import retry_backoff

log = logging.getLogger("reelgen.controller")

IDEMPOTENCY_TTL_S = 86_400.0


def tick(platform: Platform) -> None:
    now = platform.clock()
    for reaped in platform.jobs.reap(
        now=now, only_expired=True, backoff=lambda a: retry_backoff(a, random.random())
    ):
        log.warning(
            "job %s attempt %s: lease expired (worker_lost), %s",
            reaped.job_id,
            reaped.attempt,
            "requeued" if reaped.requeued else "ended",
        )
    for job in platform.jobs.expired_content(now):
        platform.objects.delete_prefix(f"videos/{job.id}")
        platform.objects.delete_prefix(f"inputs/{job.id}")
        platform.jobs.clear_content(job.id, now)
    platform.jobs.prune_idempotency_keys(now - IDEMPOTENCY_TTL_S)


def recover_orphans(platform: Platform) -> None:
    """At embedded start-up every running job belongs to a process that is gone."""
    for reaped in platform.jobs.reap(
        now=platform.clock(), only_expired=False, backoff=lambda a: 0.0
    ):
        log.warning(
            "job %s attempt %s was cut off by a restart; %s",
            reaped.job_id,
            reaped.attempt,
            "requeued" if reaped.requeued else "ended",
        )


def run(platform: Platform, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            tick(platform)
        except Exception:
            log.exception("controller tick failed")
        stop.wait(platform.settings.controller_interval_seconds)
