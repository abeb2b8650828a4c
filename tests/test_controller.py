"""The controller's own view of the database: after an outage it waits before it reaps."""

from __future__ import annotations

from pathlib import Path

from reelgen.controller.loop import Elected
from reelgen.domain.errors import Unavailable
from reelgen.domain.jobs import Status, Tier
from reelgen.platform import ApiContext, build_api
from reelgen.services import videos
from reelgen.services.accounts import authenticate, create_key
from reelgen.store.database import upgrade

from .conftest import make_settings

LEASE_S = 30.0


class FlakyLeadership:
    """Leads, except while `down` (the database is unreachable)."""

    def __init__(self) -> None:
        self.down = False

    def try_acquire(self) -> bool:
        if self.down:
            raise Unavailable("the database is away")
        return True

    def release(self) -> None:
        return None


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _leased_job(tmp_path: Path, prompt: str) -> tuple[ApiContext, Clock, str]:
    """A platform on a fake clock with one job leased to worker `w1` for `LEASE_S`."""
    platform = build_api(make_settings(tmp_path, lease_seconds=LEASE_S))
    upgrade(platform.db.engine)
    clock = Clock(platform.clock())
    platform.clock = clock
    user = authenticate(platform, create_key(platform, user_name="u", tier=Tier.PAID))
    job, _ = videos.submit(platform, user, videos.CreateVideo(prompt=prompt))
    platform.jobs.register_worker("w1", "reference", "host", clock.now)
    platform.jobs.assign([(job.id, "w1")])
    [claimed] = platform.jobs.claim(
        worker_id="w1", now=clock.now, lease_seconds=LEASE_S, lease_token="t"
    )
    assert claimed.id == job.id
    return platform, clock, job.id


def test_expired_leases_wait_one_lease_after_an_outage(tmp_path: Path) -> None:
    platform, clock, job_id = _leased_job(tmp_path, "held through an outage")
    leadership = FlakyLeadership()
    elected = Elected(platform, leadership)
    try:
        assert elected.step()

        leadership.down = True
        clock.now += 2 * LEASE_S  # the outage outlasts the lease; the worker could not renew
        assert not elected.step()
        leadership.down = False
        assert elected.step()
        clock.now += LEASE_S / 2
        assert elected.step()
        held = platform.jobs.get(job_id)
        assert held is not None and held.status is Status.IN_PROGRESS

        clock.now += LEASE_S  # a whole lease after the outage, still no renewal: lost
        assert elected.step()
        reaped = platform.jobs.get(job_id)
        assert reaped is not None and reaped.status is Status.QUEUED
        kinds = [e.kind for e in platform.jobs.events_after(job_id)]
        assert kinds[-1] == "worker_lost"
    finally:
        platform.close()


def test_without_an_outage_an_expired_lease_is_reaped_at_once(tmp_path: Path) -> None:
    platform, clock, job_id = _leased_job(tmp_path, "lost for real")
    elected = Elected(platform, FlakyLeadership())
    try:
        clock.now += LEASE_S + 1
        assert elected.step()
        reaped = platform.jobs.get(job_id)
        assert reaped is not None and reaped.status is Status.QUEUED
    finally:
        platform.close()
