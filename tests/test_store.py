"""The queue's contract, run against SQLite and PostgreSQL: claims, leases, fencing, reaping."""

from __future__ import annotations

import pytest

from reelgen.domain.errors import LeaseLost, RateLimited
from reelgen.domain.jobs import Stage, Status, Tier
from reelgen.scheduler.policy import Policy
from reelgen.store.accounts import AccountStore
from reelgen.store.database import Database, make_engine, upgrade
from reelgen.store.jobs import JobStore, UsageView, WorkerFlags


@pytest.fixture
def store(database_url: str) -> JobStore:
    engine = make_engine(database_url)
    upgrade(engine)
    db = Database(engine)
    accounts = AccountStore(db)
    for uid, tier in (("u_free", Tier.FREE), ("u_paid", Tier.PAID)):
        accounts.get_or_create_user(user_id=uid, name=uid, tier=tier, now=0.0)
    return JobStore(db)


def _row(job_id: str, user: str = "u_free", tier: Tier = Tier.FREE, now: float = 0.0) -> dict:
    return dict(
        id=job_id,
        user_id=user,
        tier=tier.value,
        model="reference",
        prompt="p",
        seconds=1,
        width=64,
        height=64,
        seed=1,
        status=Status.QUEUED.value,
        stage=Stage.WAITING_FOR_GPU.value,
        progress=0,
        step=0,
        total_steps=10,
        estimated_seconds=1.0,
        created_at=now,
        not_before=now,
        rank_at=Policy().rank(tier, now),
        attempt=0,
        max_attempts=2,
        cancel_requested=False,
        checkpoint_step=0,
    )


def _submit(store: JobStore, row: dict) -> None:
    store.submit(row, admit=lambda _u: None, idempotency=None, request_hash="h")


def _claim(store: JobStore, worker: str, now: float, token: str):
    return store.claim(
        worker_id=worker,
        model="reference",
        now=now,
        lease_seconds=30,
        lease_token=token,
    )


def test_each_job_is_claimed_once_in_policy_order(store: JobStore) -> None:
    _submit(store, _row("free1", now=0.0))
    _submit(store, _row("paid1", user="u_paid", tier=Tier.PAID, now=10.0))
    first = _claim(store, "w1", 11.0, "t1")
    second = _claim(store, "w2", 11.0, "t2")
    assert (first.id, second.id) == ("paid1", "free1")
    assert _claim(store, "w3", 11.0, "t3") is None
    assert first.attempt == 1 and first.status is Status.IN_PROGRESS


def test_fencing_rejects_a_stale_token(store: JobStore) -> None:
    _submit(store, _row("j"))
    _claim(store, "w1", 1.0, "good")
    with pytest.raises(LeaseLost):
        store.heartbeat(
            "j",
            "stale",
            now=2.0,
            lease_seconds=30,
            step=1,
            total_steps=10,
            progress=9,
            stage=Stage.GENERATING,
        )
    with pytest.raises(LeaseLost):
        store.complete(
            "j",
            "stale",
            now=2.0,
            expires_at=9.0,
            video_key="v",
            thumbnail_key="t",
            spritesheet_key="s",
            first_step=1,
        )
    flags = store.heartbeat(
        "j",
        "good",
        now=2.0,
        lease_seconds=30,
        step=1,
        total_steps=10,
        progress=9,
        stage=Stage.GENERATING,
    )
    assert flags.cancel_requested is False


def test_expired_lease_is_requeued_then_failed_after_max_attempts(store: JobStore) -> None:
    _submit(store, _row("j"))
    _claim(store, "w1", 1.0, "a")
    assert store.reap(now=20.0, only_expired=True, backoff=lambda a: 5.0) == []
    reaped = store.reap(now=40.0, only_expired=True, backoff=lambda a: 5.0)
    assert [(r.job_id, r.requeued) for r in reaped] == [("j", True)]
    assert _claim(store, "w2", 42.0, "b") is None  # backing off
    job = _claim(store, "w2", 46.0, "b")
    assert job.attempt == 2
    with pytest.raises(LeaseLost):
        store.heartbeat(
            "j",
            "a",
            now=47.0,
            lease_seconds=30,
            step=1,
            total_steps=10,
            progress=9,
            stage=Stage.GENERATING,
        )
    reaped = store.reap(now=100.0, only_expired=True, backoff=lambda a: 0.0)
    assert reaped[0].requeued is False
    final = store.get("j")
    assert final.status is Status.FAILED and final.error_code == "worker_lost"
    kinds = [e.kind for e in store.events_after("j")]
    assert kinds.count("worker_lost") == 2 and kinds[-1] == "failed"


def test_checkpoint_is_fenced(store: JobStore) -> None:
    _submit(store, _row("j"))
    _claim(store, "w1", 1.0, "a")
    store.save_checkpoint("j", "a", step=2, key="k2", now=2.0)
    store.save_checkpoint("j", "a", step=4, key="k4", now=3.0)
    with pytest.raises(LeaseLost):
        store.save_checkpoint("j", "zzz", step=6, key="k6", now=4.0)
    job = store.get("j")
    assert (job.checkpoint_step, job.checkpoint_key) == (4, "k4")
    assert [e.data["step"] for e in store.events_after("j") if e.kind == "checkpoint"] == [2, 4]


def test_heartbeat_answers_cancel_and_preempt_and_keeps_progress_monotonic(
    store: JobStore,
) -> None:
    _submit(store, _row("j"))
    _claim(store, "w1", 1.0, "a")

    def beat(progress: int):
        return store.heartbeat(
            "j",
            "a",
            now=2.0,
            lease_seconds=30,
            step=1,
            total_steps=10,
            progress=progress,
            stage=Stage.GENERATING,
        )

    assert beat(40) == WorkerFlags(cancel_requested=False, preempt_requested=False)
    beat(10)
    assert store.get("j").progress == 40
    assert store.request_preempt("j", 3.0) is True
    assert beat(50).preempt_requested is True
    store.request_cancel("j", 4.0)
    assert beat(60).cancel_requested is True
    store.release("j", "a", now=5.0, reason="preempted")
    released = store.get("j")
    assert released.status is Status.QUEUED and released.preempt_requested is False
    assert released.attempt == 0
    assert store.request_preempt("j", 6.0) is False


def test_admission_sees_usage_inside_the_transaction(store: JobStore) -> None:
    seen: list[UsageView] = []
    _submit(store, _row("a", now=0.0))

    def admit(usage: UsageView) -> None:
        seen.append(usage)
        raise RateLimited("no", retry_after=3)

    with pytest.raises(RateLimited):
        store.submit(_row("b", now=5.0), admit=admit, idempotency=None, request_hash="h")
    assert seen == [UsageView(active=1, today=1, oldest_today=0.0)]
    assert store.get("b") is None
