"""The scheduling policy's properties, on plain data with an injected clock."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict

import pytest

from reelgen.domain.jobs import Tier
from reelgen.scheduler.fairshare import Order, Scheduler, build
from reelgen.scheduler.view import TIER_ORDER, Decisions, QueuedJob, WorkerView

_ids = itertools.count()


def job(
    user: str = "u",
    tier: Tier = Tier.FREE,
    model: str = "m",
    seconds: float = 60.0,
    at: float = 0.0,
    **extra: object,
) -> QueuedJob:
    return QueuedJob(
        id=f"j{next(_ids)}",
        user=user,
        tier=tier,
        model=model,
        gpu_seconds=seconds,
        queued_at=at,
        created_at=at,
        **extra,  # type: ignore[arg-type]
    )


def worker(
    name: str, host: str = "h", models: tuple[str, ...] = ("m",), loaded: str | None = "m"
) -> WorkerView:
    return WorkerView(id=name, host=host, models=frozenset(models), loaded=loaded)


class Drive:
    """Runs a scheduler against its own decisions: each job takes the time the scheduler
    expected, then finishes; preempted jobs are handed back at once."""

    def __init__(self, scheduler: Scheduler):
        self.s = scheduler
        self.now = 0.0
        self.ends: list[tuple[float, int, str]] = []
        self.order: list[str] = []
        self.started_at: dict[str, float] = {}
        self.preempted: list[tuple[str, str]] = []
        self.jobs: dict[str, QueuedJob] = {}
        self._seq = itertools.count()

    def submit(self, *jobs: QueuedJob) -> None:
        for j in jobs:
            self.jobs[j.id] = j
            self.s.submit(j)

    def step(self) -> Decisions:
        decisions = self.s.schedule(self.now)
        for a in decisions.assignments:
            for job_id in a.jobs:
                self.order.append(job_id)
                self.started_at[job_id] = self.now
                end = self.s.running[job_id].expected_end
                heapq.heappush(self.ends, (end, next(self._seq), job_id))
        for p in decisions.preemptions:
            self.preempted.append((p.job, p.for_job))
            run = self.s.finished(p.job)
            assert run is not None
            back = self.jobs[p.job]
            back = QueuedJob(
                **{
                    **_fields(back),
                    "preemptions": back.preemptions + 1,
                    "queued_at": back.queued_at,
                }
            )
            self.jobs[back.id] = back
            self.s.submit(back)
        return decisions

    def run(self, until: float = float("inf"), max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            self.step()
            if not self.ends:
                return
            end, _, job_id = heapq.heappop(self.ends)
            if end > until:
                heapq.heappush(self.ends, (end, 0, job_id))
                self.now = until
                return
            self.now = max(self.now, end)
            self.s.finished(job_id)


def _fields(j: QueuedJob) -> dict[str, object]:
    return {name: getattr(j, name) for name in QueuedJob.__dataclass_fields__}


# ---- tiers -----------------------------------------------------------------------------


def test_paid_and_free_share_gpu_seconds_four_to_one_not_job_counts() -> None:
    """Free jobs twice the size of paid ones: paid gets 4/5 of the GPU-seconds, which is
    8 paid jobs for every free one."""
    s = build([], [worker("w1"), worker("w2")])
    d = Drive(s)
    d.submit(*(job(user=f"p{i}", tier=Tier.PAID, seconds=10.0) for i in range(400)))
    d.submit(*(job(user=f"f{i}", tier=Tier.FREE, seconds=20.0) for i in range(400)))
    d.run(until=1000.0)
    seconds: Counter[Tier] = Counter()
    for job_id in d.order:
        j = d.jobs[job_id]
        seconds[j.tier] += j.gpu_seconds
    share = seconds[Tier.PAID] / (seconds[Tier.PAID] + seconds[Tier.FREE])
    assert share == pytest.approx(0.8, abs=0.03)


def test_a_tier_that_had_no_backlog_banks_no_credit() -> None:
    """Free ran alone for a long time; when paid work arrives, paid is not starved by
    free's missing history, nor does free jump ahead for the time paid was absent."""
    s = build([], [worker("w")])
    d = Drive(s)
    d.submit(*(job(user="f", tier=Tier.FREE, seconds=10.0) for _ in range(50)))
    d.run(until=300.0)
    d.submit(*(job(user="p", tier=Tier.PAID, seconds=10.0, at=300.0) for _ in range(50)))
    before = len(d.order)
    d.run(until=500.0)
    tiers = Counter(d.jobs[j].tier for j in d.order[before:])
    assert tiers[Tier.PAID] >= 3 * tiers[Tier.FREE]
    assert tiers[Tier.FREE] >= 1


def test_batch_runs_only_where_nobody_else_waits() -> None:
    s = build([], [worker("w")])
    d = Drive(s)
    d.submit(job(tier=Tier.BATCH, user="b", deadline=86_400.0))
    d.submit(job(tier=Tier.FREE, user="f"), job(tier=Tier.PAID, user="p"))
    d.run()
    assert [d.jobs[j].tier for j in d.order] == [Tier.PAID, Tier.FREE, Tier.BATCH]


def test_a_batch_job_near_its_deadline_goes_first() -> None:
    s = build([], [worker("w")], batch_slack_s=600.0)
    d = Drive(s)
    urgent = job(tier=Tier.BATCH, user="b", seconds=100.0, deadline=650.0)
    d.submit(urgent, *(job(tier=Tier.FREE, user=f"f{i}") for i in range(3)))
    d.run()
    assert d.order[0] == urgent.id and d.started_at[urgent.id] + 100.0 <= 650.0


# ---- starvation and fairness -----------------------------------------------------------


def test_a_free_job_waits_no_longer_than_its_aging_bound_under_a_paid_flood() -> None:
    aging = 600.0
    s = build(
        [],
        [worker("w")],
        wait_target_s={Tier.PAID: 60.0, Tier.FREE: aging, Tier.BATCH: float("inf")},
        weights={Tier.PAID: 1000.0, Tier.FREE: 1.0, Tier.BATCH: 1.0},
    )
    d = Drive(s)
    free = job(tier=Tier.FREE, user="f", seconds=30.0)
    d.submit(free)
    # More paid work than the GPU can do, arriving all the time.
    for t in range(0, 3000, 20):
        d.submit(job(tier=Tier.PAID, user=f"p{t % 7}", seconds=30.0, at=float(t)))
    d.run(until=3000.0)
    assert free.id in d.started_at
    assert d.started_at[free.id] <= aging + 30.0  # the bound plus one running job


def test_one_users_thousand_jobs_do_not_delay_another_users_first() -> None:
    s = build([], [worker("w1"), worker("w2")])
    d = Drive(s)
    d.submit(*(job(user="heavy", seconds=60.0) for _ in range(1000)))
    d.step()
    d.now = 5.0
    light = job(user="light", seconds=60.0, at=5.0)
    d.submit(light)
    d.run(until=200.0)
    assert d.started_at[light.id] <= 60.0  # the next free GPU


def test_a_user_runs_at_most_their_cap_per_tier() -> None:
    caps = {Tier.PAID: 2, Tier.FREE: 1, Tier.BATCH: 10}
    s = build(
        [], [worker(f"w{i}") for i in range(6)], user_running_cap=caps, work_conserving_caps=False
    )
    s.submit(job(user="a", tier=Tier.FREE))
    s.submit(job(user="a", tier=Tier.FREE))
    for _ in range(4):
        s.submit(job(user="a", tier=Tier.PAID))
    s.submit(job(user="b", tier=Tier.FREE))
    s.schedule(0.0)
    running = Counter((r.tier, r.user) for r in s.running.values())
    assert running == {(Tier.PAID, "a"): 2, (Tier.FREE, "a"): 1, (Tier.FREE, "b"): 1}
    # When one of a's free jobs ends, the next one of theirs may start.
    a_free = next(r.id for r in s.running.values() if (r.tier, r.user) == (Tier.FREE, "a"))
    s.finished(a_free)
    s.schedule(1.0)
    assert Counter((r.tier, r.user) for r in s.running.values())[(Tier.FREE, "a")] == 1
    assert s.queued == 2  # a's two other paid jobs wait for their cap


def test_a_gpu_nobody_else_wants_runs_an_over_cap_users_job() -> None:
    """Work-conserving caps (the default): the cap holds while anyone under their cap
    waits; a GPU that would idle takes the capped user's oldest job."""
    caps = {Tier.PAID: 1, Tier.FREE: 1, Tier.BATCH: 1}
    s = build([], [worker("w1"), worker("w2"), worker("w3")], user_running_cap=caps)
    heavy = [job(user="heavy", at=float(i)) for i in range(4)]
    light = job(user="light", at=10.0)
    for j in [*heavy, light]:
        s.submit(j)
    started = {j for a in s.schedule(11.0).assignments for j in a.jobs}
    assert started == {heavy[0].id, light.id, heavy[1].id}


# ---- model affinity --------------------------------------------------------------------


def test_a_worker_keeps_its_model_unless_another_models_backlog_pays_for_the_switch() -> None:
    both = ("x", "y")
    s = build([], [worker("holder", models=("y",), loaded="y")], switch_payback=10.0)
    s.submit(job(model="y", user="u0", seconds=1000.0))
    s.schedule(0.0)  # the holder of y is busy from now on
    s.add_worker(worker("w", models=both, loaded="x"))
    small_y = job(model="y", user="u1", seconds=2.0, at=0.0)  # 2 GPU-s: does not pay 0.5 s
    later_x = job(model="x", user="u2", seconds=60.0, at=1.0)
    s.submit(small_y)
    s.submit(later_x)
    a = s.schedule(2.0).assignments
    assert [(x.jobs, x.switch) for x in a] == [((later_x.id,), False)]
    # Enough y backlog per holder, and the worker switches for the oldest y job.
    for i in range(3):
        s.submit(job(model="y", user=f"u{3 + i}", seconds=60.0, at=3.0))
    s.finished(later_x.id)
    (switch,) = s.schedule(4.0).assignments
    assert switch.jobs == (small_y.id,) and switch.switch


def test_a_switch_happens_when_nobody_holds_the_model_and_its_own_keeps_a_holder() -> None:
    s = build([], [worker("other", models=("x",), loaded="x")], switch_payback=10.0)
    s.submit(job(model="x", user="u0", seconds=1000.0))
    s.schedule(0.0)  # `other` holds x, busy from now on
    s.add_worker(worker("w", models=("x", "y"), loaded="x"))
    y_job = job(model="y", user="u1", seconds=60.0, at=0.0)
    s.submit(y_job)
    s.submit(job(model="x", user="u2", seconds=60.0, at=1.0))
    (a,) = s.schedule(2.0).assignments
    assert a.jobs == (y_job.id,) and a.switch  # older, and nobody holds y


def test_the_only_holder_of_its_model_weighs_both_backlogs_before_switching() -> None:
    """One worker serving two models, their jobs arriving in turn: it does not switch for
    every job (each switch would leave its own model with nobody and pay for it again),
    but serves its own model's queue first."""
    s = build([], [worker("w", models=("x", "y"), loaded="x")], switch_payback=10.0)
    drive = Drive(s)
    for k in range(8):
        drive.submit(job(model="xy"[k % 2], user=f"u{k}", seconds=60.0, at=float(k)))
    drive.now = 8.0
    drive.run()
    models = [drive.jobs[j].model for j in drive.order]
    assert len(models) == 8
    assert sum(a != b for a, b in itertools.pairwise(models)) == 1  # x first, then y


@pytest.mark.parametrize("tier", [Tier.PAID, Tier.FREE])
def test_the_only_holder_switches_for_a_job_past_its_wait_target(tier: Tier) -> None:
    """A steady backlog of the loaded model does not hold back the other model's job past
    its tier's wait target, paid (no aging moves it up) or free."""
    s = build([], [worker("w", models=("x", "y"), loaded="x")], switch_payback=10.0)
    drive = Drive(s)
    target = s.config.target(tier)
    waiting = job(model="y", user="late", tier=tier, seconds=10.0, at=0.0)
    drive.submit(waiting)
    for k in range(400):  # x jobs for far longer than the wait target
        drive.submit(job(model="x", user=f"u{k}", tier=tier, seconds=10.0, at=k / 4))
    drive.run(until=4 * target)
    assert waiting.id in drive.started_at
    assert drive.started_at[waiting.id] <= target + 10.0  # the x job running then ends


def test_a_job_goes_to_the_idle_worker_that_holds_its_model() -> None:
    s = build(
        [],
        [
            worker("holds-x", models=("x", "y"), loaded="x"),
            worker("holds-y", models=("x", "y"), loaded="y"),
        ],
    )
    y_job = job(model="y")
    s.submit(y_job)
    (a,) = s.schedule(0.0).assignments
    assert a.workers == ("holds-y",) and not a.switch


# ---- preemption ------------------------------------------------------------------------


def _busy_fleet(tiers: list[Tier], now: float = 0.0) -> tuple[Scheduler, list[QueuedJob]]:
    s = build([], [worker(f"w{i}") for i in range(len(tiers))], min_run_s=10.0)
    running = [job(user=f"r{i}", tier=t, seconds=10_000.0) for i, t in enumerate(tiers)]
    for r in running:
        s.submit(r)
    s.schedule(now)
    assert len(s.running) == len(tiers)
    return s, running


def test_an_overdue_paid_job_preempts_the_batch_job_before_free_ones() -> None:
    s, running = _busy_fleet([Tier.FREE, Tier.BATCH, Tier.FREE])
    paid = job(tier=Tier.PAID, user="p", at=100.0)
    s.submit(paid)
    assert s.schedule(130.0).preemptions == []  # within its 60 s target
    (p,) = s.schedule(161.0).preemptions
    assert p.job == running[1].id and p.for_job == paid.id
    assert s.schedule(162.0).preemptions == []  # one is on its way; no second victim


def test_among_free_jobs_the_one_that_loses_least_is_preempted() -> None:
    s, running = _busy_fleet([Tier.FREE, Tier.FREE])
    s.checkpointed(running[1].id, now=150.0)  # little work since its checkpoint
    s.submit(job(tier=Tier.PAID, user="p", at=100.0))
    (p,) = s.schedule(170.0).preemptions
    assert p.job == running[1].id


def test_preemption_never_goes_up_or_sideways_the_tier_order() -> None:
    """Paid work is never preempted, and a tier never preempts its own: two jobs can never
    keep preempting each other."""
    s, _ = _busy_fleet([Tier.PAID, Tier.PAID])
    s.submit(job(tier=Tier.PAID, user="p", at=0.0))
    assert s.schedule(500.0).preemptions == []
    s, _ = _busy_fleet([Tier.FREE])
    s.submit(job(tier=Tier.FREE, user="f", at=0.0))
    assert s.schedule(5000.0).preemptions == []  # overdue free does not preempt free


def test_a_job_is_preempted_at_most_max_preemptions_times_and_not_right_after_it_starts() -> None:
    s = build([], [worker("w")], max_preemptions=2, min_run_s=30.0)
    d = Drive(s)
    victim = job(tier=Tier.FREE, user="f", seconds=10_000.0)
    d.submit(victim)
    d.step()
    t = 0.0
    for _ in range(6):  # a paid job goes overdue again and again
        t += 100.0
        d.now = t
        paid = job(tier=Tier.PAID, user="p", seconds=50.0, at=t - 61.0)
        d.submit(paid)
        d.step()
        d.now = t + 0.5
        d.step()  # the paid job starts on the freed worker (or waits)
        if paid.id in s.running:
            s.finished(paid.id)
            d.now = t + 50.0
            d.step()  # the free job resumes
    assert [v for v, _ in d.preempted].count(victim.id) == 2
    assert len(d.preempted) == 2  # and nothing else was preempted in its place


def test_overdue_free_work_may_preempt_batch() -> None:
    s, running = _busy_fleet([Tier.BATCH])
    s.submit(job(tier=Tier.FREE, user="f", at=0.0))
    (p,) = s.schedule(20 * 60.0 + 1).preemptions
    assert p.job == running[0].id


# ---- batching --------------------------------------------------------------------------


def test_small_compatible_jobs_share_a_batch_and_full_size_clips_never_do() -> None:
    s = build([], [worker(f"w{i}") for i in range(4)], max_batch=4, min_batch_gain=1.15)
    previews = [
        job(user=f"u{i}", seconds=2.0, batch_key="m:448x256x17", batch_gain=1.35) for i in range(6)
    ]
    full = [job(user=f"v{i}", seconds=60.0) for i in range(2)]
    for j in previews + full:
        s.submit(j)
    assignments = s.schedule(0.0).assignments
    assert sorted(len(a.jobs) for a in assignments) == [1, 1, 2, 4]
    preview_ids = {p.id for p in previews}
    for a in assignments:
        assert set(a.jobs) <= preview_ids if len(a.jobs) > 1 else True
    assert {a.jobs[0] for a in assignments if len(a.jobs) == 1} == {f.id for f in full}


def test_no_batch_where_the_gain_is_too_small() -> None:
    s = build([], [worker("w")], min_batch_gain=1.15)
    for i in range(4):
        s.submit(job(user=f"u{i}", batch_key="k", batch_gain=1.01))
    (a,) = s.schedule(0.0).assignments
    assert len(a.jobs) == 1


def test_the_last_step_of_a_batch_frees_its_worker_and_a_batch_is_never_preempted() -> None:
    """Batched jobs share their steps: the `finishing` of any of them frees the worker. A
    job of a batch is no preemption victim: its worker would go on with the others."""
    s = build([], [worker("w0"), worker("w1")], max_batch=4, min_run_s=10.0)
    small = [
        job(user=f"u{i}", tier=Tier.FREE, seconds=5000.0, batch_key="k", batch_gain=1.4)
        for i in range(3)
    ]
    alone = job(user="v", tier=Tier.FREE, seconds=10_000.0)
    for j in (*small, alone):
        s.submit(j)
    assignments = s.schedule(0.0).assignments
    assert sorted(len(a.jobs) for a in assignments) == [1, 3]
    s.submit(job(tier=Tier.PAID, user="p", at=100.0))
    (p,) = s.schedule(1000.0).preemptions
    assert p.job == alone.id  # not a member of the batch, though free work too
    (batched,) = [a for a in assignments if len(a.jobs) == 3]
    assert s.finishing(small[1].id) is not None
    assert s.is_idle(batched.workers[0]) and not set(s.running) & {j.id for j in small}


# ---- gangs -----------------------------------------------------------------------------


def _hosts(n: int, gpus: int = 8) -> list[WorkerView]:
    return [worker(f"h{h}g{g}", host=f"h{h}") for h in range(n) for g in range(gpus)]


def test_a_gang_starts_on_one_host_with_all_its_gpus_at_once() -> None:
    s = build([], _hosts(2))
    gang = job(gpus=8, seconds=8 * 300.0)
    s.submit(gang)
    (a,) = s.schedule(0.0).assignments
    assert len(a.workers) == 8 and len({w[:2] for w in a.workers}) == 1


def test_a_gang_reserves_a_host_and_backfill_only_takes_jobs_that_end_in_time() -> None:
    s = build([], _hosts(1, gpus=2))
    d = Drive(s)
    long_one = job(user="a", seconds=100.0)
    d.submit(long_one)
    d.step()  # one GPU busy until t=100, the other idle
    gang = job(user="g", gpus=2, seconds=2 * 50.0, at=1.0)
    too_long = job(user="b", seconds=500.0, at=2.0)
    fits = job(user="c", seconds=80.0, at=3.0)
    d.now = 5.0
    d.submit(gang, too_long, fits)
    decisions = d.step()
    assert s.reserved == {"h0": gang.id}
    assert [a.jobs for a in decisions.assignments] == [(fits.id,)]  # backfill
    d.run()
    assert d.started_at[gang.id] == pytest.approx(100.0)
    assert d.started_at[too_long.id] >= d.started_at[gang.id]


def test_two_gangs_never_deadlock_half_placed() -> None:
    """Small jobs keep arriving on two hosts while two 8-GPU gangs wait; both gangs run."""
    s = build([], _hosts(2))
    d = Drive(s)
    gangs = [job(user=f"g{i}", gpus=8, seconds=8 * 100.0, at=0.0) for i in range(2)]
    d.submit(*(job(user=f"s{i}", seconds=float(30 + i)) for i in range(16)))
    d.step()
    d.submit(*gangs)
    for t in range(0, 2000, 10):
        d.submit(job(user=f"late{t}", seconds=40.0, at=float(t)))
    d.run(until=5000.0)
    assert all(g.id in d.started_at for g in gangs)
    assert max(d.started_at[g.id] for g in gangs) <= 200.0


def test_a_gang_no_host_can_hold_is_left_queued_while_others_run() -> None:
    s = build([], _hosts(1, gpus=4))
    huge = job(gpus=8, seconds=800.0)
    small = job(user="x", at=1.0)
    s.submit(huge)
    s.submit(small)
    (a,) = s.schedule(2.0).assignments
    assert a.jobs == (small.id,) and s.queued == 1


# ---- baselines -------------------------------------------------------------------------


def test_fifo_and_strict_priority_baselines() -> None:
    def order(policy: Order) -> list[Tier]:
        s = build([], [worker("w")], order=policy)
        d = Drive(s)
        d.submit(
            job(tier=Tier.FREE, user="f", at=0.0),
            job(tier=Tier.BATCH, user="b", at=1.0),
            job(tier=Tier.PAID, user="p", at=2.0),
        )
        d.run()
        return [d.jobs[j].tier for j in d.order]

    assert order(Order.FIFO) == [Tier.FREE, Tier.BATCH, Tier.PAID]
    assert order(Order.PRIORITY) == [Tier.PAID, Tier.FREE, Tier.BATCH]


def test_a_cancelled_job_leaves_the_queue_and_a_lost_worker_returns_its_job() -> None:
    s = build([], [worker("w")])
    a, b = job(user="a"), job(user="b", at=1.0)
    s.submit(a)
    s.submit(b)
    assert s.remove(a.id) == a
    (assigned,) = s.schedule(0.0).assignments
    assert assigned.jobs == (b.id,)
    assert s.remove_worker("w") == (b.id,) and s.running == {}


def test_decisions_are_the_same_for_the_same_inputs() -> None:
    def decide() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        global _ids
        _ids = itertools.count()
        s = build([], _hosts(2, gpus=2), max_batch=2)
        for i in range(20):
            tier = TIER_ORDER[i % 3]
            s.submit(job(user=f"u{i % 4}", tier=tier, seconds=float(10 + i), at=float(i)))
        return [(a.jobs, a.workers) for a in s.schedule(30.0).assignments]

    assert decide() == decide()


def test_every_tier_gets_work_done_in_a_mixed_stream() -> None:
    s = build([], [worker(f"w{i}") for i in range(4)])
    d = Drive(s)
    by_tier: defaultdict[Tier, int] = defaultdict(int)
    for t in range(0, 2000, 5):
        d.submit(job(user=f"u{t % 11}", tier=TIER_ORDER[t % 3], seconds=30.0, at=float(t)))
    d.run()
    for job_id in d.order:
        by_tier[d.jobs[job_id].tier] += 1
    assert by_tier == {Tier.PAID: 134, Tier.FREE: 133, Tier.BATCH: 133}


def test_the_forecast_is_the_order_and_the_starts_the_policy_then_keeps() -> None:
    s = Scheduler()
    for name in ("w1", "w2"):
        s.add_worker(worker(name))
    heavy = [job("heavy", seconds=30.0, at=float(i)) for i in range(6)]
    light = job("light", seconds=20.0, at=10.0)
    paid = job("payer", Tier.PAID, seconds=40.0, at=11.0)
    batch = job("night", Tier.BATCH, seconds=50.0, at=0.0)
    drive = Drive(s)
    drive.submit(*heavy, light, paid, batch)
    forecast = s.forecast(0.0)
    assert set(forecast) == {j.id for j in [*heavy, light, paid, batch]}
    predicted = sorted(forecast, key=lambda j: forecast[j][0])
    assert [forecast[j][0] for j in predicted] == list(range(9))
    assert predicted[0] == paid.id and predicted[-1] == batch.id
    assert predicted.index(light.id) <= 2  # the newcomer's first job, not behind the six
    drive.run()
    assert sorted(drive.order, key=drive.order.index) == drive.order
    assert drive.order == predicted
    for job_id, (_position, start) in forecast.items():
        assert start == pytest.approx(drive.started_at[job_id]), job_id


def test_the_forecast_holds_a_user_at_their_running_cap() -> None:
    caps = {Tier.PAID: 16, Tier.FREE: 1, Tier.BATCH: 1000}
    s = build([], [worker("w1"), worker("w2")], user_running_cap=caps, work_conserving_caps=False)
    drive = Drive(s)
    first, second = job("heavy", seconds=30.0, at=0.0), job("heavy", seconds=30.0, at=1.0)
    drive.submit(first, second)
    forecast = s.forecast(0.0)
    assert forecast[second.id][1] == pytest.approx(30.0)  # not at once on the idle GPU
    drive.run()
    for job_id, (_position, start) in forecast.items():
        assert start == pytest.approx(drive.started_at[job_id]), job_id


def test_the_forecast_has_no_start_where_no_worker_serves_the_model() -> None:
    s = Scheduler()
    s.add_worker(worker("w1", models=("other",), loaded="other"))
    queued = job(model="m")
    s.submit(queued)
    assert s.forecast(5.0) == {queued.id: (0, None)}


def test_a_job_handed_back_is_forecast_once() -> None:
    s = Scheduler()
    s.add_worker(worker("w1"))
    first, second = job(at=0.0), job(at=1.0)
    s.submit(first)
    s.submit(second)
    s.schedule(2.0)  # the first starts
    s.finished(first.id)
    s.submit(first)  # handed back: its old heap entries are stale now
    forecast = s.forecast(3.0)
    assert sorted(p for p, _ in forecast.values()) == [0, 1]


def test_a_worker_running_its_last_step_gets_work_after_the_idle_ones() -> None:
    s = build([], [worker("a", host="h1"), worker("c", host="h1")])
    first, long = job(user="u1"), job(user="u2", seconds=10_000.0)
    s.submit(first)
    s.submit(long)
    assert len(s.schedule(0.0).assignments) == 2
    on = s.running[first.id].workers[0]
    s.add_worker(worker("b1", host="h2"))
    s.add_worker(worker("b2", host="h2"))
    assert s.finishing(first.id) is not None and s.is_idle(on)
    # Packing alone would pick `on` (its host is the busier); it starts later than b1, b2.
    for k, user in enumerate(("u3", "u4")):
        s.submit(job(user=user))
        (a,) = s.schedule(1.0 + k).assignments
        assert a.workers[0] in ("b1", "b2")
    third = job(user="u5")
    s.submit(third)
    (c,) = s.schedule(3.0).assignments
    assert c.workers == (on,)  # nobody else is free: it claims during its last step
    s.finished(first.id)  # the step's end changes nothing more
    assert s.running[third.id].workers == (on,)
