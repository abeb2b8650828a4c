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

import heapq
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from reelgen.domain.jobs import Tier
from reelgen.scheduler.autoscale import AutoscaleConfig, Autoscaler, PoolLoad
from reelgen.scheduler.cost import CostModel
from reelgen.scheduler.fairshare import PolicyConfig, Scheduler
from reelgen.scheduler.view import Decisions, QueuedJob, WorkerView
from reelgen.sim.traffic import TIERS, Trace

END, RELEASE, CRASH, RESTART, ADD = range(5)
FORECAST_JOBS_PER_S = 20.0


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
        self.remaining = np.ones(n)
        """Share of each job's work still to do."""
        self.attempt = np.zeros(n, dtype=np.int32)
        self.started = np.zeros(n)
        self.wall = np.zeros(n)
        self.events: list[tuple[float, int, int, int, int, str]] = []
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
        load = PoolLoad(
            arrived_gpu_s=self.arrived_gpu_s,
            backlog_gpu_s=self.s.backlog_seconds(),
            busy_workers=up - self.s.idle_workers(),
            largest_gang=self.s.largest_queued_gang(),
        )
        self.arrived_gpu_s = 0.0
        desired = self.autoscaler.observe(now, load)
        short = desired - up - self.pending
        if short > 0:
            hosts = math.ceil(short / self.cfg.gpus_per_host)
            self.pending += hosts * self.cfg.gpus_per_host
            self._push(now + self.cfg.provision_s, ADD, hosts, 0)
        elif desired < up:
            for host in self.s.idle_hosts((up - desired) // self.cfg.gpus_per_host):
                for worker_id in host:
                    self.s.remove_worker(worker_id)
                    self.active.discard(worker_id)

    def _arm_crash(self, worker_id: str, now: float) -> None:
        rate = self.cfg.crashes_per_gpu_day / 86_400.0
        if rate > 0:
            self._push(now + self.rng.exponential(1 / rate), CRASH, 0, 0, worker_id)

    def _push(self, at: float, kind: int, job: int, attempt: int, worker: str = "") -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, job, attempt, worker))

    # ---- jobs ---------------------------------------------------------------------------
    def _queued(self, i: int, now: float) -> QueuedJob:
        t = self.t
        tier = TIERS[t.tier[i]]
        model = self.model_names[t.model[i]]
        batchable = bool(t.batchable[i]) and self.remaining[i] == 1.0
        return QueuedJob(
            id=str(i),
            user=str(t.user[i]),
            tier=tier,
            model=model,
            gpu_seconds=float(t.gpu_seconds[i] * self.remaining[i]),
            queued_at=now,
            created_at=float(t.arrival[i]),
            gpus=int(t.gpus[i]),
            deadline=float(t.arrival[i] + t.deadline_s) if tier is Tier.BATCH else None,
            preemptions=int(self.preemptions[i]),
            batch_key=f"{model}:{t.shape[i]}" if batchable else None,
            batch_gain=float(t.batch_gain[i]),
        )

    def arrive(self, i: int, now: float) -> None:
        job = self._queued(i, now)
        self.arrived_gpu_s += job.gpu_seconds
        self.unforecast += 1
        self.s.submit(job)

    def forecast(self, now: float) -> None:
        """What the API would tell the jobs that arrived since the last forecast."""
        arrival, predicted = self.t.arrival, self.predicted
        for job_id, (_position, start) in self.s.forecast(now).items():
            i = int(job_id)
            if start is not None and math.isnan(predicted[i]):
                predicted[i] = start - float(arrival[i])
        self.unforecast = 0

    def apply(self, now: float) -> None:
        decisions = self.s.schedule(now)
        if self.cfg.record:
            self.result.rounds.append((now, decisions))
        for a in decisions.assignments:
            jobs = [int(j) for j in a.jobs]
            load = self.load_s[a.model] if a.switch else 0.0
            if a.switch:
                self.result.switches += len(a.workers)
            gain = float(self.t.batch_gain[jobs[0]]) if len(jobs) > 1 else 1.0
            work = sum(float(self.t.actual_seconds[i] * self.remaining[i]) for i in jobs)
            wall = load + work / len(a.workers) / gain
            for worker_id in a.workers:
                w = self.workers[worker_id]
                if w.loaded != a.model:
                    self.workers[worker_id] = WorkerView(
                        w.id, w.host, w.models, a.model, self.load_s[a.model]
                    )
            for i in jobs:
                if math.isnan(self.first_start[i]):
                    self.first_start[i] = now
                elif load:
                    self.result.lost_gpu_s += load * len(a.workers)
                self.attempt[i] += 1
                self.started[i] = now + load
                self.wall[i] = wall - load
                self._push(now + wall, END, i, int(self.attempt[i]))
        for p in decisions.preemptions:
            i = int(p.job)
            self._push(now + self.cfg.preempt_delay_s, RELEASE, i, int(self.attempt[i]))

    def _progress(self, i: int, now: float, *, checkpointed_only: bool) -> float:
        """Share of this attempt's work done by `now` (to the last periodic checkpoint)."""
        if self.wall[i] <= 0:
            return 1.0
        ran = max(0.0, now - float(self.started[i]))
        if checkpointed_only:
            ran = math.floor(ran / self.cfg.checkpoint_every_s) * self.cfg.checkpoint_every_s
        return min(1.0, ran / float(self.wall[i]))

    def _hand_back(self, i: int, now: float, *, checkpointed_only: bool) -> None:
        done = self._progress(i, now, checkpointed_only=checkpointed_only)
        if checkpointed_only:
            lost = (self._progress(i, now, checkpointed_only=False) - done) * self.wall[i]
            self.result.lost_gpu_s += lost * int(self.t.gpus[i])
        self.remaining[i] *= 1.0 - done
        self.attempt[i] += 1  # its pending END no longer counts
        self.s.submit(self._queued(i, now))

    def handle(self, kind: int, i: int, attempt: int, worker_id: str, now: float) -> None:
        if kind == END:
            if attempt == self.attempt[i] and self.s.finished(str(i)) is not None:
                self.end[i] = now
        elif kind == RELEASE:
            if attempt != self.attempt[i] or self.s.finished(str(i)) is None:
                return  # it ended (or was lost) first
            self.preemptions[i] += 1
            self.result.preempted_runs += 1
            self._hand_back(i, now, checkpointed_only=False)
        elif kind == ADD:
            self.pending -= i * self.cfg.gpus_per_host
            self._add_hosts(i, now)
        elif kind == CRASH:
            if worker_id not in self.active:
                return  # scaled away meanwhile
            self.result.crashes += 1
            self.down += 1
            for job_id in self.s.remove_worker(worker_id):
                self._hand_back(int(job_id), now, checkpointed_only=True)
            self._push(now + self.cfg.restart_s, RESTART, 0, 0, worker_id)
        elif kind == RESTART:
            self.down -= 1
            if worker_id not in self.active:
                return
            self.s.add_worker(self.workers[worker_id])
            self._arm_crash(worker_id, now)

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> Result:
        started = time.perf_counter()
        t = self.t
        arrival = t.arrival
        n = len(t)
        tick = self.cfg.tick_s
        r = self.result
        next_scale = 0.0 if self.autoscaler is not None else math.inf
        next_sample = 0.0
        next_forecast = 0.0
        last = 0.0
        i = 0
        now = 0.0
        horizon = (float(arrival[-1]) if n else 0.0) + self.cfg.drain_s
        events = self.events
        while now <= horizon:
            next_arrival = float(arrival[i]) if i < n else math.inf
            next_event = events[0][0] if events else math.inf
            upcoming = min(next_arrival, next_event)
            if self.s.queued and next_scale < math.inf:
                upcoming = min(upcoming, next_scale)  # the autoscaler may add capacity
            if upcoming == math.inf:
                break
            if upcoming > now + tick:  # nothing until then: jump to that round
                self._account(now, upcoming - upcoming % tick)
                now = upcoming - upcoming % tick
            now += tick
            while i < n and arrival[i] <= now:
                self.arrive(i, float(arrival[i]))
                i += 1
            while events and events[0][0] <= now:
                at, _, kind, job, attempt, worker_id = heapq.heappop(events)
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
            if i >= n and not events and self.s.queued == 0:
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
    return _Fleet(trace, fleet, policy, costs, seed).run()
