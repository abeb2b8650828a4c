"""The live dispatcher: the policy's decisions applied through the store, the same as the
simulator's on the same scenario, and through the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from reelgen.controller.dispatch import DispatchConfig, Dispatcher
from reelgen.domain.jobs import Stage, Status, Tier
from reelgen.platform import Core, build_core
from reelgen.scheduler.cost import measured_models
from reelgen.scheduler.fairshare import PolicyConfig
from reelgen.services.accounts import create_key
from reelgen.sim.engine import FleetConfig, simulate
from reelgen.sim.traffic import TIERS, ModelMix, Shape, Trace
from reelgen.store.accounts import AccountStore
from reelgen.store.database import upgrade
from reelgen.store.jobs import JobStore
from tests.conftest import make_settings

MODEL = "reference"
STEPS_PER_SECOND = 1
"""Scenario jobs take one step per second, so a checkpoint is a whole number of steps."""

# (arrival s, tier, user, GPU-seconds): two GPUs; batch fills them, a heavy free user
# queues four jobs, a light one queues one later, and a paid job arrives that can only
# start by preempting batch work once it is overdue.
SCENARIO = [
    (0.5, Tier.BATCH, 7, 400.0),
    (0.6, Tier.BATCH, 7, 400.0),
    (2.2, Tier.FREE, 1, 50.0),
    (2.3, Tier.FREE, 1, 50.0),
    (2.4, Tier.FREE, 1, 50.0),
    (2.5, Tier.FREE, 1, 50.0),
    (3.1, Tier.FREE, 2, 50.0),
    (10.0, Tier.PAID, 3, 40.0),
    (130.0, Tier.PAID, 3, 20.0),
]


def _trace() -> Trace:
    n = len(SCENARIO)
    seconds = np.array([s for *_, s in SCENARIO])
    return Trace(
        arrival=np.array([a for a, *_ in SCENARIO]),
        tier=np.array([TIERS.index(t) for _, t, _, _ in SCENARIO]),
        user=np.array([u for _, _, u, _ in SCENARIO]),
        model=np.zeros(n, dtype=int),
        shape=np.zeros(n, dtype=int),
        gpus=np.ones(n, dtype=int),
        gpu_seconds=seconds,
        actual_seconds=seconds.copy(),
        batch_gain=np.ones(n),
        batchable=np.zeros(n, dtype=bool),
        models=(ModelMix(MODEL, "1.3B", 1.0, (Shape(64, 64, 24, 1.0),)),),
        deadline_s=86_400.0,
    )


def _decisions(rounds) -> list[tuple[float, str, tuple[str, ...], tuple[str, ...]]]:
    out = []
    for now, d in rounds:
        out += [(now, "run", a.jobs, a.workers) for a in d.assignments]
        out += [(now, "preempt", (p.job,), ()) for p in d.preemptions]
    return out


class _LiveFleet:
    """The store and the dispatcher as the controller runs them, on a scripted clock, with
    stand-in workers that claim what they are given and end it when the scenario says."""

    def __init__(self, platform: Core, policy: PolicyConfig):
        self.p = platform
        self.dispatcher = Dispatcher(platform, DispatchConfig(policy=policy))
        self.tokens: dict[str, str] = {}
        self.ends: list[tuple[float, str, str]] = []
        """(when, "complete" | "release", job)"""
        self.started_at: dict[str, float] = {}
        self.rounds: list = []
        for g in range(2):
            platform.jobs.register_worker(f"h0/{g}", MODEL, "h0", 0.0, holds=(MODEL,))

    def submit(self, i: int, arrival: float, tier: Tier, user: int, seconds: float) -> None:
        steps = int(seconds * STEPS_PER_SECOND)
        _queue(self.p.jobs, str(i), f"user{user}", tier, arrival, seconds, steps)

    def round(self, now: float) -> None:
        decisions = self.dispatcher.step(now)
        self.rounds.append((now, decisions))
        for a in decisions.assignments:
            (job_id,), (worker,) = a.jobs, a.workers
            token = f"{job_id}:{len(self.tokens)}"
            [job] = self.p.jobs.claim(
                worker_id=worker, now=now, lease_seconds=1e9, lease_token=token
            )
            assert job.id == job_id
            self.tokens[job_id] = token
            self.started_at[job_id] = now
            left = job.estimated_seconds * (1 - job.checkpoint_step / job.total_steps)
            self.ends.append((now + left, "complete", job_id))
        for p in decisions.preemptions:
            self.ends.append((now + FleetConfig().preempt_delay_s, "release", p.job))
        for worker in ("h0/0", "h0/1"):  # idle workers poll: their heartbeat
            self.p.jobs.claim(worker_id=worker, now=now, lease_seconds=1e9, lease_token="poll")

    def settle(self, now: float) -> None:
        """Ends and hand-backs due by `now`, in time order, before the round."""
        self.ends.sort()
        while self.ends and self.ends[0][0] <= now:
            at, what, job_id = self.ends.pop(0)
            job = self.p.jobs.get(job_id)
            token = self.tokens[job_id]
            if job is None or job.status is not Status.IN_PROGRESS or job.lease_token != token:
                continue  # preempted before it ended, or ended before the preemption
            if what == "complete":
                self.p.jobs.complete(
                    job_id,
                    token,
                    video_key="v",
                    thumbnail_key=None,
                    spritesheet_key=None,
                    expires_at=at + 1e6,
                    now=at,
                    first_step=0,
                )
            else:
                ran = int((at - self.started_at[job_id]) * STEPS_PER_SECOND)
                step = job.checkpoint_step + ran
                self.p.jobs.save_checkpoint(job_id, token, step=step, key="ck", now=at)
                self.p.jobs.release(job_id, token, now=at, reason="preempted")
                self.ends = [e for e in self.ends if e[2] != job_id]


def _queue(
    jobs: JobStore,
    job_id: str,
    user: str,
    tier: Tier,
    now: float,
    seconds: float,
    steps: int,
    **columns: object,
) -> None:
    """Submits a queued job of `seconds` estimated GPU-seconds as the API's rows look."""
    row = dict(
        id=job_id, user_id=user, tier=tier.value, model=MODEL, requested_model=MODEL,
        prompt="p", seconds=1, width=64, height=64, fps=24, seed=1, style=None,
        reference_key=None, parent_id=None, operation="create", status=Status.QUEUED.value,
        stage=Stage.WAITING_FOR_GPU.value, progress=0, step=0, total_steps=steps,
        estimated_seconds=seconds, created_at=now, not_before=now, attempt=0,
        max_attempts=3, strikes=0, attempt_start_step=0, cancel_requested=False,
        checkpoint_step=0, **columns,
    )  # fmt: skip
    jobs.submit(row, admit=lambda _u: None, idempotency=None, request_hash="h")


def _platform(tmp_path: Path, database_url: str) -> Core:
    platform = build_core(make_settings(tmp_path, database_url=database_url))
    upgrade(platform.db.engine)
    accounts = AccountStore(platform.db)
    for user in sorted({u for _, _, u, _ in SCENARIO}):
        accounts.get_or_create_user(user_id=f"user{user}", name=f"u{user}", tier=None, now=0.0)
    return platform


@contextmanager
def _one_worker(tmp_path: Path, queued: int) -> Iterator[Core]:
    """A SQLite platform with one worker `w1` of `MODEL` and `queued` jobs `j0`, `j1`, ...
    of one free user, a second apart (5 estimated GPU-seconds and 5 steps each)."""
    platform = _platform(tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    try:
        platform.jobs.register_worker("w1", MODEL, "h", 0.0, holds=(MODEL,))
        for i in range(queued):
            _queue(platform.jobs, f"j{i}", "user1", Tier.FREE, float(i), 5.0, 5)
        yield platform
    finally:
        platform.close()


def test_the_live_dispatcher_decides_what_the_simulator_decides(
    tmp_path: Path, database_url: str
) -> None:
    policy = PolicyConfig()
    sim = simulate(
        _trace(),
        FleetConfig(gpus=2, gpus_per_host=2, tick_s=1.0, record=True),
        policy,
        measured_models(),
    )
    expected = _decisions(sim.rounds)
    kinds = [k for _, k, _, _ in expected]
    assert "preempt" in kinds and kinds.count("run") == len(SCENARIO) + 1  # one resumed

    platform = _platform(tmp_path, database_url)
    try:
        live = _LiveFleet(platform, policy)
        arrivals = list(enumerate(SCENARIO))
        for now, _ in sim.rounds:
            while arrivals and arrivals[0][1][0] <= now:
                i, (arrival, tier, user, seconds) = arrivals.pop(0)
                live.submit(i, arrival, tier, user, seconds)
            live.settle(now)
            live.round(now)
        assert _decisions(live.rounds) == expected
        # The store agrees: the preempted job was counted and resumed from its checkpoint.
        preempted = next(j for _, k, (j,), _ in expected if k == "preempt")
        job = platform.jobs.get(preempted)
        assert job is not None and job.status is Status.COMPLETED
        starts = [
            e.payload for e in platform.jobs.events_after(preempted) if e.kind.value == "started"
        ]
        assert len(starts) == 2 and starts[1].resume_step > 0
        assert platform.jobs.scheduling_rows([preempted])[preempted].preemptions == 1
    finally:
        platform.close()


def test_an_unclaimed_assignment_goes_to_another_worker(tmp_path: Path, database_url: str) -> None:
    platform = _platform(tmp_path, database_url)
    try:
        jobs = platform.jobs
        jobs.register_worker("w1", MODEL, "h", 0.0, holds=(MODEL,))
        dispatcher = Dispatcher(platform, DispatchConfig(claim_timeout_s=10.0))
        _queue(jobs, "a", "user1", Tier.FREE, 0.0, 5.0, 5)
        first = dispatcher.step(1.0)
        assert [(a.jobs, a.workers) for a in first.assignments] == [(("a",), ("w1",))]
        jobs.register_worker("w2", MODEL, "h", 2.0, holds=(MODEL,))
        assert dispatcher.step(2.0).assignments == []  # w1 still has time to claim
        again = dispatcher.step(12.0)  # w1 is silent: the job moves, w1 gets nothing more
        assert [(a.jobs, a.workers) for a in again.assignments] == [(("a",), ("w2",))]
        assert jobs.claim(worker_id="w1", now=12.5, lease_seconds=30, lease_token="x") == []
        [job] = jobs.claim(worker_id="w2", now=12.5, lease_seconds=30, lease_token="y")
        assert job.id == "a"
    finally:
        platform.close()


def test_a_new_leader_voids_old_assignments_and_keeps_running_jobs(
    tmp_path: Path, database_url: str
) -> None:
    platform = _platform(tmp_path, database_url)
    try:
        jobs = platform.jobs
        for w in ("w1", "w2"):
            jobs.register_worker(w, MODEL, "h", 0.0, holds=(MODEL,))
        for i in range(3):
            _queue(jobs, f"j{i}", "user1", Tier.FREE, float(i), 5.0, 5)
        old = Dispatcher(platform)
        assert len(old.step(3.0).assignments) == 2
        [running] = jobs.claim(worker_id="w1", now=3.1, lease_seconds=30, lease_token="t")
        assert running is not None
        new = Dispatcher(platform)  # the old leader is gone; w2 never claimed
        decisions = new.step(3.5)
        assert new.policy.running[running.id].workers == ("w1",)
        assert [a.workers for a in decisions.assignments] == [("w2",)]
        assert new.policy.queued == 1
    finally:
        platform.close()


def test_a_cancelled_assignment_frees_its_worker(tmp_path: Path) -> None:
    with _one_worker(tmp_path, 2) as platform:
        jobs = platform.jobs
        dispatcher = Dispatcher(platform)
        assert [a.jobs for a in dispatcher.step(2.0).assignments] == [("j0",)]
        jobs.request_cancel("j0", 2.1)
        assert [a.jobs for a in dispatcher.step(2.2).assignments] == [("j1",)]
        [job] = jobs.claim(worker_id="w1", now=2.3, lease_seconds=30, lease_token="t")
        assert job.id == "j1"


@pytest.mark.slow  # 22 real jobs through one worker
def test_through_the_api_a_paid_job_and_a_new_users_first_job_go_ahead_of_a_backlog(
    start_server,
) -> None:
    live = start_server(
        workers=1, free_max_concurrent=30, reference_steps=12, checkpoint_every_steps=100
    )
    platform = live.platform
    carol = create_key(platform, user_name="carol", tier=Tier.FREE)
    body = {"prompt": "a slow pan", "seconds": "1", "size": "64x64"}
    # The first job keeps the GPU busy while the others arrive, so no decision is made
    # while the newcomer's and the paid job's submits are on their way.
    first = {**body, "seconds": "4", "size": "1280x720"}
    with live.client(live.free_key) as bob:
        backlog = [bob.post("/v1/videos", json=first).json()["id"]]
        backlog += [bob.post("/v1/videos", json=body).json()["id"] for _ in range(19)]
    with live.client(carol) as http:
        newcomer = http.post("/v1/videos", json=body).json()["id"]
    with live.client(live.paid_key) as http:
        paid = http.post("/v1/videos", json=body).json()["id"]
    for video_id, key in [*((b, live.free_key) for b in backlog), (newcomer, carol), (paid, None)]:
        live.wait_for(video_id, key, timeout=120)

    def at(job_id: str, kind: str) -> float:
        return next(e.at for e in platform.jobs.events_after(job_id) if e.kind.value == kind)

    both_in = max(at(paid, "created"), at(newcomer, "created"))
    later = sorted(
        (j for j in [*backlog, newcomer, paid] if at(j, "started") >= both_in),
        key=lambda j: at(j, "started"),
    )
    assert later[0] == paid  # the paid job starts next, whatever the free backlog
    assert at(newcomer, "started") < both_in or later[1] == newcomer
    behind = [j for j in backlog if at(j, "started") > at(newcomer, "started")]
    assert len(behind) > len(backlog) // 2  # most of the first user's backlog waits


def test_the_live_policy_takes_its_parameters_from_the_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, paid_weight=3.0, max_preemptions=1, free_wait_target_seconds=600, max_batch=4
    )
    config = DispatchConfig.of(settings)
    assert config.policy.weights[Tier.PAID] == 3.0 and config.policy.max_preemptions == 1
    assert config.policy.target(Tier.FREE) == 600 and config.policy.max_batch == 4


def test_the_dispatcher_publishes_desired_workers_per_pool(tmp_path: Path) -> None:
    platform = _platform(tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    try:
        jobs = platform.jobs
        jobs.register_worker("w1", MODEL, "h", 1000.0, holds=(MODEL,))
        for i in range(10):
            _queue(jobs, f"j{i}", "user1", Tier.PAID, 1000.0, 100.0, 100)
        Dispatcher(platform).step(1001.0)
        [(target, updated_at)] = jobs.pool_targets()
        assert updated_at == 1001.0
        assert (target.model, target.live, target.busy, target.queued) == (MODEL, 1, 1, 9)
        assert target.backlog_gpu_s == 900.0
        assert target.desired >= 900.0 / 120.0  # paid backlog drained within two minutes
    finally:
        platform.close()


def test_admin_pools_and_metrics_show_the_autoscaling_signal(live) -> None:
    with live.client() as http:
        http.post("/v1/videos", json={"prompt": "p", "seconds": "1", "size": "64x64"})
        deadline = time.monotonic() + 15
        pools: list[dict] = []
        while not pools and time.monotonic() < deadline:
            pools = http.get("/admin/pools").json()["data"]
            time.sleep(0.1)
        metrics = http.get("/metrics").text
    [pool] = pools
    assert pool["model"] == MODEL and pool["live_workers"] == 1 and pool["age_seconds"] < 15
    assert pool["desired_workers"] >= 0
    assert f'reelgen_desired_workers{{model="{MODEL}"}}' in metrics


def test_batch_jobs_past_their_deadline_are_reported_late(tmp_path: Path) -> None:
    platform = _platform(tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    try:
        jobs = platform.jobs
        for i in range(3):
            _queue(jobs, f"b{i}", "user7", Tier.BATCH, 0.0, 50.0, 50)
        Dispatcher(platform, DispatchConfig(batch_deadline_s=100.0)).step(150.0)
        [(target, _at)] = jobs.pool_targets()
        assert target.late == 3  # no worker: all three wait past the deadline
        platform.metrics.watch_queue(platform.jobs, lambda: 151.0)
        scraped = generate_latest(platform.metrics.registry).decode()
        assert f'reelgen_jobs_late{{model="{MODEL}"}} 3.0' in scraped
    finally:
        platform.close()


def test_a_job_that_left_the_gpu_frees_its_worker_for_the_next(tmp_path: Path) -> None:
    """Once a job reports a stage past generation, its worker may claim the next job while
    it still holds the first one's lease; each lease stays fenced on its own."""
    with _one_worker(tmp_path, 2) as platform:
        jobs = platform.jobs
        dispatcher = Dispatcher(platform)
        assert [a.jobs for a in dispatcher.step(2.0).assignments] == [("j0",)]
        [first] = jobs.claim(worker_id="w1", now=2.1, lease_seconds=30, lease_token="t0")
        assert first.id == "j0"
        assert dispatcher.step(2.2).assignments == []  # generating: the GPU is taken
        for stage in (Stage.GENERATING, Stage.ENCODING):
            jobs.heartbeat(
                "j0", "t0", now=2.3, lease_seconds=30, step=5, total_steps=5, progress=90,
                stage=stage, stage_changed=True,
            )  # fmt: skip
        assert [a.jobs for a in dispatcher.step(2.4).assignments] == [("j1",)]
        [second] = jobs.claim(worker_id="w1", now=2.5, lease_seconds=30, lease_token="t1")
        assert second.id == "j1"
        jobs.heartbeat(
            "j1", "t1", now=2.6, lease_seconds=30, step=1, total_steps=5, progress=10,
            stage=Stage.GENERATING,
        )  # fmt: skip
        jobs.complete(
            "j0", "t0", now=2.7, expires_at=99.0, video_key="v", thumbnail_key="t",
            spritesheet_key="s", first_step=1,
        )  # fmt: skip
        assert jobs.get("j0").status is Status.COMPLETED
        assert jobs.get("j1").status is Status.IN_PROGRESS
        assert dispatcher.step(2.8).assignments == []  # j1 still holds the GPU
        restarted = Dispatcher(platform)  # a new leader reads the rows the same way
        restarted.step(2.9)
        assert not restarted.policy.is_idle("w1")
        assert list(restarted.policy.running) == ["j1"]


def test_a_job_in_its_last_step_frees_its_worker_even_after_a_long_run(tmp_path: Path) -> None:
    """`finishing` frees the worker at once, and marks it seen: a worker busy for longer
    than `worker_alive_s` is not taken for a silent one once it is free. An event that names
    another worker than the job's changes nothing."""
    with _one_worker(tmp_path, 3) as platform:
        jobs = platform.jobs
        dispatcher = Dispatcher(platform)
        assert [a.jobs for a in dispatcher.step(3.0).assignments] == [("j0",)]
        assert jobs.claim(worker_id="w1", now=3.1, lease_seconds=300, lease_token="t0")
        assert dispatcher.step(3.2).assignments == []
        jobs.finishing("j0", "t0", worker_id="w1", now=200.0)  # busy for minutes
        assert [a.jobs for a in dispatcher.step(200.1).assignments] == [("j1",)]
        assert jobs.claim(worker_id="w1", now=200.2, lease_seconds=300, lease_token="t1")
        jobs.finishing("j1", "t1", worker_id="w2", now=200.3)  # not where j1 runs
        assert dispatcher.step(200.4).assignments == []
        assert not dispatcher.policy.is_idle("w1")


def test_a_new_leader_keeps_a_worker_on_the_job_it_claimed_during_the_last_step(
    tmp_path: Path,
) -> None:
    with _one_worker(tmp_path, 3) as platform:
        jobs = platform.jobs
        dispatcher = Dispatcher(platform)
        dispatcher.step(3.0)
        assert jobs.claim(worker_id="w1", now=3.1, lease_seconds=300, lease_token="t0")
        jobs.finishing("j0", "t0", worker_id="w1", now=4.0)
        assert [a.jobs for a in dispatcher.step(4.1).assignments] == [("j1",)]
        assert jobs.claim(worker_id="w1", now=4.2, lease_seconds=300, lease_token="t1")
        restarted = Dispatcher(platform)  # both run on w1: j0 in its last step
        assert restarted.step(4.3).assignments == []
        assert list(restarted.policy.running) == ["j1"]
        jobs.complete(
            "j0", "t0", now=4.4, expires_at=99.0, video_key="v", thumbnail_key="t",
            spritesheet_key="s", first_step=1,
        )  # fmt: skip
        assert restarted.step(4.5).assignments == []  # j1 still holds the GPU


def test_small_jobs_of_one_key_are_assigned_claimed_and_freed_as_one_batch(
    tmp_path: Path, database_url: str
) -> None:
    """Jobs of one batch key go to one worker in one assignment and one claim; the last
    step of any of them frees the worker (they share their steps); a new leader counts the
    whole batch as running on it, checkpoints and all."""
    platform = _platform(tmp_path, database_url)
    try:
        jobs = platform.jobs
        jobs.register_worker("w1", MODEL, "h", 0.0, holds=(MODEL,))
        for i in range(3):
            _queue(
                jobs, f"b{i}", "user1", Tier.FREE, float(i), 5.0, 5, batch_key="k", batch_gain=1.5
            )
        _queue(jobs, "odd", "user2", Tier.FREE, 2.5, 5.0, 5, batch_key="k2", batch_gain=1.5)
        dispatcher = Dispatcher(platform)
        assert [a.jobs for a in dispatcher.step(3.0).assignments] == [("b0", "b1", "b2")]
        claimed = jobs.claim(worker_id="w1", now=3.1, lease_seconds=300, lease_token="t")
        assert [j.id for j in claimed] == ["b0", "b1", "b2"]
        assert dispatcher.step(3.2).assignments == []
        for j in claimed:  # the batch checkpoints as it runs
            jobs.save_checkpoint(j.id, "t", step=2, key=f"checkpoints/{j.id}/s2", now=3.25)
        restarted = Dispatcher(platform)
        assert restarted.step(3.3).assignments == []
        assert sorted(restarted.policy.running) == ["b0", "b1", "b2"]
        jobs.finishing("b1", "t", worker_id="w1", now=4.0)
        assert [a.jobs for a in restarted.step(4.1).assignments] == [("odd",)]
    finally:
        platform.close()
