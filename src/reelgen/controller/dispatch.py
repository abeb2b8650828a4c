"""The live half of the scheduling policy: feeds `scheduler.fairshare.Scheduler` from the
store and applies its decisions there, as the simulator does from its own state.

It runs in the leading controller. It starts from the store's queued and running jobs and
its live workers, then follows the event log: each round it applies final events and the
`started` events that confirm its own assignments, re-reads the rows of the other jobs whose
events it read and makes the policy agree with them (a replayed event or a leader's stale
view cannot mislead it), refreshes the workers, runs the policy and applies its
`Decisions`: an assignment becomes `jobs.assigned_worker` (the claim takes only the job
assigned to the claiming worker) and wakes that worker; a preemption becomes
`preempt_requested`. An assignment not claimed within `claim_timeout_s` goes back to the
queue and its worker is left out until it is seen again. A worker counts as free once its
job leaves the GPU, or earlier, when the job's last model step begins (`finishing`): the
worker claims and prepares the next job during that step.

A live worker has one accelerator and serves one adapter or several (the others parked in
its host memory): the policy's model switches are live, the worker switching when it claims a
job for a parked model. Small compatible jobs (one batch key, set at admission) are
assigned to one worker together where the cost model says it pays, and the worker claims
and runs them as one batch. Live jobs are single-GPU; gangs are decided by the same policy
in the simulator.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from reelgen.domain import events as ev
from reelgen.domain.jobs import OFF_GPU_STAGES, Stage, Status, Tier
from reelgen.platform import Core
from reelgen.scheduler.autoscale import AutoscaleConfig, Autoscaler
from reelgen.scheduler.fairshare import PolicyConfig, Scheduler
from reelgen.scheduler.view import Decisions, QueuedJob, WorkerView
from reelgen.settings import Settings
from reelgen.store.jobs import PoolTarget, SchedulingRow, WorkerRow

log = logging.getLogger("reelgen.dispatch")

QUIET_KINDS = frozenset(
    {ev.EventKind.STAGE, ev.EventKind.CANCEL_REQUESTED, ev.EventKind.PREEMPT_REQUESTED}
)
"""Events that change nothing the policy sees."""
FINAL_KINDS = frozenset(
    {
        ev.EventKind.COMPLETED,
        ev.EventKind.FAILED,
        ev.EventKind.CANCELLED,
        ev.EventKind.DELETED,
        ev.EventKind.EXPIRED,
    }
)
"""After these a job never runs again: no need to read its row."""
MODELS_CHANGED = frozenset({ev.SWITCH_FAILED, ev.NOT_SERVED})
"""Hand-back reasons that mean the worker serves other models than the dispatcher thought."""


def policy_config(settings: Settings) -> PolicyConfig:
    """The live policy's parameters from the settings."""
    return PolicyConfig(
        weights={Tier.PAID: settings.paid_weight, Tier.FREE: settings.free_weight, Tier.BATCH: 1},
        wait_target_s={
            Tier.PAID: settings.paid_wait_target_seconds,
            Tier.FREE: settings.free_wait_target_seconds,
            Tier.BATCH: float("inf"),
        },
        user_running_cap={
            Tier.PAID: settings.paid_running_per_user,
            Tier.FREE: settings.free_running_per_user,
            Tier.BATCH: 1_000_000,
        },
        max_preemptions=settings.max_preemptions,
        max_batch=settings.max_batch,
        min_batch_gain=settings.min_batch_gain,
    )


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    claim_timeout_s: float = 15.0
    workers_every_s: float = 1.0
    """How often the worker table is read again (new, stopped and silent workers)."""
    worker_alive_s: float = 60.0
    """An idle worker not seen for this long gets no more work."""
    batch_deadline_s: float = 24 * 3600.0
    pools_every_s: float = 5.0
    """How often the autoscaling answer is computed and stored."""
    forecast_every_s: float = 1.0
    """How often queued jobs' positions and ETAs are forecast (at least ten times as long
    as a forecast takes, so a huge queue cannot eat the dispatcher's time)."""
    forecast_writes: int = 2000
    """Forecasts stored per round: new jobs first, then the ones that moved most."""
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)

    @classmethod
    def of(cls, settings: Settings) -> DispatchConfig:
        return cls(
            policy=policy_config(settings),
            claim_timeout_s=settings.claim_timeout_seconds,
            batch_deadline_s=settings.batch_deadline_seconds,
        )


def queued_job(row: SchedulingRow, batch_deadline_s: float) -> QueuedJob:
    """A job as the policy sees it; a resumed job costs only the steps after its checkpoint
    and runs alone (a running one keeps its batch key: the batch it runs in checkpoints)."""
    tier = Tier(row.tier)
    remaining = 1.0
    if row.total_steps > 0:
        remaining = 1.0 - min(row.checkpoint_step, row.total_steps) / row.total_steps
    return QueuedJob(
        id=row.id,
        user=row.user_id,
        tier=tier,
        model=row.model,
        gpu_seconds=max(row.estimated_seconds * remaining, 1e-3),
        queued_at=max(row.created_at, row.not_before),
        created_at=row.created_at,
        deadline=row.created_at + batch_deadline_s if tier is Tier.BATCH else None,
        preemptions=row.preemptions,
        batch_key=row.batch_key
        if remaining == 1.0 or row.status == Status.IN_PROGRESS.value
        else None,
        batch_gain=row.batch_gain,
    )


def worker_view(row: WorkerRow) -> WorkerView:
    return WorkerView(
        id=row.id,
        host=row.hostname,
        models=frozenset({row.model, *row.holds}),
        loaded=row.holds[0] if row.holds else row.model,
    )


@dataclass(slots=True)
class _Pending:
    worker: str
    at: float


class Dispatcher:
    """One leader's dispatcher; a new leader builds a new one (`start`)."""

    def __init__(self, platform: Core, config: DispatchConfig | None = None):
        self.platform = platform
        self.config = config or DispatchConfig.of(platform.settings)
        self.policy = Scheduler(self.config.policy)
        self._cursor = ev.START
        self._pending: dict[str, _Pending] = {}
        """job -> its assignment not yet claimed"""
        self._later: list[tuple[float, str]] = []
        """(not_before, job) of queued jobs backing off after a lost worker"""
        self._later_jobs: dict[str, QueuedJob] = {}
        self._silent: dict[str, float] = {}
        """worker -> when it was left out (an unclaimed assignment); back once seen after"""
        self._workers_at = -float("inf")
        self._pools_at = -float("inf")
        self._forecast_at = -float("inf")
        self._told: dict[str, tuple[int, float | None]] = {}
        """job -> the forecast last stored for it"""
        self._autoscalers: dict[str, Autoscaler] = {}
        self._arrived: dict[str, float] = {}
        self.started = False

    # ---- start ------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Takes over the fleet as the store has it: assignments of an earlier leader are
        void, running jobs stay where they run."""
        jobs = self.platform.jobs
        self._cursor = jobs.head_cursor()
        cleared = jobs.clear_assignments()
        self._refresh_workers(now)
        rows = jobs.active_rows()
        # A worker may hold two running jobs: one in its last step or off the GPU, and the
        # one it claimed after it (its row's `current_job_id`), which holds it from now on.
        current = {w.id: w.current_job_id for w in jobs.live_workers()}
        rows.sort(key=lambda r: r.worker_id is None or current.get(r.worker_id) != r.id)
        for row in rows:
            self._reconcile(row.id, row, now)
        self.started = True
        log.info(
            "dispatcher started: %d queued, %d running, %d workers (%d old assignments void)",
            self.policy.queued,
            len(self.policy.running),
            len(self.policy.workers),
            cleared,
        )

    # ---- one round --------------------------------------------------------------------
    def step(self, now: float) -> Decisions:
        if not self.started:
            self.start(now)
        self._follow_events(now)
        starving = self.policy.queued > 0 and self.policy.idle_workers() == 0
        if now >= self._workers_at + (0.2 if starving else self.config.workers_every_s):
            self._refresh_workers(now)
        self._release_due(now)
        self._expire_pending(now)
        decisions = self.policy.schedule(now)
        self._apply(decisions, now)
        if now >= self._pools_at + self.config.pools_every_s:
            self._publish_pools(now)
        if now >= self._forecast_at:
            self._publish_forecast(now)
        return decisions

    def _follow_events(self, now: float) -> None:
        jobs = self.platform.jobs
        touched: dict[str, None] = {}
        changed: set[str] = set()
        """Workers whose models changed (a job handed back for a failed switch)."""
        while True:
            page = jobs.read_events(self._cursor, limit=1000)
            for event in page:
                kind, job_id = event.kind, event.job_id
                payload = event.payload
                if isinstance(payload, ev.Released) and payload.reason in MODELS_CHANGED:
                    run = self.policy.running.get(job_id)
                    changed.update(run.workers if run is not None else ())
                if kind is ev.EventKind.CHECKPOINT:
                    self.policy.checkpointed(job_id, event.at)
                elif kind is ev.EventKind.FINISHING:
                    self._finishing(job_id, payload)
                elif kind is ev.EventKind.STAGE:
                    payload = event.payload
                    if isinstance(payload, ev.StageChanged) and payload.stage in OFF_GPU_STAGES:
                        self._left_gpu(job_id)
                elif kind in FINAL_KINDS:
                    self._reconcile(job_id, None, now)
                elif kind is ev.EventKind.STARTED and job_id not in touched:
                    if not self._claimed_as_assigned(job_id, event.payload):
                        touched[job_id] = None
                elif kind not in QUIET_KINDS:
                    touched[job_id] = None
            if page:
                self._cursor = page[-1].cursor
            if len(page) < 1000:
                break
        if touched:
            rows = jobs.scheduling_rows(list(touched))
            for job_id in touched:
                self._reconcile(job_id, rows.get(job_id), now)
        if changed:  # idle again now: their rows say what they serve
            for row in jobs.live_workers():
                if row.id in changed and self.policy.is_idle(row.id):
                    self.policy.add_worker(worker_view(row))

    def _claimed_as_assigned(self, job_id: str, started: ev.Payload) -> bool:
        """A `started` event that only confirms this dispatcher's assignment."""
        pending = self._pending.get(job_id)
        run = self.policy.running.get(job_id)
        if (
            pending is None
            or run is None
            or not isinstance(started, ev.Started)
            or run.workers != (started.worker_id,)
        ):
            return False
        del self._pending[job_id]
        return True

    def _reconcile(self, job_id: str, row: SchedulingRow | None, now: float) -> None:
        """Makes the policy's view of one job agree with its row."""
        policy = self.policy
        running = policy.running.get(job_id)
        if row is None or row.status not in (Status.QUEUED.value, Status.IN_PROGRESS.value):
            policy.remove(job_id)
            policy.finished(job_id)
            self._pending.pop(job_id, None)
            self._later_jobs.pop(job_id, None)
            return
        if row.status == Status.QUEUED.value and row.stage == Stage.AWAITING_REVIEW.value:
            policy.remove(job_id)  # held until an admin approves it
            self._later_jobs.pop(job_id, None)
            return
        if row.status == Status.QUEUED.value:
            pending = self._pending.get(job_id)
            if running is not None:
                if pending is not None and row.assigned_worker == pending.worker:
                    return  # assigned, not claimed yet
                policy.finished(job_id)  # handed back, or its worker was lost
                self._pending.pop(job_id, None)
            if policy.queued_job(job_id) is not None or job_id in self._later_jobs:
                return
            job = queued_job(row, self.config.batch_deadline_s)
            new = job.queued_at == job.created_at and job.preemptions == 0 and not row.started_at
            if new and job.tier is not Tier.BATCH:  # batch work counts by its deadline
                self._arrived[row.model] = self._arrived.get(row.model, 0.0) + job.gpu_seconds
            if row.not_before > now:
                self._later_jobs[job_id] = job
                heapq.heappush(self._later, (row.not_before, job_id))
            else:
                policy.submit(job)
            return
        # in progress
        self._pending.pop(job_id, None)
        if row.stage in OFF_GPU_STAGES:
            self._left_gpu(job_id)
            return
        if running is not None and running.workers == (row.worker_id,):
            return
        if running is not None:
            policy.finished(job_id)
        policy.remove(job_id)
        self._later_jobs.pop(job_id, None)
        if row.worker_id is not None and not policy.adopt(
            queued_job(row, self.config.batch_deadline_s), (row.worker_id,), row.started_at or now
        ):
            log.info("job %s runs on %s, which the dispatcher does not know", job_id, row.worker_id)

    def _finishing(self, job_id: str, payload: ev.Payload) -> None:
        """The job's last step began: its worker takes the next job meanwhile. Only if the
        job still runs there (a late event of an attempt handed back changes nothing)."""
        run = self.policy.running.get(job_id)
        if (
            run is not None
            and isinstance(payload, ev.Finishing)
            and run.workers == (payload.worker_id,)
        ):
            self.policy.finishing(job_id)

    def _left_gpu(self, job_id: str) -> None:
        """The job runs on, off the GPU: its worker is free for the next one."""
        self._pending.pop(job_id, None)
        self._later_jobs.pop(job_id, None)
        self.policy.remove(job_id)
        self.policy.finished(job_id)

    def _release_due(self, now: float) -> None:
        while self._later and self._later[0][0] <= now:
            _at, job_id = heapq.heappop(self._later)
            job = self._later_jobs.pop(job_id, None)
            if job is not None:
                self.policy.submit(job)

    def _refresh_workers(self, now: float) -> None:
        jobs = self.platform.jobs
        self._workers_at = now
        rows = jobs.live_workers()
        held = jobs.held_session_keys()
        seen: set[str] = set()
        for row in rows:
            gone = held is not None and row.session_key is not None and row.session_key not in held
            silent_since = self._silent.get(row.id)
            if silent_since is not None:
                if row.heartbeat_at <= silent_since:
                    continue
                del self._silent[row.id]
            # A busy worker stays until its job's end or loss reaches the event log (the
            # reaper decides about losses, with its grace for reconnecting sessions).
            busy = row.id in self.policy.workers and not self.policy.is_idle(row.id)
            if not busy and (gone or row.heartbeat_at < now - self.config.worker_alive_s):
                continue
            seen.add(row.id)
            known = self.policy.workers.get(row.id)
            view = worker_view(row)
            # A worker that stopped serving a model (a failed switch) says so in its row;
            # an idle one's row also has the truth about what is on its device.
            if known is None or (
                not busy and (known.models != view.models or known.loaded != view.loaded)
            ):
                self.policy.add_worker(view)
        for worker_id in [w for w in self.policy.workers if w not in seen]:
            self._drop_worker(worker_id, now)

    def _drop_worker(self, worker_id: str, now: float) -> None:
        """The worker is gone or silent: its unclaimed assignment goes back to the queue.
        Jobs it claimed come back through the reaper's events."""
        taken_back = [
            job_id
            for job_id in self.policy.remove_worker(worker_id)
            if self._pending.pop(job_id, None) is not None
            and self.platform.jobs.unassign(job_id, worker_id)
        ]
        self._reread(taken_back, now)

    def _reread(self, job_ids: list[str], now: float) -> None:
        if job_ids:
            rows = self.platform.jobs.scheduling_rows(job_ids)
            for job_id in job_ids:
                self._reconcile(job_id, rows.get(job_id), now)

    def _expire_pending(self, now: float) -> None:
        timeout = self.config.claim_timeout_s
        for job_id, pending in list(self._pending.items()):
            if now - pending.at < timeout:
                continue
            log.warning(
                "worker %s did not claim %s within %.0f s; reassigning",
                pending.worker,
                job_id,
                timeout,
                extra={"job_id": job_id, "worker_id": pending.worker},
            )
            self._silent[pending.worker] = now
            self._drop_worker(pending.worker, now)

    # ---- apply ------------------------------------------------------------------------
    def _apply(self, decisions: Decisions, now: float) -> None:
        pairs = [(job, a.workers[0]) for a in decisions.assignments for job in a.jobs]
        if pairs:
            done = self.platform.jobs.assign(pairs)
            refused: list[str] = []
            for job_id, worker_id in pairs:
                if job_id in done:
                    self._pending[job_id] = _Pending(worker_id, now)
                else:  # cancelled or deleted meanwhile
                    self.policy.finished(job_id)
                    refused.append(job_id)
            self._reread(refused, now)
            self.platform.bus.assigned(sorted({w for j, w in pairs if j in done}))
            self.platform.metrics.assignments.inc(len(done))
        for preemption in decisions.preemptions:
            if self.platform.jobs.request_preempt(preemption.job, now):
                self.platform.metrics.preemptions.inc()
                log.info(
                    "preempting %s for %s (%s)",
                    preemption.job,
                    preemption.for_job,
                    preemption.reason,
                    extra={"job_id": preemption.job},
                )

    def _publish_forecast(self, now: float) -> None:
        began = time.perf_counter()
        forecast = self.policy.forecast(now)
        told = self._told
        for job_id in [j for j in told if j not in forecast]:
            del told[job_id]

        def moved(item: tuple[str, tuple[int, float | None]]) -> float:
            job_id, (position, start) = item
            before = told.get(job_id)
            if before is None:
                return math.inf
            old_position, old_start = before
            if (start is None) != (old_start is None):
                return math.inf
            drift = abs(position - old_position) / (old_position + 1)
            if start is not None and old_start is not None:
                drift += abs(start - old_start) / max(60.0, old_start - now)
            return drift

        changed = [item for item in forecast.items() if told.get(item[0]) != item[1]]
        changed.sort(key=moved, reverse=True)
        chosen = changed[: self.config.forecast_writes]
        if chosen:
            self.platform.jobs.save_forecasts([(j, p, s) for j, (p, s) in chosen])
            told.update(chosen)
        took = time.perf_counter() - began
        self._forecast_at = now + max(self.config.forecast_every_s, 10 * took)

    def _publish_pools(self, now: float) -> None:
        self._pools_at = now
        policy = self.policy
        models = {w.loaded or next(iter(w.models)) for w in policy.workers.values()}
        models |= set(self._arrived) | {r.model for r in policy.running.values()}
        models |= policy.queued_models()
        targets: list[PoolTarget] = []
        late = policy.late(now)
        running = Counter(r.model for r in policy.running.values())
        serving = Counter(m for w in policy.workers.values() for m in w.models)
        for model in sorted(m for m in models if m):
            scaler = self._autoscalers.setdefault(model, Autoscaler(self.config.autoscale))
            busy = running[model]
            load = policy.pool_load(self._arrived.pop(model, 0.0), now, model)
            desired = scaler.observe(now, load)
            backlog = load.total_backlog_gpu_s
            targets.append(
                PoolTarget(
                    model,
                    desired,
                    serving[model],
                    busy,
                    policy.queued_count(model),
                    backlog,
                    scaler.rate_gpu_s_per_s,
                    late.get(model, 0),
                )
            )
        self._arrived.clear()
        self.platform.jobs.save_pool_targets(targets, now)
