"""Who runs where next: the scheduling policy, one object for the live dispatcher and the
simulator alike. Pure: no I/O, no clock reads (time is passed in), plain data in and out.

The caller tells it what happens (`submit`, `remove`, `finished`, `add_worker`, ...) and
asks it to `schedule(now)`; the answer (`Decisions`) is applied by the caller, and the
policy already counts its assignments as running.

How it orders work (`Order.FAIR`, the default):
- **Aged first.** A free job whose wait has passed the aging bound, or a batch job whose
  deadline is near, goes before anything else, the most overdue (wait over target) first.
  This bounds their waits whatever the paid load. (A paid job past its wait target does
  not jump the queue, which would take free's share exactly when the fleet is short; it
  preempts instead, and the autoscaler adds workers.)
- **Tiers by weighted fair share of GPU-seconds.** Among the rest, paid and free share the
  GPUs by weight (default 4:1) over estimated GPU-seconds: each tier has a virtual time
  that advances by `gpu_seconds / weight` as its jobs start, and the lowest goes next
  (start-time fair queuing; a tier that had no backlog rejoins at the others' virtual time,
  so idling banks no credit). Batch runs only where neither has work for the worker.
- **Users by fair share inside a tier**, the same way over each user's GPU-seconds, with a
  running cap per user and tier: one user's thousand queued jobs do not delay another
  user's first.
- **Model affinity.** A worker keeps serving the model on its GPU; it switches to another
  model of the same tier only when that model's backlog per worker holding it pays for the
  switch (`switch_payback` GPU-seconds of backlog per second of loading), or nobody holds it;
  away from a model it alone holds while that model has work only for a job past its wait
  target.
- **Gangs.** A job over k GPUs starts only when k GPUs of one host are free. When it is
  next and no host has them, it reserves the host that frees them soonest (one gang per
  host, so two half-placed gangs can never wait on each other); the reserved host's idle
  GPUs meanwhile take only jobs that end before the gang could start (backfill).
- **Batching** of small compatible jobs (same `batch_key`) where the cost model's gain is
  at least `min_batch_gain`; full-size clips have no key and run alone.
- **Last steps.** A worker whose job has begun its last step (`finishing`, live only) is
  free for its next job, which it claims during that step; it is given work only after the
  workers that are idle already.
- **Preemption.** When an overdue job finds no free worker, a running job of a strictly
  lower tier on a worker that could serve it is asked to checkpoint and yield; the victim
  is the one that loses least (batch before free, least work since its checkpoint), and
  its worker goes to the job it was preempted for. A job
  is preempted at most `max_preemptions` times and only after `min_run_s`; preemption only
  goes down the tier order, so two jobs can never keep preempting each other.

`Order.FIFO` and `Order.PRIORITY` (strict tiers, then FIFO) are baselines for the simulator:
no fairness, affinity, batching or preemption, with the same mechanics.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from enum import StrEnum
from operator import itemgetter

from reelgen.domain.jobs import Tier
from reelgen.scheduler.autoscale import PoolLoad
from reelgen.scheduler.view import (
    TIER_ORDER,
    Assignment,
    Decisions,
    Preemption,
    QueuedJob,
    RunningJob,
    WorkerView,
)

INFINITY = float("inf")
LOOKAHEAD_USERS = 4
"""How many users' heads a lane looks past for one that fits (backfill, unplaceable gangs)."""
PREEMPT_PER_LANE = 16
"""The most overdue jobs of one lane that may each ask for a preemption in one round."""
RESERVE_LOOKS = 16
"""How many hosts a gang looks at for the one that frees its GPUs soonest (those with the
most idle GPUs first)."""
_RANK = {tier: rank for rank, tier in enumerate(TIER_ORDER)}


class Order(StrEnum):
    FAIR = "reelgen"
    FIFO = "fifo"
    PRIORITY = "priority"


def _tier_map(paid: float, free: float, batch: float) -> dict[Tier, float]:
    return {Tier.PAID: paid, Tier.FREE: free, Tier.BATCH: batch}


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    order: Order = Order.FAIR
    weights: Mapping[Tier, float] = field(default_factory=lambda: _tier_map(4.0, 1.0, 1.0))
    """GPU-second shares of paid and free while both have backlog (batch: among batch)."""
    wait_target_s: Mapping[Tier, float] = field(
        default_factory=lambda: _tier_map(60.0, 20 * 60.0, INFINITY)
    )
    """Past this wait a job is overdue: it goes first, and may preempt lower tiers."""
    batch_slack_s: float = 3600.0
    """A batch job is overdue once its deadline is this close beyond its own run time."""
    user_running_cap: Mapping[Tier, int] = field(
        default_factory=lambda: {Tier.PAID: 16, Tier.FREE: 4, Tier.BATCH: 1_000_000}
    )
    work_conserving_caps: bool = True
    """A GPU that nobody under their cap wants may run an over-cap user's job; off: caps
    are hard limits."""
    switch_payback: float = 10.0
    preempt_every_s: float = 5.0
    """How often the policy looks for jobs to preempt (wait targets are minutes)."""
    max_preemptions: int = 2
    min_run_s: float = 30.0
    """A job runs at least this long before it may be preempted."""
    min_remaining_s: float = 30.0
    """A job that will end within this is left to finish instead of preempted."""
    max_batch: int = 8
    min_batch_gain: float = 1.15

    def target(self, tier: Tier) -> float:
        return self.wait_target_s.get(tier, INFINITY)


_seq = itertools.count()


class _Lane:
    """One tier's queue for one model: per user, their jobs oldest first; users by fair
    share (lazy heap: stale entries are fixed when they reach the top)."""

    __slots__ = ("backlog_s", "count", "jobs", "model", "oldest", "tier", "users")

    def __init__(self, tier: Tier, model: str):
        self.tier, self.model = tier, model
        self.jobs: dict[str, list[tuple[float, int, str]]] = {}
        """user -> heap of (queued_at, seq, job id)"""
        self.users: list[tuple[float, float, int, str]] = []
        """heap of (user virtual time, head queued_at, seq, user)"""
        self.oldest: list[tuple[float, int, str]] = []
        """heap of (queued_at, seq, job id) over all users"""
        self.backlog_s = 0.0
        self.count = 0


class _Idle:
    """Idle workers, longest idle first, also by the model on their GPU and by the models
    they can serve (so a round looks at groups, not at every idle worker)."""

    __slots__ = ("all", "by_count", "by_host", "by_loaded", "by_models")

    def __init__(self) -> None:
        self.all: dict[str, None] = {}
        self.by_loaded: dict[str | None, dict[str, None]] = defaultdict(dict)
        self.by_models: dict[frozenset[str], dict[str, None]] = defaultdict(dict)
        self.by_host: dict[str, dict[str, None]] = defaultdict(dict)
        self.by_count: dict[int, dict[str, None]] = defaultdict(dict)
        """idle GPUs -> the hosts with that many (for gangs, without a walk over hosts)"""

    def add(self, worker: WorkerView) -> None:
        self.all[worker.id] = None
        self.by_loaded[worker.loaded][worker.id] = None
        self.by_models[worker.models][worker.id] = None
        self._recount(worker.host, +1, worker.id)

    def discard(self, worker: WorkerView) -> None:
        if self.all.pop(worker.id, 0) is None:
            self.by_loaded[worker.loaded].pop(worker.id, None)
            self.by_models[worker.models].pop(worker.id, None)
            self._recount(worker.host, -1, worker.id)

    def _recount(self, host: str, delta: int, worker_id: str) -> None:
        idle = self.by_host[host]
        self.by_count[len(idle)].pop(host, None)
        if delta > 0:
            idle[worker_id] = None
        else:
            idle.pop(worker_id, None)
        if idle:
            self.by_count[len(idle)][host] = None
        else:
            del self.by_host[host]

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self.all

    def __len__(self) -> int:
        return len(self.all)


class _Choice:
    __slots__ = ("id", "job", "key", "wall")

    def __init__(self, job: QueuedJob):
        self.job, self.id = job, job.id
        self.wall = job.gpu_seconds / max(1, job.gpus)
        self.key: tuple[float, ...] | None = None


class _Options:
    """What a lane offers the workers of a round: its overdue oldest job (under its
    user's cap), then the heads of the users next by fair share (under their caps)."""

    __slots__ = ("aged", "complete", "heads")

    def __init__(self) -> None:
        self.aged: _Choice | None = None
        self.heads: list[_Choice] = []
        self.complete = True
        """False: the lane has more users than `heads` holds (it was asked for fewer)."""

    def offers(self, user: str) -> bool:
        aged = self.aged
        return (aged is not None and aged.job.user == user) or any(
            head.job.user == user for head in self.heads
        )

    def rekey(self) -> None:
        if self.aged is not None:
            self.aged.key = None
        for head in self.heads:
            head.key = None


@dataclass(slots=True)
class _Reservation:
    job: QueuedJob
    host: str
    start_by: float
    """When the host should have the gang's GPUs free; backfill must end by then."""


class Scheduler:
    """The policy's state and decisions; see the module docstring."""

    def __init__(self, config: PolicyConfig | None = None):
        self.config = config or PolicyConfig()
        self._queued: dict[str, QueuedJob] = {}
        self._queued_by_gpus: dict[int, int] = defaultdict(int)
        self._lanes: dict[tuple[Tier, str], _Lane] = {}
        self._by_model: dict[str, list[_Lane]] = defaultdict(list)
        self._by_batch_key: dict[tuple[Tier, str], dict[str, None]] = defaultdict(dict)
        """(tier, batch key) -> its queued jobs, oldest first"""
        self._user_vt: dict[tuple[Tier, str], float] = defaultdict(float)
        self._user_floor: dict[Tier, float] = defaultdict(float)
        self._tier_vt: dict[Tier, float] = defaultdict(float)
        self._tier_queued: dict[Tier, int] = defaultdict(int)
        self._running: dict[str, RunningJob] = {}
        self._user_running: dict[tuple[Tier, str], int] = defaultdict(int)
        self._parked: dict[tuple[Tier, str], set[tuple[Tier, str]]] = defaultdict(set)
        self._workers: dict[str, WorkerView] = {}
        self._idle = _Idle()
        self._busy: dict[str, set[str]] = {}
        """worker -> the jobs on it (several when batched); idle again when all end"""
        self._busy_gpus: dict[tuple[str, Tier], int] = defaultdict(int)
        """(model, tier) -> workers running such work"""
        self._busy_end: dict[str, float] = {}
        """worker -> when its jobs are expected to end (one start put them all there)"""
        self._hosts: dict[str, dict[str, None]] = defaultdict(dict)
        self._holders: dict[str, int] = defaultdict(int)
        self._reservations: dict[str, _Reservation] = {}
        self._preempting: set[str] = set()
        self._promised: dict[str, str] = {}
        """worker -> the queued job its preempted job makes room for"""
        self._last_preempt_check = -INFINITY
        self._gang_ready: dict[str, None] = {}
        """Reserved hosts where a GPU fell idle since the last round."""
        self._backfills: list[tuple[float, int, str]] = []
        """heap of (-start_by, seq, host): reserved hosts with idle GPUs, longest limit first"""
        self._backfill_hosts: dict[str, tuple[float, int, str]] = {}
        """host -> its current entry in `_backfills` (the others are stale)"""
        self._finishing: dict[str, str] = {}
        """idle worker -> the job whose last step it still runs (`finishing`)"""
        self._finishing_jobs: dict[str, tuple[str, ...]] = {}
        self._picks: dict[Tier, dict[_Lane, _Options]] = {}
        """This round's lane choices (`_options`), by tier."""
        cfg = self.config
        self._weights = {t: cfg.weights.get(t, 1.0) for t in Tier}
        self._caps = {t: cfg.user_running_cap.get(t, 1_000_000) for t in Tier}
        self._targets = {t: cfg.target(t) for t in Tier}
        """The config's per-tier numbers, looked up on every decision."""

    # ---- what happened ----------------------------------------------------------------
    def add_worker(self, worker: WorkerView) -> None:
        self.remove_worker(worker.id)
        self._workers[worker.id] = worker
        self._hosts[worker.host][worker.id] = None
        self._idle.add(worker)
        self._gpu_freed(worker.host)
        if worker.loaded is not None:
            self._holders[worker.loaded] += 1

    def remove_worker(self, worker_id: str) -> tuple[str, ...]:
        """Forgets a worker; returns the jobs it was running (the caller requeues them;
        a gang's other workers are free again)."""
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return ()
        self._hosts[worker.host].pop(worker_id, None)
        self._idle.discard(worker)
        self._finishing.pop(worker_id, None)
        if worker.loaded is not None:
            self._holders[worker.loaded] -= 1
        jobs = tuple(sorted(self._busy.pop(worker_id, ())))
        if jobs:
            run = self._running[jobs[0]]
            self._busy_gpus[(run.model, run.tier)] -= 1
        self._busy_end.pop(worker_id, None)
        for job_id in jobs:
            self.finished(job_id)
        return jobs

    def submit(self, job: QueuedJob) -> None:
        """A job to queue: new, or handed back (preempted, its worker lost)."""
        if self._finishing_jobs:
            self._finished_step(job.id)
        key = (job.tier, job.model)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(job.tier, job.model)
            self._by_model[job.model].append(lane)
        user_key = (job.tier, job.user)
        if self._tier_queued[job.tier] == 0:
            self._rejoin_tier(job.tier)
        if not self._has_queued(lane, job.user):
            self._user_vt[user_key] = max(self._user_vt[user_key], self._user_floor[job.tier])
        self._queued[job.id] = job
        entry = (job.queued_at, next(_seq), job.id)
        user_jobs = lane.jobs.setdefault(job.user, [])
        heapq.heappush(user_jobs, entry)
        heapq.heappush(lane.oldest, entry)
        if user_jobs[0] is entry:
            self._push_user(lane, job.user)
        lane.backlog_s += job.gpu_seconds
        lane.count += 1
        self._queued_by_gpus[job.gpus] += 1
        self._tier_queued[job.tier] += 1
        if job.batch_key is not None:
            self._by_batch_key[(job.tier, job.batch_key)][job.id] = None

    def remove(self, job_id: str) -> QueuedJob | None:
        """Takes a queued job out (cancelled, deleted, expired)."""
        job = self._queued.pop(job_id, None)
        if job is None:
            for reservation in list(self._reservations.values()):
                if reservation.job.id == job_id:
                    del self._reservations[reservation.host]
                    return reservation.job
            return None
        lane = self._lanes[(job.tier, job.model)]
        picks = self._picks.get(job.tier)
        if picks:
            picks.pop(lane, None)
        lane.backlog_s -= job.gpu_seconds
        lane.count -= 1
        self._queued_by_gpus[job.gpus] -= 1
        self._tier_queued[job.tier] -= 1
        if job.batch_key is not None:
            self._by_batch_key[(job.tier, job.batch_key)].pop(job.id, None)
        return job

    def finished(self, job_id: str) -> RunningJob | None:
        """A running job ended (done, failed, cancelled, handed back, its worker lost)."""
        self._finished_step(job_id)
        run = self._running.pop(job_id, None)
        if run is None:
            return None
        self._preempting.discard(job_id)
        for worker_id in run.workers:
            on_worker = self._busy.get(worker_id)
            if on_worker is not None and job_id in on_worker:
                on_worker.discard(job_id)
                if on_worker:
                    continue
                del self._busy[worker_id]
                del self._busy_end[worker_id]
                self._busy_gpus[(run.model, run.tier)] -= 1
                worker = self._workers.get(worker_id)
                if worker is not None:
                    self._idle.add(worker)
                    self._gpu_freed(worker.host)
        user_key = (run.tier, run.user)
        self._user_running[user_key] -= 1
        for lane_key in self._parked.pop(user_key, ()):
            lane = self._lanes.get(lane_key)
            if lane is not None and self._has_queued(lane, run.user):
                self._push_user(lane, run.user)
        return run

    def finishing(self, job_id: str) -> RunningJob | None:
        """A running job's last step began (with the jobs batched with it, which share its
        steps): its workers are free for their next jobs, which they claim during that step.
        Such a worker is given work only after workers that are idle already (it starts
        later); `finished` for these jobs later changes nothing more than that."""
        head = self._running.get(job_id)
        if head is None:
            return None
        batch = {j for w in head.workers for j in self._busy.get(w, ())} | {job_id}
        for member in sorted(batch):
            run = self.finished(member)
            if run is None:
                continue
            for worker_id in run.workers:
                if worker_id in self._idle:
                    self._finishing[worker_id] = member
            self._finishing_jobs[member] = run.workers
        return head

    def _finished_step(self, job_id: str) -> None:
        """The job whose last step its workers ran has left them (or came back queued)."""
        for worker_id in self._finishing_jobs.pop(job_id, ()):
            if self._finishing.get(worker_id) == job_id:
                del self._finishing[worker_id]

    def adopt(self, job: QueuedJob, worker_ids: Iterable[str], now: float) -> bool:
        """Counts a job as running that started without this object's decision (a new
        leader takes over the fleet as it finds it); False if a worker is unknown or busy
        with other work than a batch of the job's key (it joins that batch)."""
        found = [self._workers.get(w) for w in worker_ids]
        workers = [w for w in found if w is not None]
        if not workers or len(workers) < len(found):
            return False
        if all(w.id in self._idle for w in workers):
            self.remove(job.id)
            self._start([job], workers, now, Decisions(), queued=False)
            return True
        return len(workers) == 1 and self._join(job, workers[0].id)

    def _join(self, job: QueuedJob, worker_id: str) -> bool:
        """Adds `job` to the batch running on one worker, if it is one of the job's key."""
        on_worker = self._busy.get(worker_id)
        mates = [self._running[j] for j in on_worker or () if j in self._running]
        if not mates or job.batch_key is None or job.id in self._running:
            return False
        if any(m.batch_key != job.batch_key or m.tier is not job.tier for m in mates):
            return False
        self.remove(job.id)
        head = mates[0]
        self._running[job.id] = RunningJob(
            job.id, job.user, job.tier, job.model, head.workers, head.started_at,
            head.expected_end, job.gpu_seconds, job.preemptions, None, job.batch_key,
        )  # fmt: skip
        self._user_running[(job.tier, job.user)] += 1
        self._account(job)
        assert on_worker is not None
        on_worker.add(job.id)
        return True

    def checkpointed(self, job_id: str, now: float) -> None:
        run = self._running.get(job_id)
        if run is not None:
            self._running[job_id] = replace(run, checkpoint_at=now)

    # ---- reading ----------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queued)

    def queued_job(self, job_id: str) -> QueuedJob | None:
        """The job if it waits here (queued, or holding a gang reservation)."""
        job = self._queued.get(job_id)
        if job is None:
            for reservation in self._reservations.values():
                if reservation.job.id == job_id:
                    return reservation.job
        return job

    @property
    def reserved(self) -> dict[str, str]:
        """host -> the gang job its idle GPUs are held for."""
        return {host: r.job.id for host, r in self._reservations.items()}

    @property
    def workers(self) -> Mapping[str, WorkerView]:
        return self._workers

    @property
    def running(self) -> Mapping[str, RunningJob]:
        return self._running

    def backlog_seconds(self, model: str | None = None) -> float:
        lanes = self._by_model.get(model, []) if model is not None else self._lanes.values()
        return sum(lane.backlog_s for lane in lanes)

    def pool_load(self, arrived_gpu_s: float, now: float, model: str | None = None) -> PoolLoad:
        """What the autoscaler sees of one model's pool (None: of the whole fleet), given
        the paid and free GPU-seconds that arrived since it last looked."""
        lanes = self._by_model.get(model, []) if model is not None else self._lanes.values()
        backlog: dict[Tier, float] = defaultdict(float)
        due = INFINITY
        for lane in lanes:
            backlog[lane.tier] += lane.backlog_s
            if lane.tier is Tier.BATCH and lane.count:
                oldest = self._top(lane.oldest)  # deadlines follow submit order
                if oldest is not None and oldest.deadline is not None:
                    due = min(due, oldest.deadline - now)
        busy = sum(
            n
            for (m, tier), n in self._busy_gpus.items()
            if tier is not Tier.BATCH and (model is None or m == model)
        )
        return PoolLoad(
            arrived_gpu_s=arrived_gpu_s,
            backlog_gpu_s=backlog[Tier.PAID],
            busy_workers=busy,
            largest_gang=self.largest_queued_gang(),
            free_backlog_gpu_s=backlog[Tier.FREE],
            batch_backlog_gpu_s=backlog[Tier.BATCH],
            batch_due_in_s=due,
        )

    def largest_queued_gang(self) -> int:
        """GPUs of the widest job waiting (queued or holding a reservation); 0 if none."""
        widest = max((g for g, n in self._queued_by_gpus.items() if n > 0), default=0)
        reserved = max((r.job.gpus for r in self._reservations.values()), default=0)
        return max(widest, reserved)

    def late(self, now: float) -> dict[str, int]:
        """Per model, the jobs waiting past their deadline (batch jobs that will be late)."""
        out: dict[str, int] = defaultdict(int)
        for job in self._queued.values():
            if job.deadline is not None and job.deadline < now:
                out[job.model] += 1
        return dict(out)

    def queued_count(self, model: str) -> int:
        return sum(lane.count for lane in self._by_model.get(model, []))

    def queued_models(self) -> set[str]:
        return {m for m, lanes in self._by_model.items() if any(x.count for x in lanes)}

    def is_idle(self, worker_id: str) -> bool:
        return worker_id in self._idle

    def idle_workers(self) -> int:
        return len(self._idle)

    def idle_hosts(self, limit: int) -> list[list[str]]:
        """Up to `limit` hosts none of whose workers runs anything (the ones to scale away:
        a whole host goes, so that gangs still find whole hosts), each as its workers."""
        found: list[list[str]] = []
        for host, idle in self._idle.by_host.items():
            if len(found) >= limit:
                break
            if idle and len(idle) == len(self._hosts[host]) and host not in self._reservations:
                found.append(list(idle))
        return found

    def forecast(self, now: float) -> dict[str, tuple[int, float | None]]:
        """Where each queued job stands: (queued jobs of its model predicted to start
        before it, predicted start; None when no worker serves its model).

        The policy's own order with nothing more arriving: inside a lane users by fair
        share (a job's tag is its user's virtual time plus the user's work queued before
        it), across tiers by weight over the same tags, batch after both (FIFO and strict
        priority: their own orders); then the jobs are laid out on the model's workers as
        those free up, a user at their running cap waiting for one of their own to end
        (as if caps were hard: under load they are). Aging and gang placement are left
        out: an estimate for the API's `queue_position` and `eta_seconds`, not a plan."""
        out: dict[str, tuple[int, float | None]] = {}
        busy_end = self._busy_end
        slots: dict[tuple[Tier, str], list[float]] = defaultdict(list)
        """(tier, user) -> when their running jobs end: the user's cap holds the next back"""
        for run in self._running.values():
            slots[(run.tier, run.user)].append(max(now, run.expected_end))
        for ends in slots.values():
            heapq.heapify(ends)
        caps = self._caps
        for model, lanes in self._by_model.items():
            order: list[tuple[tuple[float, ...], QueuedJob]] = []
            for lane in lanes:
                if lane.count:
                    order += self._lane_order(lane)
            if not order:
                continue
            order.sort(key=itemgetter(0))
            free = [
                max(now, busy_end.get(w.id, now))
                for w in self._workers.values()
                if model in w.models
            ]
            heapq.heapify(free)
            replace_top, pop, push = heapq.heapreplace, heapq.heappop, heapq.heappush
            for position, (_key, job) in enumerate(order):
                if job.gpus == 1 and free:
                    mine = slots[(job.tier, job.user)]
                    start = free[0]
                    if len(mine) >= caps[job.tier]:
                        start = max(start, pop(mine))
                    replace_top(free, start + job.gpu_seconds)
                    push(mine, start + job.gpu_seconds)
                elif len(free) < job.gpus:
                    out[job.id] = (position, None)
                    continue
                else:
                    taken = [pop(free) for _ in range(job.gpus)]
                    start = taken[-1]
                    for _ in taken:
                        push(free, start + job.gpu_seconds / job.gpus)
                out[job.id] = (position, start)
        return out

    def _lane_order(self, lane: _Lane) -> list[tuple[tuple[float, ...], QueuedJob]]:
        """(sort key, job) for one lane's queued jobs, keyed as `_key` picks; see `forecast`."""
        tier = lane.tier
        seen: set[str] = set()
        rank = float(_RANK[tier])
        if self.config.order is not Order.FAIR:
            first = 0.0 if self.config.order is Order.FIFO else rank
            return [
                ((first, job.queued_at, float(seq)), job)
                for seq, job in self._current(lane.oldest, seen)
            ]
        tagged: list[tuple[float, float, int, QueuedJob]] = []
        floor = self._user_floor[tier]
        for user, heap in lane.jobs.items():
            tag = max(self._user_vt[(tier, user)], floor)
            for seq, job in self._current(heap, seen):
                tagged.append((tag, job.queued_at, seq, job))
                tag += job.gpu_seconds
        tagged.sort(key=itemgetter(0, 1, 2))
        weight = self._weights[tier]
        klass = 1.0 if tier is Tier.BATCH else 0.0
        tier_tag = self._tier_vt[tier]
        out: list[tuple[tuple[float, ...], QueuedJob]] = []
        for user_tag, at, seq, job in tagged:
            out.append(((klass, tier_tag, rank, user_tag, at, float(seq)), job))
            tier_tag += job.gpu_seconds / weight
        return out

    # ---- deciding ---------------------------------------------------------------------
    def schedule(self, now: float) -> Decisions:
        decisions = Decisions()
        self._picks.clear()
        self._place_gangs(now, decisions)
        for worker_id, job_id in list(self._promised.items()):
            if worker_id in self._idle or worker_id not in self._workers:
                del self._promised[worker_id]
                job = self._queued.get(job_id)
                if job is not None and worker_id in self._idle:
                    self._start([job], [self._workers[worker_id]], now, decisions)
        if self._queued:
            self._backfill(now, decisions)
            # Workers holding a model with backlog go first, so that a job goes to a worker
            # that holds its model before another worker switches to it. A worker that
            # finds nothing speaks for the rest of its group (same models): their
            # candidates are the same.
            with_backlog = [m for m, lanes in self._by_model.items() if any(x.count for x in lanes)]
            groups = [self._idle.by_loaded.get(m, {}) for m in with_backlog]
            groups += list(self._idle.by_models.values())
            reserved = self._reservations.keys()
            failed: set[frozenset[str]] = set()
            starts = len(decisions.assignments)
            for group in groups:
                for worker_id in self._packed(group, reserved):
                    if not self._queued:
                        break
                    if worker_id not in self._idle:
                        continue  # taken by a gang or a batch of this round
                    worker = self._workers[worker_id]
                    if worker.host in reserved:
                        continue  # reserved by a gang during this round: backfill only
                    if starts != len(decisions.assignments):
                        failed.clear()
                        starts = len(decisions.assignments)
                    if worker.models in failed or not self._assign_one(worker, now, decisions):
                        if starts == len(decisions.assignments):
                            failed.add(worker.models)
                        break
        if (
            self.config.order is Order.FAIR
            and self._queued
            and now >= self._last_preempt_check + self.config.preempt_every_s
        ):
            self._last_preempt_check = now
            self._preempt(now, decisions)
        return decisions

    def _place_gangs(self, now: float, decisions: Decisions) -> None:
        """Starts the gangs whose reserved hosts have had GPUs freed since the last round
        and now have enough idle."""
        ready, self._gang_ready = self._gang_ready, {}
        by_host = self._idle.by_host
        for host in ready:
            reservation = self._reservations.get(host)
            if reservation is not None and len(by_host.get(host, ())) >= reservation.job.gpus:
                self._place_reserved(reservation, now, decisions)

    def _backfill(self, now: float, decisions: Decisions) -> None:
        """Gives the idle GPUs of reserved hosts jobs that end before the gang starts: the
        hosts whose gang starts last (the longest limit) first. A host that finds nothing
        speaks for every later host with the same models (their limits are no longer), until
        the next start; so a round looks at few reserved hosts, however many there are."""
        heap, idle, workers = self._backfills, self._idle, self._workers
        reservations, current = self._reservations, self._backfill_hosts
        held: list[tuple[float, int, str]] = []
        failed: set[frozenset[str]] = set()
        present = [models for models, group in idle.by_models.items() if group]
        starts = len(decisions.assignments)
        while heap and self._queued and len(failed) < len(present):
            entry = heapq.heappop(heap)
            host = entry[2]
            if current.get(host) is not entry:
                continue
            if host not in reservations or host not in idle.by_host:
                del current[host]
                continue
            held.append(entry)
            for worker_id in list(idle.by_host.get(host, ())):
                worker = workers[worker_id]
                if worker.models in failed or worker_id not in idle:
                    continue
                if self._assign_one(worker, now, decisions):
                    if starts != len(decisions.assignments):
                        failed.clear()
                        starts = len(decisions.assignments)
                    continue
                if starts == len(decisions.assignments):
                    failed.add(worker.models)
                break  # its other idle GPUs: the same answer
        for entry in held:
            heapq.heappush(heap, entry)
        if len(heap) > 2 * len(reservations) + 64:  # entries of gangs placed since
            for host in [h for h in current if h not in reservations]:
                del current[host]
            heap[:] = current.values()
            heapq.heapify(heap)

    def _gpu_freed(self, host: str) -> None:
        """A GPU of `host` fell idle: if the host is reserved, the gang may start or
        backfill."""
        reservation = self._reservations.get(host)
        if reservation is not None:
            self._gang_ready[host] = None
            if host not in self._backfill_hosts:
                entry = (-reservation.start_by, next(_seq), host)
                self._backfill_hosts[host] = entry
                heapq.heappush(self._backfills, entry)

    def _packed(self, group: Mapping[str, None], skip_hosts: AbstractSet[str]) -> Iterator[str]:
        """A group's idle workers, those still running a last step (`finishing`) after the
        others; see `_packed_idle`."""
        finishing = self._finishing
        if not finishing:
            yield from self._packed_idle(group, skip_hosts)
            return
        later: list[str] = []
        for worker_id in self._packed_idle(group, skip_hosts):
            if worker_id in finishing:
                later.append(worker_id)
            else:
                yield worker_id
        yield from later  # the caller skips those that are no longer idle

    def _packed_idle(
        self, group: Mapping[str, None], skip_hosts: AbstractSet[str]
    ) -> Iterator[str]:
        """A group's idle workers, those on the busiest hosts first (then in the order they
        fell idle): work packs onto hosts already in use, so that whole hosts fall idle for
        the autoscaler to remove and for gangs to start on. Lazy: a round usually stops
        after a few, and the caller starts jobs (changing the idle sets) and adds to
        `skip_hosts` (hosts whose idle GPUs found nothing) as it goes."""
        idle = self._idle
        # Walking all idle workers visits len(idle) / len(group) per member found; sorting
        # the group costs about two visits per member. Few are wanted when few jobs wait.
        wanted = min(len(group), len(self._queued))
        if 2 * len(group) < wanted * len(idle) / max(1, len(group)):
            workers = self._workers
            yield from sorted(
                (w for w in group if workers[w].host not in skip_hosts),
                key=lambda w: len(idle.by_host[workers[w].host]),
            )
            return
        for count in sorted(c for c, hosts in idle.by_count.items() if hosts):
            for host in list(idle.by_count[count]):
                if host in skip_hosts:
                    continue
                for worker_id in list(idle.by_host.get(host, ())):
                    if worker_id in group:
                        yield worker_id
                        if host in skip_hosts:
                            break

    def _assign_one(self, worker: WorkerView, now: float, decisions: Decisions) -> bool:
        """Gives `worker` its next job (or a gang it completes); False if it found none."""
        max_wall = self._max_wall(worker, now)
        skip: set[str] = set()
        while True:
            job = self._pick(worker, now, max_wall, skip)
            if job is None:
                return False
            if job.gpus <= 1:
                self._start([job, *self._batch_mates(job)], [worker], now, decisions)
                return True
            gang = self._free_gang(worker.host, job) or self._free_gang_anywhere(job)
            if gang is not None:
                self._start([job], gang, now, decisions)
                return True
            if not self._reserve(job, now):
                skip.add(job.id)  # no host can ever run it now; try the next job
                continue
            # The gang waits for its host; this worker may still take other work.
            max_wall = self._max_wall(worker, now)

    def _max_wall(self, worker: WorkerView, now: float) -> float:
        """How long a job on `worker` may run: until a gang reserved on its host starts."""
        reserved = self._reservations.get(worker.host)
        return INFINITY if reserved is None else reserved.start_by - now

    def _pick(
        self, worker: WorkerView, now: float, max_wall: float, skip: set[str]
    ) -> QueuedJob | None:
        job = self._pick_within(worker, now, max_wall, skip, over_cap=False)
        if job is None and self.config.work_conserving_caps and max_wall == INFINITY:
            job = self._pick_within(worker, now, max_wall, skip, over_cap=True)
        return job

    def _pick_within(
        self, worker: WorkerView, now: float, max_wall: float, skip: set[str], *, over_cap: bool
    ) -> QueuedJob | None:
        cfg = self.config
        best: tuple[tuple[float, ...], QueuedJob] | None = None
        loaded_best: tuple[tuple[float, ...], QueuedJob] | None = None
        for model in worker.models:
            for lane in self._by_model.get(model, ()):
                if lane.count == 0:
                    continue
                if over_cap:
                    job = self._oldest_fitting(lane, max_wall, skip)
                    if job is None:
                        continue
                    key = self._key(job, now)
                else:
                    choice = self._lane_candidate(lane, now, max_wall, skip)
                    if choice is None:
                        continue
                    job = choice.job
                    if choice.key is None:
                        choice.key = self._key(job, now)
                    key = choice.key
                if best is None or key < best[0]:
                    best = (key, job)
                if model == worker.loaded and (loaded_best is None or key < loaded_best[0]):
                    loaded_best = (key, job)
        if best is None:
            return None
        key, job = best
        if (
            cfg.order is Order.FAIR
            and loaded_best is not None
            and job.model != worker.loaded
            and key[0] > 0  # an overdue job is worth any switch
            and loaded_best[1].tier is job.tier
            and not self._switch_pays(job, worker, now)
        ):
            return loaded_best[1]
        return job

    def _key(self, job: QueuedJob, now: float) -> tuple[float, ...]:
        cfg = self.config
        if cfg.order is Order.FIFO:
            return (job.queued_at,)
        rank = _RANK[job.tier]
        if cfg.order is Order.PRIORITY:
            return (rank, job.queued_at)
        overdue = self._aged(job, now)
        if overdue >= 1.0:
            return (0, -overdue)
        if job.tier is Tier.BATCH:
            return (2, job.deadline if job.deadline is not None else job.queued_at)
        user_vt = self._user_vt[(job.tier, job.user)]
        return (1, self._tier_vt[job.tier], rank, user_vt, job.queued_at)

    def _aged(self, job: QueuedJob, now: float) -> float:
        """`_overdue`, for the tiers whose order it changes: all but the first. The first
        tier's wait target calls for preemption instead; letting it jump the queue too
        would take the other tiers' share exactly when the fleet is short."""
        return 0.0 if job.tier is TIER_ORDER[0] else self._overdue(job, now)

    def _overdue(self, job: QueuedJob, now: float) -> float:
        """Wait over target (>= 1: overdue)."""
        if job.tier is Tier.BATCH:
            if job.deadline is None:
                return 0.0
            margin = self.config.batch_slack_s
            slack = job.deadline - now - job.gpu_seconds / max(1, job.gpus)
            return 0.0 if slack > margin else 1.0 + (margin - slack) / margin
        return (now - job.queued_at) / self._targets[job.tier]

    def _lane_candidate(
        self, lane: _Lane, now: float, max_wall: float, skip: AbstractSet[str]
    ) -> _Choice | None:
        """The lane's next job that fits: its oldest if that is overdue (or the order is not
        fair), otherwise the first of the `LOOKAHEAD_USERS` lowest-virtual-time users under
        their cap whose head fits.

        A lane's choices are kept for the rest of the round until a job of the lane's tier
        starts or leaves the queue: nothing else changes them (they depend only on the
        tier's queue, virtual times and running counts), and every idle worker of a round
        asks the same lanes."""
        unlimited = max_wall == INFINITY and not skip
        options = self._options(lane, now, 1 if unlimited else LOOKAHEAD_USERS)
        aged = options.aged
        if aged is not None and aged.id not in skip and aged.wall <= max_wall:
            return aged
        for head in options.heads:
            if head.id not in skip and head.wall <= max_wall:
                return head
        return None

    def _options(self, lane: _Lane, now: float, heads: int) -> _Options:
        """The lane's choices for this round, with at least `heads` users' heads where it
        has them."""
        picks = self._picks.setdefault(lane.tier, {})
        options = picks.get(lane)
        if options is None or (len(options.heads) < heads and not options.complete):
            options = picks[lane] = self._walk(lane, now, heads)
        return options

    def _walk(self, lane: _Lane, now: float, limit: int) -> _Options:
        cfg = self.config
        options = _Options()
        oldest = self._top(lane.oldest)
        if oldest is None:
            return options
        if cfg.order is not Order.FAIR or self._aged(oldest, now) >= 1.0:
            if self._under_cap(oldest):
                options.aged = _Choice(oldest)
            if cfg.order is not Order.FAIR:
                return options
        heads = options.heads
        held: list[tuple[float, float, int, str]] = []
        """Users looked at: back in the heap afterwards."""
        users = lane.users
        while users and len(heads) < limit:
            vt, head_at, _, user = users[0]
            head = self._user_head(lane, user)
            if head is None:
                heapq.heappop(users)
                continue
            current = self._user_vt[(lane.tier, user)]
            if vt != current or head_at != head.queued_at:
                heapq.heapreplace(users, (current, head.queued_at, next(_seq), user))
                continue
            if not self._under_cap(head):
                heapq.heappop(users)
                self._parked[(lane.tier, user)].add((lane.tier, lane.model))
                continue
            held.append(heapq.heappop(users))
            heads.append(_Choice(head))
        for entry in held:
            heapq.heappush(users, entry)
        options.complete = len(heads) < limit or limit >= LOOKAHEAD_USERS
        return options

    def _oldest_fitting(self, lane: _Lane, max_wall: float, skip: set[str]) -> QueuedJob | None:
        """The lane's oldest job that fits, caps aside: what a worker nobody else needs
        may run for a user who is at their cap."""
        held: list[tuple[float, int, str]] = []
        try:
            while len(held) < LOOKAHEAD_USERS:
                job = self._top(lane.oldest)
                if job is None:
                    return None
                if self._fits(job, max_wall, skip):
                    return job
                held.append(heapq.heappop(lane.oldest))
            return None
        finally:
            for entry in held:
                heapq.heappush(lane.oldest, entry)

    def _fits(self, job: QueuedJob, max_wall: float, skip: AbstractSet[str]) -> bool:
        return job.id not in skip and job.gpu_seconds / max(1, job.gpus) <= max_wall

    def _under_cap(self, job: QueuedJob) -> bool:
        return self._user_running[(job.tier, job.user)] < self._caps[job.tier]

    def _switch_pays(self, job: QueuedJob, worker: WorkerView, now: float) -> bool:
        """Whether `job`'s model is short of workers compared with the one `worker` holds:
        nobody holds it, or its backlog per holder exceeds that of `worker`'s model by the
        switch's payback. A worker that is the only holder of its model does not switch
        for that (its model would be left with nobody, and the next worker to look would
        switch back: a switch per job), only once `job` has waited its tier's wait target
        (the first tier's too, which no aging moves up)."""
        mine = worker.loaded
        if mine is None:
            return True
        mine_holders = self._holders[mine]
        if mine_holders <= 1:
            return self._overdue(job, now) >= 1.0
        holders = self._holders[job.model]
        if holders <= 0:
            return True
        own = self.backlog_seconds(mine) / mine_holders
        theirs = self.backlog_seconds(job.model) / holders
        return theirs - own >= self.config.switch_payback * worker.load_s

    def _batch_mates(self, job: QueuedJob) -> list[QueuedJob]:
        cfg = self.config
        if (
            cfg.order is not Order.FAIR
            or job.batch_key is None
            or job.batch_gain < cfg.min_batch_gain
            or cfg.max_batch <= 1
        ):
            return []
        mates: list[QueuedJob] = []
        taken = {(job.tier, job.user): 1}
        cap = self._caps[job.tier]
        # The oldest few compatible jobs are enough: looking further (past users at their
        # cap) would make every start cost as much as the queue is long.
        for looked, other_id in enumerate(self._by_batch_key[(job.tier, job.batch_key)]):
            if looked >= 4 * cfg.max_batch:
                break
            other = self._queued[other_id]
            if other_id == job.id:
                continue
            key = (other.tier, other.user)
            if self._user_running[key] + taken.get(key, 0) >= cap:
                continue
            taken[key] = taken.get(key, 0) + 1
            mates.append(other)
            if len(mates) + 1 >= cfg.max_batch:
                break
        return mates

    def _free_gang(self, host: str, job: QueuedJob) -> list[WorkerView] | None:
        if host in self._reservations and self._reservations[host].job.id != job.id:
            return None
        idle = self._idle.by_host.get(host, {})
        if len(idle) < job.gpus:
            return None
        free = [self._workers[w] for w in idle if job.model in self._workers[w].models]
        return free[: job.gpus] if len(free) >= job.gpus else None

    def _free_gang_anywhere(self, job: QueuedJob) -> list[WorkerView] | None:
        """A host with `job.gpus` idle GPUs that can serve it, holding its model if one of
        the first few that can does."""
        fallback: list[WorkerView] | None = None
        looked = 0
        counts = sorted((c for c, hosts in self._idle.by_count.items() if hosts), reverse=True)
        for host in (h for c in counts if c >= job.gpus for h in self._idle.by_count[c]):
            gang = self._free_gang(host, job)
            if gang is not None:
                if all(w.loaded == job.model for w in gang):
                    return gang
                fallback = fallback or gang
                looked += 1
                if looked >= RESERVE_LOOKS:
                    break
        return fallback

    def _reserve(self, job: QueuedJob, now: float) -> bool:
        """Holds the host that frees `job.gpus` GPUs soonest for it; False if none can."""
        best: tuple[float, str] | None = None
        # Hosts with the most idle GPUs first; looking at a few is enough, and keeps this
        # cheap on a fleet of thousands of hosts. Reserved hosts do not count as looked at.
        reservations, idle, workers = self._reservations, self._idle, self._workers
        counts = sorted((c for c, hosts in idle.by_count.items() if hosts), reverse=True)
        candidates = itertools.chain((h for c in counts for h in idle.by_count[c]), self._hosts)
        seen: set[str] = set()
        for host in candidates:
            if host in reservations or host in seen:
                continue
            seen.add(host)
            able = [w for w in self._hosts[host] if job.model in workers[w].models]
            if len(able) >= job.gpus:
                ends = sorted(now if w in idle else self._busy_end[w] for w in able)
                if best is None or ends[job.gpus - 1] < best[0]:
                    best = (ends[job.gpus - 1], host)
            if len(seen) >= RESERVE_LOOKS:
                break
        if best is None:
            return False
        self.remove(job.id)
        host = best[1]
        self._reservations[host] = _Reservation(job, host, max(best[0], now))
        self._backfill_hosts.pop(host, None)  # an entry of an earlier reservation is stale
        if host in idle.by_host:
            self._gpu_freed(host)
        return True

    def _place_reserved(self, reservation: _Reservation, now: float, dec: Decisions) -> None:
        gang = self._free_gang(reservation.host, reservation.job)
        if gang is None:
            return  # past `start_by` (estimates ran over) nothing fits as backfill any more
        del self._reservations[reservation.host]
        self._start([reservation.job], gang, now, dec, queued=False)

    def _start(
        self,
        jobs: list[QueuedJob],
        workers: list[WorkerView],
        now: float,
        dec: Decisions,
        *,
        queued: bool = True,
    ) -> None:
        model = jobs[0].model
        load_s = 0.0
        switch = False
        for w in workers:
            if w.loaded != model:
                switch = True
                load_s = max(load_s, w.load_s)
        work = jobs[0].gpu_seconds if len(jobs) == 1 else sum(j.gpu_seconds for j in jobs)
        end = now + load_s + work / len(workers) / _gain(jobs)
        worker_ids = tuple([w.id for w in workers])
        job_ids = tuple([j.id for j in jobs])
        running, user_running = self._running, self._user_running
        key = jobs[0].batch_key
        for job in jobs:
            if queued:
                self.remove(job.id)
            running[job.id] = RunningJob(
                job.id, job.user, job.tier, model, worker_ids, now, end, job.gpu_seconds,
                job.preemptions, None, key,
            )  # fmt: skip
            user_running[(job.tier, job.user)] += 1
            self._account(job)
        idle, busy, busy_end = self._idle, self._busy, self._busy_end
        for worker in workers:
            idle.discard(worker)
            self._finishing.pop(worker.id, None)
            busy[worker.id] = set(job_ids)
            busy_end[worker.id] = end
            self._busy_gpus[(model, jobs[0].tier)] += 1
            if worker.loaded != model:
                if worker.loaded is not None:
                    self._holders[worker.loaded] -= 1
                self._holders[model] += 1
                self._workers[worker.id] = replace(worker, loaded=model)
        dec.assignments.append(Assignment(job_ids, worker_ids, model, switch))

    def _account(self, job: QueuedJob) -> None:
        """Advances the virtual times the job's start uses up. The tier's other lanes keep
        their choices unless the job's user is among them (that user's virtual time and
        running count changed); the rest only need new keys (the tier's time moved)."""
        picks = self._picks.get(job.tier)
        if picks:
            for lane, options in list(picks.items()):
                if options.offers(job.user):
                    del picks[lane]
                else:
                    options.rekey()
        user_key = (job.tier, job.user)
        start = max(self._user_vt[user_key], self._user_floor[job.tier])
        self._user_floor[job.tier] = start
        self._user_vt[user_key] = start + job.gpu_seconds
        self._tier_vt[job.tier] += job.gpu_seconds / self._weights[job.tier]

    def _rejoin_tier(self, tier: Tier) -> None:
        others = [self._tier_vt[t] for t in (Tier.PAID, Tier.FREE) if self._tier_queued[t] > 0]
        if others and tier is not Tier.BATCH:
            self._tier_vt[tier] = max(self._tier_vt[tier], min(others))

    def _preempt(self, now: float, dec: Decisions) -> None:
        """Frees workers for overdue jobs that found none; see the module docstring."""
        wanting: list[tuple[float, QueuedJob]] = []
        for lane in self._lanes.values():
            if lane.count == 0 or lane.tier is Tier.BATCH:
                continue
            held: list[tuple[float, int, str]] = []
            while len(held) < PREEMPT_PER_LANE:
                job = self._top(lane.oldest)
                if job is None:
                    break
                held.append(heapq.heappop(lane.oldest))
                overdue = self._overdue(job, now)
                if overdue < 1.0:
                    break  # younger ones are not overdue either
                if job.gpus == 1 and self._under_cap(job):
                    wanting.append((-overdue, job))
            for entry in held:
                heapq.heappush(lane.oldest, entry)
        if not wanting:
            return
        wanting.sort(key=lambda pair: pair[0])
        already: dict[str, int] = defaultdict(int)
        for run_id in self._preempting:  # freeing up soon: counts toward each model
            run = self._running.get(run_id)
            if run is not None:
                already[run.model] += 1
        victims = self._victims(now)
        for _, job in wanting:
            if already[job.model] > 0:
                already[job.model] -= 1
                continue
            victim = self._victim(job, victims)
            if victim is None:
                continue
            self._preempting.add(victim.id)
            self._promised[victim.workers[0]] = job.id  # not for whoever comes next
            dec.preemptions.append(
                Preemption(victim.id, f"{job.tier.value} job waited past its target", job.id)
            )

    def _victims(self, now: float) -> list[RunningJob]:
        """Running jobs that may be preempted now, the one that loses least first: lowest
        tier, least work since its checkpoint, most left to run."""
        cfg = self.config
        found: list[tuple[tuple[float, ...], RunningJob]] = []
        for run in self._running.values():
            if (
                run.tier is TIER_ORDER[0]
                or run.id in self._preempting
                or run.preemptions >= cfg.max_preemptions
                or now - run.started_at < cfg.min_run_s
                or run.expected_end - now < cfg.min_remaining_s
                or len(run.workers) > 1
                or len(self._busy.get(run.workers[0], ())) > 1  # batched: frees no GPU alone
            ):
                continue
            lost = now - (run.checkpoint_at if run.checkpoint_at is not None else run.started_at)
            found.append(((-_RANK[run.tier], lost, -(run.expected_end - now)), run))
        found.sort(key=lambda pair: pair[0])
        return [run for _, run in found]

    def _victim(self, job: QueuedJob, victims: list[RunningJob]) -> RunningJob | None:
        rank = _RANK[job.tier]
        for k, run in enumerate(victims):
            if _RANK[run.tier] > rank and job.model in self._workers[run.workers[0]].models:
                del victims[k]
                return run
        return None

    # ---- heap plumbing ----------------------------------------------------------------
    def _current(
        self, heap: list[tuple[float, int, str]], seen: set[str]
    ) -> Iterator[tuple[int, QueuedJob]]:
        """A heap's entries in order, as (seq, job), skipping what `_top` would drop (jobs no
        longer queued) and the older entries of a job handed back and queued again."""
        queued = self._queued
        for _at, seq, job_id in sorted(heap):
            job = queued.get(job_id)
            if job is not None and job_id not in seen:
                seen.add(job_id)
                yield seq, job

    def _top(self, heap: list[tuple[float, int, str]]) -> QueuedJob | None:
        while heap:
            job = self._queued.get(heap[0][2])
            if job is not None:
                return job
            heapq.heappop(heap)
        return None

    def _user_head(self, lane: _Lane, user: str) -> QueuedJob | None:
        jobs = lane.jobs.get(user)
        if not jobs:
            return None
        head = self._top(jobs)
        if head is None:
            del lane.jobs[user]
        return head

    def _has_queued(self, lane: _Lane, user: str) -> bool:
        return self._user_head(lane, user) is not None

    def _push_user(self, lane: _Lane, user: str) -> None:
        head = self._user_head(lane, user)
        if head is not None:
            vt = self._user_vt[(lane.tier, user)]
            heapq.heappush(lane.users, (vt, head.queued_at, next(_seq), user))


def _gain(jobs: list[QueuedJob]) -> float:
    return jobs[0].batch_gain if len(jobs) > 1 else 1.0


def build(jobs: Iterable[QueuedJob], workers: Iterable[WorkerView], **config: object) -> Scheduler:
    """A scheduler holding a snapshot's queued jobs and workers (tests, one-off decisions)."""
    scheduler = Scheduler(PolicyConfig(**config))  # type: ignore[arg-type]
    for worker in workers:
        scheduler.add_worker(worker)
    for job in jobs:
        scheduler.submit(job)
    return scheduler
