"""A discrete-event simulation of a GPU fleet over a traffic trace, driven by the same
`scheduler.fairshare.Scheduler` the live dispatcher runs (imported, not copied).

Time advances in scheduling rounds of `tick_s` (the dispatcher's cadence), jumping over
quiet stretches; within a round, arrivals and job ends are applied in time order, then the
policy decides once and its decisions are carried out: jobs start (their real run time is
the trace's, not the estimate the policy planned with), preempted jobs reach their next
step boundary, checkpoint and go back to the queue, crashed workers lose the work since
their last checkpoint and come back after a restart.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from reelgen.domain.jobs import Tier
from reelgen.scheduler.autoscale import AutoscaleConfig, Autoscaler
from reelgen.scheduler.cost import CostModel
from reelgen.scheduler.fairshare import PolicyConfig, Scheduler
from reelgen.scheduler.view import Decisions, QueuedJob, WorkerView
from reelgen.sim.traffic import TIERS, Trace

END, RELEASE, CRASH, RESTART, ADD = range(5)
FORECAST_JOBS_PER_S = 20.0
CHUNK = 1 << 16
"""Arrivals are read from the trace's columns this many at a time, as Python values."""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    gpus: int = 4096
    gpus_per_host: int = 8
    tick_s: float = 1.0
    preempt_delay_s: float = 3.0
    """From the preemption request to the next step boundary's checkpoint."""
    checkpoint_every_s: float = 60.0
    crashes_per_gpu_day: float = 0.0
    restart_s: float = 180.0
    gpu_hour_usd: float = 3.5
    sample_every_s: float = 300.0
    autoscale: AutoscaleConfig | None = None
    """None: a fixed fleet of `gpus`; else `gpus` is the starting size."""
    autoscale_every_s: float = 30.0
    provision_s: float = 180.0
    """From asking for a host to its GPUs taking work (boot, first model load)."""
    drain_s: float = 6 * 3600.0
    """How long after the last arrival the run may go on to finish the queue."""
    forecast_every_s: float = 60.0
    """How often queued jobs are forecast (`Scheduler.forecast`, what the API reports); a
    job's predicted wait is its first forecast's. A long queue is forecast less often
    (every `queued / FORECAST_JOBS_PER_S` seconds at least): a forecast costs time per
    queued job, as the live dispatcher's does, which spaces them by their cost too."""
    record: bool = False
    """Keep every round's time and decisions in `Result.rounds` (small scenarios)."""


@dataclass(slots=True)
class Result:
    policy: str
    trace: Trace
    fleet: FleetConfig
    first_start: np.ndarray
    end: np.ndarray
    preemptions: np.ndarray
    predicted_wait: np.ndarray
    samples: dict[str, list[float]] = field(default_factory=dict)
    busy_gpu_s: float = 0.0
    capacity_gpu_s: float = 0.0
    busy_while_waiting_s: float = 0.0
    capacity_while_waiting_s: float = 0.0
    lost_gpu_s: float = 0.0
    """Work redone after crashes plus model loads to resume preempted work."""
    preempted_runs: int = 0
    crashes: int = 0
    switches: int = 0
    horizon_s: float = 0.0
    wall_s: float = 0.0
    rounds: list[tuple[float, Decisions]] = field(default_factory=list)


_Event = tuple[float, int, int, "_Flight | None", int, str]
"""(at, seq, kind, flight, attempt, worker)"""


@dataclass(slots=True)
class _Flight:
    """A job from its arrival to its end: what the policy is told about it, and how far
    its real run (the trace's, not the estimate) has got."""

    index: int
    job: QueuedJob
    """As first submitted; a handed-back job is submitted again from this."""
    actual_s: float
    remaining: float = 1.0
    """Share of the work still to do."""
    attempt: int = 0
    """Bumped by each start and hand-back: an event of an older attempt is stale."""
    started: float = 0.0
    """When this attempt's work began (after any model load)."""
    wall: float = 0.0
    """This attempt's run time, model load excluded."""
    preemptions: int = 0
    forecast: bool = False
    ran: bool = False


class _Fleet:
    def __init__(
        self,
        trace: Trace,
        fleet: FleetConfig,
        policy: PolicyConfig,
        costs: Mapping[str, CostModel],
        seed: int,
    ):
        self.t = trace
        self.cfg = fleet
        self.s = Scheduler(policy)
        self.rng = np.random.default_rng(seed + 1)
        n = len(trace)
        self.first_start = np.full(n, np.nan)
        self.end = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int16)
        self.predicted = np.full(n, np.nan)
        self.unforecast = 0
        self.flights: dict[str, _Flight] = {}
        """Jobs that arrived and have not ended, by id."""
        self.events: dict[int, list[_Event]] = {}
        """Pending events by round (`at // tick_s`): a calendar, cheaper than one heap of
        all of them; `event_rounds` is the heap of its keys."""
        self.event_rounds: list[int] = []
        self.seq = 0
        self.model_names = [m.name for m in trace.models]
        self.load_s = {m.name: costs[m.cost_class].load_s for m in trace.models}
        self.workers: dict[str, WorkerView] = {}
        self.active: set[str] = set()
        self.hosts_made = 0
        self.pending = 0
        """GPUs asked for and not yet up."""
        self.arrived_gpu_s = 0.0
        self.autoscaler = Autoscaler(fleet.autoscale) if fleet.autoscale is not None else None
        self.down = 0
        self.result = Result(
            policy=policy.order.value,
            trace=trace,
            fleet=fleet,
            first_start=self.first_start,
            end=self.end,
            preemptions=self.preemptions,
            predicted_wait=self.predicted,
            samples={"t": [], "queued": [], "busy": [], "fleet": []},
        )
        self._start_fleet()

    # ---- set-up -------------------------------------------------------------------------
    def _start_fleet(self) -> None:
        """Workers serve every model; their first loads split by each model's GPU-seconds."""
        t = self.t
        demand = np.bincount(t.model, weights=t.gpu_seconds, minlength=len(t.models))
        share = demand / max(demand.sum(), 1e-9)
        hosts = math.ceil(self.cfg.gpus / self.cfg.gpus_per_host)
        self._host_models = np.repeat(np.arange(len(t.models)), np.round(share * hosts).astype(int))
        self._add_hosts(hosts, 0.0, limit=self.cfg.gpus)

    def _add_hosts(self, hosts: int, now: float, limit: int | None = None) -> None:
        models = frozenset(self.model_names)
        made = 0
        for _ in range(hosts):
            h = self.hosts_made
            self.hosts_made += 1
            pick = self._host_models[h % len(self._host_models)] if len(self._host_models) else 0
            loaded = self.model_names[int(pick)]
            for g in range(self.cfg.gpus_per_host):
                if limit is not None and made == limit:
                    return
                w = WorkerView(f"h{h}/{g}", f"h{h}", models, loaded, self.load_s[loaded])
                self.workers[w.id] = w
                self.active.add(w.id)
                self.s.add_worker(w)
                self._arm_crash(w.id, now)
                made += 1

    def _autoscale(self, now: float) -> None:
        assert self.autoscaler is not None
        up = len(self.active) - self.down
        load = self.s.pool_load(self.arrived_gpu_s, now)
        self.arrived_gpu_s = 0.0
        desired = self.autoscaler.observe(now, load)
        short = desired - up - self.pending
        if short > 0:
            hosts = math.ceil(short / self.cfg.gpus_per_host)
            self.pending += hosts * self.cfg.gpus_per_host
            self._push(now + self.cfg.provision_s, ADD, None, hosts)
        elif desired < up:
            for host in self.s.idle_hosts((up - desired) // self.cfg.gpus_per_host):
                for worker_id in host:
                    self.s.remove_worker(worker_id)
                    self.active.discard(worker_id)

    def _arm_crash(self, worker_id: str, now: float) -> None:
        rate = self.cfg.crashes_per_gpu_day / 86_400.0
        if rate > 0:
            self._push(now + self.rng.exponential(1 / rate), CRASH, None, 0, worker_id)

    def _push(
        self, at: float, kind: int, job: _Flight | None, attempt: int, worker: str = ""
    ) -> None:
        self.seq += 1
        self._file((at, self.seq, kind, job, attempt, worker))

    def _next_event(self) -> float:
        return min(self.events[self.event_rounds[0]])[0] if self.event_rounds else math.inf

    def _due(self, now: float) -> list[_Event]:
        """The events at or before `now`, in time order, taken off the calendar."""
        rounds, events = self.event_rounds, self.events
        due: list[_Event] = []
        while rounds and rounds[0] * self.cfg.tick_s <= now:
            due += events.pop(heapq.heappop(rounds))
        if not due:
            return due
        due.sort()
        if due[-1][0] > now:
            for event in [e for e in due if e[0] > now]:
                self._file(event)
            due = [e for e in due if e[0] <= now]
        return due

    def _file(self, event: _Event) -> None:
        key = int(event[0] // self.cfg.tick_s)
        bucket = self.events.get(key)
        if bucket is None:
            bucket = self.events[key] = []
            heapq.heappush(self.event_rounds, key)
        bucket.append(event)

    # ---- jobs ---------------------------------------------------------------------------
    def _arrivals(self) -> Iterator[_Flight]:
        """The trace's jobs in arrival order, as flights."""
        for start in range(0, len(self.t), CHUNK):
            yield from self._chunk(start)

    def _chunk(self, start: int) -> list[_Flight]:
        """The trace's jobs `start` to `start + CHUNK` as flights: one pass over the columns
        as Python values (numpy's per-element reads cost more than the rest of a submit)."""
        t = self.t
        stop = min(start + CHUNK, len(t))
        rows = slice(start, stop)
        tiers = [TIERS[k] for k in t.tier[rows].tolist()]
        models = [self.model_names[k] for k in t.model[rows].tolist()]
        keys = [
            f"{model}:{shape}" if ok else None
            for model, shape, ok in zip(
                models, t.shape[rows].tolist(), t.batchable[rows].tolist(), strict=True
            )
        ]
        deadline_s = t.deadline_s
        out: list[_Flight] = []
        for k, (arrival, user, gpu_s, gpus, gain, actual) in enumerate(
            zip(
                t.arrival[rows].tolist(),
                t.user[rows].tolist(),
                t.gpu_seconds[rows].tolist(),
                t.gpus[rows].tolist(),
                t.batch_gain[rows].tolist(),
                t.actual_seconds[rows].tolist(),
                strict=True,
            )
        ):
            tier = tiers[k]
            job = QueuedJob(
                id=str(start + k),
                user=str(user),
                tier=tier,
                model=models[k],
                gpu_seconds=gpu_s,
                queued_at=arrival,
                created_at=arrival,
                gpus=gpus,
                deadline=arrival + deadline_s if tier is Tier.BATCH else None,
                batch_key=keys[k],
                batch_gain=gain,
            )
            out.append(_Flight(start + k, job, actual))
        return out

    def arrive(self, flight: _Flight) -> None:
        self.flights[flight.job.id] = flight
        if flight.job.tier is not Tier.BATCH:
            self.arrived_gpu_s += flight.job.gpu_seconds
        self.unforecast += 1
        self.s.submit(flight.job)

    def forecast(self, now: float) -> None:
        """What the API would tell the jobs that arrived since the last forecast."""
        flights, predicted = self.flights, self.predicted
        for job_id, (_position, start) in self.s.forecast(now).items():
            f = flights[job_id]
            if start is not None and not f.forecast:
                f.forecast = True
                predicted[f.index] = start - f.job.created_at
        self.unforecast = 0

    def apply(self, now: float) -> None:
        decisions = self.s.schedule(now)
        if self.cfg.record:
            self.result.rounds.append((now, decisions))
        flights, first_start, load_s = self.flights, self.first_start, self.load_s
        r = self.result
        for a in decisions.assignments:
            jobs = [flights[j] for j in a.jobs]
            load = load_s[a.model] if a.switch else 0.0
            if a.switch:
                r.switches += len(a.workers)
                for worker_id in a.workers:
                    w = self.workers[worker_id]
                    if w.loaded != a.model:
                        self.workers[worker_id] = WorkerView(
                            w.id, w.host, w.models, a.model, load_s[a.model]
                        )
            gain = jobs[0].job.batch_gain if len(jobs) > 1 else 1.0
            work = sum(f.actual_s * f.remaining for f in jobs)
            wall = load + work / len(a.workers) / gain
            for f in jobs:
                if not f.ran:
                    f.ran = True
                    first_start[f.index] = now
                elif load:
                    r.lost_gpu_s += load * len(a.workers)
                f.attempt += 1
                f.started = now + load
                f.wall = wall - load
                self._push(now + wall, END, f, f.attempt)
        for p in decisions.preemptions:
            f = flights[p.job]
            self._push(now + self.cfg.preempt_delay_s, RELEASE, f, f.attempt)

    def _progress(self, f: _Flight, now: float, *, checkpointed_only: bool) -> float:
        """Share of this attempt's work done by `now` (to the last periodic checkpoint)."""
        if f.wall <= 0:
            return 1.0
        ran = max(0.0, now - f.started)
        if checkpointed_only:
            ran = math.floor(ran / self.cfg.checkpoint_every_s) * self.cfg.checkpoint_every_s
        return min(1.0, ran / f.wall)

    def _hand_back(self, f: _Flight, now: float, *, checkpointed_only: bool) -> None:
        done = self._progress(f, now, checkpointed_only=checkpointed_only)
        if checkpointed_only:
            lost = (self._progress(f, now, checkpointed_only=False) - done) * f.wall
            self.result.lost_gpu_s += lost * f.job.gpus
        f.remaining *= 1.0 - done
        f.attempt += 1  # its pending END no longer counts
        job = f.job
        self.s.submit(
            replace(
                job,
                gpu_seconds=job.gpu_seconds * f.remaining,
                queued_at=now,
                preemptions=f.preemptions,
                batch_key=job.batch_key if f.remaining == 1.0 else None,  # resumed: alone
            )
        )

    def handle(
        self, kind: int, f: _Flight | None, attempt: int, worker_id: str, now: float
    ) -> None:
        if kind == END:
            assert f is not None
            if attempt == f.attempt and self.s.finished(f.job.id) is not None:
                self.end[f.index] = now
                del self.flights[f.job.id]
        elif kind == RELEASE:
            assert f is not None
            if attempt != f.attempt or self.s.finished(f.job.id) is None:
                return  # it ended (or was lost) first
            f.preemptions += 1
            self.preemptions[f.index] = f.preemptions
            self.result.preempted_runs += 1
            self._hand_back(f, now, checkpointed_only=False)
        elif kind == ADD:
            self.pending -= attempt * self.cfg.gpus_per_host
            self._add_hosts(attempt, now)
        elif kind == CRASH:
            if worker_id not in self.active:
                return  # scaled away meanwhile
            self.result.crashes += 1
            self.down += 1
            for job_id in self.s.remove_worker(worker_id):
                self._hand_back(self.flights[job_id], now, checkpointed_only=True)
            self._push(now + self.cfg.restart_s, RESTART, None, 0, worker_id)
        elif kind == RESTART:
            self.down -= 1
            if worker_id not in self.active:
                return
            self.s.add_worker(self.workers[worker_id])
            self._arm_crash(worker_id, now)

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> Result:
        started = time.perf_counter()
        arrival = self.t.arrival
        tick = self.cfg.tick_s
        r = self.result
        next_scale = 0.0 if self.autoscaler is not None else math.inf
        next_sample = 0.0
        next_forecast = 0.0
        last = 0.0
        arrivals = self._arrivals()
        coming = next(arrivals, None)  # the next job to arrive (None: all have)
        now = 0.0
        horizon = (float(arrival[-1]) if len(arrival) else 0.0) + self.cfg.drain_s
        while now <= horizon:
            next_arrival = coming.job.created_at if coming is not None else math.inf
            next_event = self._next_event()
            upcoming = min(next_arrival, next_event)
            if self.s.queued and next_scale < math.inf:
                upcoming = min(upcoming, next_scale)  # the autoscaler may add capacity
            if upcoming == math.inf:
                break
            if upcoming > now + tick:  # nothing until then: jump to that round
                self._account(now, upcoming - upcoming % tick)
                now = upcoming - upcoming % tick
            now += tick
            while coming is not None and coming.job.created_at <= now:
                self.arrive(coming)
                coming = next(arrivals, None)
            for at, _, kind, job, attempt, worker_id in self._due(now):
                self.handle(kind, job, attempt, worker_id, at)
            self.apply(now)
            if self.unforecast and now >= next_forecast:
                self.forecast(now)
                spacing = max(self.cfg.forecast_every_s, self.s.queued / FORECAST_JOBS_PER_S)
                next_forecast = now + spacing
            if now >= next_scale:
                self._autoscale(now)
                next_scale = now + self.cfg.autoscale_every_s
            self._account(now - tick, now)
            if now >= next_sample:
                r.samples["t"].append(now)
                r.samples["queued"].append(self.s.queued)
                up = len(self.active) - self.down
                r.samples["busy"].append(up - self.s.idle_workers())
                r.samples["fleet"].append(up)
                next_sample = now + self.cfg.sample_every_s
            last = now
            if coming is None and not self.event_rounds and self.s.queued == 0:
                break
        r.horizon_s = last
        r.wall_s = time.perf_counter() - started
        return r

    def _account(self, start: float, stop: float) -> None:
        dt = stop - start
        if dt <= 0:
            return
        up = len(self.active) - self.down
        busy = up - self.s.idle_workers()
        r = self.result
        r.busy_gpu_s += busy * dt
        r.capacity_gpu_s += up * dt
        if self.s.queued:
            r.busy_while_waiting_s += busy * dt
            r.capacity_while_waiting_s += up * dt


def simulate(
    trace: Trace,
    fleet: FleetConfig,
    policy: PolicyConfig,
    costs: Mapping[str, CostModel],
    *,
    seed: int = 0,
) -> Result:
    """Runs the trace through the fleet. The cyclic garbage collector is off meanwhile:
    the run holds millions of long-lived objects (queued jobs, heap entries) that each
    full collection would walk, and it makes no reference cycles worth collecting."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Fleet(trace, fleet, policy, costs, seed).run()
    finally:
        if enabled:
            gc.enable()
