"""The queue's contract, run against SQLite and PostgreSQL: claims, leases, fencing, reaping."""

from __future__ import annotations

import pytest

from reelgen.domain import events as ev
from reelgen.domain.errors import Conflict, LeaseLost, RateLimited
from reelgen.domain.jobs import Stage, Status, Tier
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
        requested_model="reference",
        prompt="p",
        seconds=1,
        width=64,
        height=64,
        fps=24,
        seed=1,
        style=None,
        reference_key=None,
        parent_id=None,
        operation="create",
        status=Status.QUEUED.value,
        stage=Stage.WAITING_FOR_GPU.value,
        progress=0,
        step=0,
        total_steps=10,
        estimated_seconds=1.0,
        created_at=now,
        not_before=now,
        attempt=0,
        max_attempts=2,
        strikes=0,
        attempt_start_step=0,
        cancel_requested=False,
        checkpoint_step=0,
    )


def _submit(store: JobStore, row: dict) -> None:
    store.submit(row, admit=lambda _u: None, idempotency=None, request_hash="h")


def _claim(store: JobStore, worker: str, now: float, token: str, job_id: str | None = None):
    """Stands in for the dispatcher: assigns `job_id` (or the oldest ready job) to `worker`,
    then claims as that worker."""
    if job_id is None:
        ready = sorted(
            (r.created_at, r.id)
            for r in store.active_rows()
            if r.status == "queued" and r.not_before <= now and r.assigned_worker is None
        )
        job_id = ready[0][1] if ready else None
    if job_id is not None:
        store.assign([(job_id, worker)])
    claimed = store.claim(worker_id=worker, now=now, lease_seconds=30, lease_token=token)
    return claimed[0] if claimed else None


def test_a_worker_claims_only_the_job_assigned_to_it_and_only_once(store: JobStore) -> None:
    _submit(store, _row("free1", now=0.0))
    _submit(store, _row("paid1", user="u_paid", tier=Tier.PAID, now=10.0))
    assert store.claim(worker_id="w1", now=11.0, lease_seconds=30, lease_token="t0") == []
    assert store.assign([("paid1", "w1"), ("free1", "w2")]) == {"paid1", "free1"}
    assert store.assign([("paid1", "w3")]) == set()  # taken: the first assignment stands
    assert store.claim(worker_id="w3", now=11.0, lease_seconds=30, lease_token="t3") == []
    [first] = store.claim(worker_id="w1", now=11.0, lease_seconds=30, lease_token="t1")
    [second] = store.claim(worker_id="w2", now=11.0, lease_seconds=30, lease_token="t2")
    assert (first.id, second.id) == ("paid1", "free1")
    assert store.claim(worker_id="w1", now=11.0, lease_seconds=30, lease_token="t4") == []
    assert first.attempt == 1 and first.status is Status.IN_PROGRESS
    assert {r.id: r.assigned_worker for r in store.active_rows()} == {
        "paid1": None,
        "free1": None,
    }


def test_an_unclaimed_assignment_can_be_taken_back_and_a_new_leader_voids_all(
    store: JobStore,
) -> None:
    for i in range(3):
        _submit(store, _row(f"j{i}", now=float(i)))
    store.assign([("j0", "w1"), ("j1", "w2"), ("j2", "w3")])
    assert store.unassign("j0", "w1")
    assert not store.unassign("j1", "w9")  # not that worker's
    _claim(store, "w2", 5.0, "t", job_id="j1")
    assert not store.unassign("j1", "w2")  # claimed already
    assert store.clear_assignments() == 1  # j2's
    assert store.claim(worker_id="w3", now=6.0, lease_seconds=30, lease_token="t3") == []


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
    assert [e.payload.step for e in store.events_after("j") if e.kind == "checkpoint"] == [2, 4]


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
    assert seen == [UsageView(active=1, today=1, oldest_today=0.0, today_gpu_s=1.0)]
    assert store.get("b") is None


def test_a_lost_worker_counts_only_when_its_attempt_made_no_progress(store: JobStore) -> None:
    _submit(store, _row("moving"))
    now = 1.0
    for attempt in range(1, 8):  # far more losses than max_attempts (2)
        job = _claim(store, f"w{attempt}", now, f"t{attempt}")
        assert job is not None and job.attempt == attempt
        store.save_checkpoint("moving", f"t{attempt}", step=attempt, key=f"k{attempt}", now=now)
        now += 100.0
        (lost,) = store.reap(now=now, only_expired=True, backoff=lambda a: 0.0)
        assert lost.requeued and not lost.counted
    assert store.get("moving").strikes == 0
    store.request_cancel("moving", now)

    _submit(store, _row("poison"))
    for n in (1, 2):
        job = _claim(store, "wp", now, f"p{n}")
        assert job.id == "poison"
        now += 100.0
        (lost,) = store.reap(now=now, only_expired=True, backoff=lambda a: 0.0)
        assert lost.counted
    final = store.get("poison")
    assert final.status is Status.FAILED and final.error_code == "worker_lost"
    assert [e.payload.counted for e in store.events_after("poison") if e.kind == "worker_lost"] == [
        True,
        True,
    ]


def test_a_drain_is_never_held_against_the_job(store: JobStore) -> None:
    _submit(store, _row("j"))
    for n in range(5):
        _claim(store, "w", float(n), f"t{n}")
        store.release("j", f"t{n}", now=float(n), reason="worker_shutdown")
    job = store.get("j")
    assert (job.status, job.strikes, job.attempt) == (Status.QUEUED, 0, 0)


def test_event_log_reads_by_cursor_in_write_order(store: JobStore) -> None:
    from reelgen.domain.events import START, EventKind

    _submit(store, _row("a"))
    _submit(store, _row("b"))
    _claim(store, "w", 1.0, "t")
    page = store.read_events(START, limit=2)
    assert [(e.job_id, e.kind) for e in page] == [("a", EventKind.CREATED), ("b", "created")]
    rest = store.read_events(page[-1].cursor)
    assert [(e.job_id, e.kind) for e in rest] == [("a", EventKind.STARTED)]
    assert rest[0].payload.worker_id == "w" and rest[0].payload.attempt == 1
    cursors = [e.cursor for e in page + rest]
    assert cursors == sorted(cursors) and len(set(cursors)) == 3
    assert store.read_events(rest[-1].cursor) == []
    assert store.load_cursor("webhooks") == START
    store.save_cursor("webhooks", rest[-1].cursor, now=2.0)
    store.save_cursor("webhooks", rest[-1].cursor, now=3.0)
    assert store.load_cursor("webhooks") == rest[-1].cursor
    assert str(rest[-1].cursor) and type(rest[-1].cursor).parse(str(rest[-1].cursor)) == (
        rest[-1].cursor
    )


def _events_soon(store: JobStore, cursor, timeout: float = 15.0) -> list:
    """The events after `cursor`, waiting while the server holds them back: on PostgreSQL
    an event is handed out once every older transaction on the server has ended (any
    other session's open transaction may delay it; sessions idle in one end after 5 s)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        events = store.read_events(cursor)
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_head_cursor_skips_history_and_keeps_what_comes_after(store: JobStore) -> None:
    _submit(store, _row("old"))
    head = store.head_cursor()
    assert store.read_events(head) == []
    _submit(store, _row("new"))
    assert [(e.job_id, e.kind) for e in _events_soon(store, head)] == [("new", "created")]


def test_head_cursor_keeps_an_event_whose_transaction_is_still_open(
    store: JobStore, database_url: str
) -> None:
    """On PostgreSQL an event may commit after a later one; the cursor must not pass it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time")
    from sqlalchemy import text

    _submit(store, _row("j"))
    with store.db.write() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, kind, data) "
                "VALUES ('j', 1.0, 'preempt_requested', '{}')"
            )
        )
        head = store.head_cursor()  # taken while that transaction is open
    assert [e.kind for e in _events_soon(store, head)] == ["preempt_requested"]


def test_leased_with_finds_only_the_claim_of_that_worker_and_token(store: JobStore) -> None:
    store.register_worker("w", "reference", "host", 0.0)
    _submit(store, _row("j"))
    assert store.leased_with("w", "t") == []
    _claim(store, "w", 1.0, "t")
    [found] = store.leased_with("w", "t")
    assert found.id == "j" and found.attempt == 1
    assert store.leased_with("w", "other") == []
    assert store.leased_with("other", "t") == []


def test_a_batch_assigned_to_one_worker_is_claimed_together(store: JobStore) -> None:
    """Every job assigned to a worker is claimed at once, in submit order, under one token,
    each with its own `started` event; the worker's row names the first as current."""
    store.register_worker("w", "reference", "host", 0.0)
    for name in ("b0", "b1", "b2", "other"):
        _submit(store, _row(name))
    head = store.head_cursor()
    assert store.assign([("b2", "w"), ("b0", "w"), ("b1", "w")]) == {"b0", "b1", "b2"}
    claimed = store.claim(worker_id="w", now=2.0, lease_seconds=30, lease_token="t")
    assert [j.id for j in claimed] == ["b0", "b1", "b2"]
    assert {(j.status, j.attempt, j.lease_token) for j in claimed} == {(Status.IN_PROGRESS, 1, "t")}
    started = [e for e in _events_soon(store, head) if e.kind == "started"]
    assert sorted(e.job_id for e in started) == ["b0", "b1", "b2"]
    assert [j.id for j in store.leased_with("w", "t")] == ["b0", "b1", "b2"]
    assert [w.current_job_id for w in store.live_workers()] == ["b0"]
    assert store.get("other").status is Status.QUEUED
    assert store.claim(worker_id="w", now=2.1, lease_seconds=30, lease_token="u") == []


def test_the_bus_announces_work_to_other_processes_after_the_commit(pg_url: str) -> None:
    """On PostgreSQL, `work_available` reaches a listener on another connection (another
    process) without being part of any transaction, and wakes this process's workers."""
    import psycopg

    from reelgen.store.notify import WORK_CHANNEL, open_bus

    bus = open_bus(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as listener:
            listener.execute(f"LISTEN {WORK_CHANNEL}")
            mark = bus.work_mark()
            bus.work_available("reference")
            assert bus.wait_for_work(5, mark)
            notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [(WORK_CHANNEL, "reference")]
    finally:
        bus.close()


def test_forecasts_are_kept_for_queued_jobs_and_cleared_by_the_claim(store: JobStore) -> None:
    for i in range(3):
        _submit(store, _row(f"j{i}", now=float(i)))
    store.save_forecasts([("j0", 0, 10.0), ("j1", 1, None), ("j2", 2, 30.5)])
    assert [(store.get(j).queue_position, store.get(j).eta_at) for j in ("j0", "j1", "j2")] == [
        (0, 10.0),
        (1, None),
        (2, 30.5),
    ]
    running = _claim(store, "w1", 3.0, "t", job_id="j0")
    assert (running.queue_position, running.eta_at) == (None, None)
    store.save_forecasts([("j0", 5, 50.0), ("j2", 0, 40.0)])  # j0 is running: left alone
    assert store.get("j0").queue_position is None and store.get("j2").queue_position == 0


def test_a_batch_item_failing_in_the_database_fails_alone(store: JobStore) -> None:
    import threading

    from sqlalchemy import text

    store.db.start_group_commit()
    gate = threading.Event()
    blocker = store.db.batched(lambda _conn, items: [gate.wait(10) for _ in items], None)

    def broken(conn, items):
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))
        return [None for _ in items]

    before = store.submit_future(
        _row("a"), admit=lambda _u: None, idempotency=None, request_hash="h"
    )
    bad = store.db.batched(broken, None, order="u_free")
    after = store.submit_future(
        _row("b"), admit=lambda _u: None, idempotency=None, request_hash="h"
    )
    gate.set()
    assert blocker.result(10) is True
    assert before.result(10).created and after.result(10).created
    with pytest.raises(Exception, match="no_such_table"):
        bad.result(10)
    assert store.get("a") is not None and store.get("b") is not None


def test_seq_for_user_includes_deleted_and_excludes_other_users(store: JobStore) -> None:
    _submit(store, _row("mine"))
    store.mark_deleted("mine", 1.0)
    assert store.seq_for_user("u_free", "mine") is not None
    assert store.seq_for_user("u_paid", "mine") is None
    assert store.seq_for_user("u_free", "nope") is None


def test_sessions_requeue_only_the_attempt_they_name(store: JobStore) -> None:
    from reelgen.store.jobs import RunningOnWorker

    store.register_worker("w1", "reference", "host", 0.0, session_key=42)
    _submit(store, _row("j"))
    _claim(store, "w1", 1.0, "t1")
    (running,) = store.running_on_workers()
    assert running == RunningOnWorker("j", "t1", "w1", 42)
    stale = RunningOnWorker("j", "old-token", "w1", 42)
    assert store.reap_sessions([stale], now=2.0, backoff=lambda a: 0.0) == []
    (reaped,) = store.reap_sessions([running], now=2.0, backoff=lambda a: 0.0)
    assert reaped.requeued and store.get("j").status is Status.QUEUED
    lost = [e for e in store.events_after("j") if e.kind == "worker_lost"]
    assert lost[0].payload.detected_by == "session"
    assert store.running_on_workers() == []


def test_held_session_keys_see_a_live_session(store: JobStore, database_url: str) -> None:
    from reelgen.store.sessions import marker_for

    marker = marker_for(database_url)
    marker.start()
    try:
        held = store.held_session_keys()
        if database_url.startswith("sqlite"):
            assert held is None and marker.key is None
        else:
            assert held is not None and marker.key in held
    finally:
        marker.stop()
    if not database_url.startswith("sqlite"):
        import time

        deadline = time.monotonic() + 5  # the server ends the session once the socket closes
        while marker.key in (store.held_session_keys() or set()):
            assert time.monotonic() < deadline, "the session's lock outlived its connection"
            time.sleep(0.02)


def test_user_creation_keeps_or_sets_the_tier(store: JobStore) -> None:
    accounts = AccountStore(store.db)
    assert accounts.get_or_create_user(user_id="x", name="u_paid", tier=None, now=1.0).tier is (
        Tier.PAID
    )
    assert accounts.get_or_create_user(
        user_id="x", name="u_paid", tier=Tier.FREE, now=1.0
    ).tier is (Tier.FREE)
    accounts.add_key(key_id="k1", user_id="u_free", key_hash="h" * 64, prefix="rg_", now=1.0)
    accounts.add_key(key_id="k2", user_id="u_free", key_hash="h" * 64, prefix="rg_", now=1.0)
    assert accounts.count_keys() == 1
    assert accounts.user_for_key("h" * 64).id == "u_free"


def test_reads_for_listing_positions_and_progress(store: JobStore) -> None:
    for i, now in enumerate((0.0, 1.0, 2.0)):
        _submit(store, _row(f"j{i}", now=now))
    store.register_worker("w1", "reference", "host", 2.0)
    asc = store.list_for_user("u_free", after_seq=None, limit=10, descending=False)
    assert [j.id for j in asc] == ["j0", "j1", "j2"]
    after = store.list_for_user("u_free", after_seq=asc[0].seq, limit=1, descending=False)
    assert [j.id for j in after] == ["j1"]
    desc = store.list_for_user("u_free", after_seq=None, limit=10, descending=True)
    assert [j.id for j in desc] == ["j2", "j1", "j0"]
    snap = store.queue_snapshot(now=3.0)
    assert snap.queued == [("reference", "free", 3, 0.0)]
    assert snap.workers == [("reference", 1, 0)]
    _claim(store, "w1", 3.0, "t")
    states = dict((i, (s, st, p)) for i, s, st, p in store.job_states(["j0", "j1"]))
    assert states == {
        "j0": ("in_progress", "generating", 0),
        "j1": ("queued", "waiting_for_gpu", 0),
    }
    store.stop_worker("w1", 4.0)
    assert store.queue_snapshot(now=4.0).workers == []


def test_content_expiry_and_idempotency_pruning(store: JobStore) -> None:
    _submit(store, _row("j"))
    _claim(store, "w", 1.0, "t")
    store.complete(
        "j",
        "t",
        now=2.0,
        expires_at=10.0,
        video_key="v",
        thumbnail_key="th",
        spritesheet_key="s",
        first_step=1,
    )
    assert store.expired_content(now=5.0) == []
    assert [j.id for j in store.expired_content(now=11.0)] == ["j"]
    assert store.clear_content(["j"], now=11.0) == ["j"]
    assert store.clear_content(["j"], now=11.5) == []  # again, as after a crash: nothing
    assert store.expired_content(now=12.0) == []
    assert store.get("j").video_key is None
    assert store.events_after("j")[-1].kind == "expired"

    store.submit(
        _row("k", now=20.0),
        admit=lambda _u: None,
        idempotency=("u_free", "key-1"),
        request_hash="h1",
    )
    same, created = store.submit(
        _row("k2", now=21.0),
        admit=lambda _u: None,
        idempotency=("u_free", "key-1"),
        request_hash="h1",
    )
    assert (same.id, created) == ("k", False)
    assert store.prune_idempotency_keys(older_than=20.5) == 1
    _, created = store.submit(
        _row("k3", now=22.0),
        admit=lambda _u: None,
        idempotency=("u_free", "key-1"),
        request_hash="h1",
    )
    assert created is True


def test_finish_ends_a_running_job_fenced_and_refunds(store: JobStore) -> None:
    _submit(store, _row("j", now=0.0))
    _claim(store, "w", 1.0, "t")
    with pytest.raises(LeaseLost):
        store.finish("j", "stale", status=Status.FAILED, code="x", message="m", now=2.0)
    store.finish(
        "j", "t", status=Status.FAILED, code="generation_failed", message="m", now=2.0, refund=True
    )
    job = store.get("j")
    assert (job.status, job.error_code, job.quota_refunded) == (
        Status.FAILED,
        "generation_failed",
        True,
    )
    assert job.lease_token is None and store.events_after("j")[-1].kind == "failed"
    _submit(store, _row("c", now=3.0))
    _claim(store, "w", 3.0, "tc")
    store.finish("c", "tc", status=Status.CANCELLED, code="cancelled", message="m", now=4.0)
    assert store.events_after("c")[-1].payload.while_status == "in_progress"


def test_one_batch_keeps_refusals_and_conflicts_to_themselves(store: JobStore) -> None:
    """Submits that share a group commit: a quota refusal and an idempotency conflict in the
    batch fail alone, the others land, and each quota check sees the batch's earlier jobs."""
    import threading

    store.db.start_group_commit()
    store.submit(
        _row("first", now=0.0),
        admit=lambda _u: None,
        idempotency=("u_free", "k"),
        request_hash="h1",
    )
    gate = threading.Event()
    blocker = store.db.batched(  # holds the committer
        lambda _conn, items: [gate.wait(10) for _ in items], None
    )
    seen: list[UsageView] = []

    def record(usage: UsageView) -> None:
        seen.append(usage)

    def refuse(usage: UsageView) -> None:
        raise RateLimited("full", retry_after=1)

    futures = [
        store.submit_future(_row("a", now=1.0), admit=record, idempotency=None, request_hash="h"),
        store.submit_future(_row("no", now=1.0), admit=refuse, idempotency=None, request_hash="h"),
        store.submit_future(
            _row("clash", now=1.0), admit=record, idempotency=("u_free", "k"), request_hash="h2"
        ),
        store.submit_future(_row("b", now=2.0), admit=record, idempotency=None, request_hash="h"),
    ]
    gate.set()
    assert blocker.result(10) is True
    assert futures[0].result(10).created is True
    with pytest.raises(RateLimited):
        futures[1].result(10)
    with pytest.raises(Conflict):
        futures[2].result(10)
    landed = futures[3].result(10)
    assert landed.created is True
    assert seen == [
        UsageView(active=1, today=1, oldest_today=0.0, today_gpu_s=1.0),  # "a": sees "first"
        UsageView(active=2, today=2, oldest_today=0.0, today_gpu_s=2.0),  # "b": and "a" only
    ]
    assert [j for j in ("first", "a", "no", "clash", "b") if store.get(j) is not None] == [
        "first",
        "a",
        "b",
    ]


def test_one_batch_with_the_same_new_key_twice_makes_one_job(store: JobStore) -> None:
    """Two submits with one new Idempotency-Key in the same group commit: one job, the
    second answer names it; the same key with another body conflicts."""
    import threading

    store.db.start_group_commit()
    gate = threading.Event()
    blocker = store.db.batched(lambda _conn, items: [gate.wait(10) for _ in items], None)
    same = [
        store.submit_future(
            _row(job_id, user=key[0], now=1.0),
            admit=lambda _u: None,
            idempotency=key,
            request_hash=h,
        )
        for job_id, key, h in [
            ("one", ("u_free", "k"), "h"),
            ("two", ("u_free", "k"), "h"),
            ("three", ("u_free", "k"), "other"),
            ("four", ("u_paid", "k"), "h"),  # another user's key of the same name
        ]
    ]
    gate.set()
    assert blocker.result(10) is True
    first, second = same[0].result(10), same[1].result(10)
    assert (first.job.id, first.created) == ("one", True)
    assert (second.job.id, second.created) == ("one", False)
    with pytest.raises(Conflict):
        same[2].result(10)
    assert same[3].result(10).created is True
    assert store.get("two") is None and store.get("three") is None


def test_finishing_is_fenced_and_marks_its_worker_seen(store: JobStore) -> None:
    store.register_worker("w", "reference", "host", 0.0)
    _submit(store, _row("j"))
    _claim(store, "w", 1.0, "t")

    def seen() -> float:
        return next(r.heartbeat_at for r in store.live_workers() if r.id == "w")

    with pytest.raises(LeaseLost):
        store.finishing("j", "stale", worker_id="w", now=50.0)
    assert seen() == 1.0
    store.finishing("j", "t", worker_id="w", now=100.0)
    assert seen() == 100.0  # counted free by the dispatcher: not to be taken for silent
    (event,) = [e for e in store.events_after("j") if e.kind.value == "finishing"]
    assert event.payload == ev.Finishing(attempt=1, worker_id="w")
    store.heartbeat(
        "j", "t", now=160.0, lease_seconds=30, step=4, total_steps=4, progress=90,
        stage=Stage.ENCODING, stage_changed=True,
    )  # fmt: skip
    assert seen() == 160.0  # off the GPU: free as well
