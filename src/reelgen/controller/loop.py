"""The leading controller: the dispatcher (`controller.dispatch`: who runs where) and the
housekeeping no worker can do for itself (reap lost leases, collect expired videos' objects
and rows, prune keys,
forget audited prompts past their retention, delete quarantined outputs past theirs).

Exactly one controller acts at a time (see `store.election`); housekeeping is idempotent,
and a new leader's dispatcher voids its predecessor's unclaimed assignments, so a brief
overlap during failover is harmless.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from reelgen.controller.dispatch import Dispatcher
from reelgen.domain.errors import Unavailable
from reelgen.domain.jobs import DAY_S
from reelgen.domain.spec import Operation
from reelgen.platform import Core
from reelgen.scheduler.backoff import retry_backoff
from reelgen.storage import keys
from reelgen.store.election import Leadership
from reelgen.store.jobs import Reaped

log = logging.getLogger("reelgen.controller")

IDEMPOTENCY_TTL_S = 86_400.0
UPLOADS = frozenset({Operation.EXTEND, Operation.EDIT})
"""Operations whose source clip may have come with the request (no parent video)."""
SESSION_GRACE_S = 1.0
"""A worker's session marker must be missing this long before its job is requeued, so a
worker that is only reconnecting (a database restart) is not mistaken for a dead one."""


class SessionWatch:
    """Requeues the jobs of workers whose database session ended (see `store.sessions`)."""

    def __init__(self) -> None:
        self.missing_since: dict[str, float] = {}

    def check(self, platform: Core, now: float) -> list[Reaped]:
        held = platform.jobs.held_session_keys()
        if held is None:
            return []
        running = platform.jobs.running_on_workers()
        gone = [r for r in running if r.session_key is not None and r.session_key not in held]
        seen = {r.job_id for r in gone}
        self.missing_since = {
            job_id: t for job_id, t in self.missing_since.items() if job_id in seen
        }
        due = []
        for item in gone:
            first = self.missing_since.setdefault(item.job_id, now)
            if now - first >= SESSION_GRACE_S:
                due.append(item)
        if not due:
            return []
        for item in due:
            self.missing_since.pop(item.job_id, None)
        return platform.jobs.reap_sessions(
            due, now=now, backoff=lambda a: retry_backoff(a, random.random())
        )


def _account(platform: Core, reaped: list[Reaped], why: str) -> None:
    for r in reaped:
        platform.metrics.lease_expiries.inc()
        if r.requeued:
            platform.metrics.retries.inc()
        log.warning(
            "%s: worker lost, %s",
            why,
            "requeued" if r.requeued else "ended",
            extra={"job_id": r.job_id, "attempt": r.attempt},
        )
    if any(r.requeued for r in reaped):
        platform.bus.work_available()


def tick(platform: Core, sessions: SessionWatch | None = None, *, reap: bool = True) -> None:
    """One round of housekeeping; `reap=False` leaves running jobs alone (see `run_elected`)."""
    now = platform.clock()
    if reap:
        if sessions is not None:
            _account(platform, sessions.check(platform, now), "worker session ended")
        reaped = platform.jobs.reap(
            now=now, only_expired=True, backoff=lambda a: retry_backoff(a, random.random())
        )
        _account(platform, reaped, "lease expired")
    collect_garbage(platform, now)
    forget_prompts(platform, now)
    platform.jobs.prune_idempotency_keys(now - IDEMPOTENCY_TTL_S)
    platform.audit.forget_prompts(now - platform.settings.safety_prompt_retention_days * DAY_S)
    for entry_id, key in platform.audit.quarantined_before(
        now - platform.settings.safety_quarantine_days * DAY_S
    ):
        platform.objects.delete(key)
        platform.audit.quarantine_deleted(entry_id)


def collect_garbage(platform: Core, now: float) -> int:
    """Deletes expired videos' objects, then clears their rows, in batches; returns how many
    it expired. Objects go first: a crash between the two leaves rows that the next round
    finds and deletes again (deleting is idempotent), never a row pointing at nothing it
    still serves."""
    metrics = platform.metrics

    def batch() -> tuple[int, int]:
        expired = platform.jobs.expired_content(now, limit=platform.settings.gc_batch)
        doomed = [
            key
            for job in expired
            for key in keys.expiring(
                job.id,
                (job.video_key, job.thumbnail_key, job.spritesheet_key),
                job.spec.reference_key,
                job.spec.operation in UPLOADS and job.spec.parent_id is None,
            )
        ]
        platform.objects.delete_many(doomed)
        cleared = platform.jobs.clear_content([job.id for job in expired], now)
        metrics.gc_expired.inc(len(cleared))
        return len(expired), len(cleared)

    done, more = _in_batches(platform, "garbage collection", batch)
    if more is not None:
        metrics.gc_backlog.set(platform.settings.gc_batch if more else 0)
    return done


def forget_prompts(platform: Core, now: float) -> int:
    """Keeps only a hash of finished jobs' prompts past their retention, in batches; returns
    how many it forgot."""
    settings = platform.settings
    before = now - settings.prompt_retention_days * DAY_S

    def batch() -> tuple[int, int]:
        forgot = platform.jobs.forget_prompts(before, settings.gc_batch)
        platform.metrics.gc_prompts_forgotten.inc(forgot)
        return forgot, forgot

    return _in_batches(platform, "forgetting prompts", batch)[0]


def _in_batches(
    platform: Core, what: str, batch: Callable[[], tuple[int, int]]
) -> tuple[int, bool | None]:
    """Runs `batch` (it returns the rows it took and the rows it changed) until one takes
    fewer than `gc_batch` or the round's `gc_seconds_per_tick` are spent, so reaping never
    waits on it. Returns the rows changed and whether a full batch was left (None: a batch
    failed; it is logged, counted, and retried next round)."""
    settings = platform.settings
    deadline = time.monotonic() + settings.gc_seconds_per_tick
    done = 0
    while True:
        try:
            taken, changed = batch()
        except Exception:  # storage or database away: the rows stay, the next round retries
            log.exception("%s failed; retrying next round", what)
            platform.metrics.gc_failures.inc()
            return done, None
        done += changed
        if taken < settings.gc_batch or time.monotonic() >= deadline:
            return done, taken >= settings.gc_batch


def recover_orphans(platform: Core) -> None:
    """At embedded start-up every running job belongs to a process that is gone."""
    now = platform.clock()
    reaped = platform.jobs.reap(now=now, only_expired=False, backoff=lambda _a: 0.0)
    _account(platform, reaped, "cut off by a restart")


class Elected:
    """One controller process's view: whether it leads, and whether it may reap yet.

    After an outage of its own (the database restarted, or this process was cut off) it
    waits one lease period before it reaps: workers could not renew while the database was
    away, so an expired lease or an ended session says nothing yet about whether their
    worker is alive. Fresh renewals settle that within the period.
    """

    def __init__(self, platform: Core, leadership: Leadership):
        self.platform = platform
        self.leadership = leadership
        self.leading = False
        self.outage = False
        self.reap_from = 0.0
        self.sessions = SessionWatch()
        self.dispatcher: Dispatcher | None = None

    def step(self) -> bool:
        """One round; True when this process led it."""
        p = self.platform
        try:
            acquired = self.leadership.try_acquire()
        except Unavailable as exc:
            if not self.outage:
                log.warning("database unreachable (%s); waiting for it", exc)
            acquired, self.outage = False, True
        if not acquired:
            if self.leading:
                self.leading, self.dispatcher = False, None
                p.metrics.is_leader.set(0)
                log.warning("no longer the leader")
            return False
        if self.outage:
            self.outage, self.sessions, self.dispatcher = False, SessionWatch(), None
            self.reap_from = p.clock() + p.settings.lease_seconds
            log.info("database reachable again; reaping resumes after one lease")
        if not self.leading:
            self.leading = True
            p.metrics.is_leader.set(1)
            log.info("became the leader")
        try:
            tick(p, self.sessions, reap=p.clock() >= self.reap_from)
        except Unavailable as exc:
            log.warning("database unreachable during a tick (%s)", exc)
            self.outage = True
        except Exception:
            log.exception("controller tick failed")
        return True

    def dispatch(self) -> None:
        """One dispatcher round while leading; a failed round rebuilds the dispatcher from
        the store next time."""
        if not self.leading or self.outage:
            return
        p = self.platform
        try:
            if self.dispatcher is None:
                self.dispatcher = Dispatcher(p)
            self.dispatcher.step(p.clock())
        except Unavailable as exc:
            log.warning("database unreachable during dispatch (%s)", exc)
            self.outage, self.dispatcher = True, None
        except Exception:
            log.exception("dispatch round failed; rebuilding the dispatcher")
            self.dispatcher = None


def run_elected(
    platform: Core, stop: threading.Event, leadership: Leadership, retry_s: float = 1.0
) -> None:
    """Standby until the lock is ours, then lead: dispatch whenever work is announced (and
    every `dispatch_interval_seconds`), housekeep every `controller_interval_seconds`; step
    down if the lock is lost. Stopping: set `stop`, then `bus.wake_local()`."""
    settings = platform.settings
    elected = Elected(platform, leadership)
    housekeep_at = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() >= housekeep_at:
                led = elected.step()
                housekeep_at = time.monotonic() + (
                    settings.controller_interval_seconds if led else retry_s
                )
            mark = platform.bus.work_mark()
            began = time.monotonic()
            elected.dispatch()
            pause = min(settings.dispatch_interval_seconds, housekeep_at - time.monotonic())
            if not elected.leading:
                stop.wait(max(0.0, housekeep_at - time.monotonic()))
            elif pause > 0:
                platform.bus.wait_for_work(pause, since=mark)
                stop.wait(max(0.0, began + settings.dispatch_min_gap_seconds - time.monotonic()))
    finally:
        leadership.release()
