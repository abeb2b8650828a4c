"""A worker: claim a job, run the model step by step, encode, upload, publish.

It talks to the store, the bus and object storage only, never to the API. Every write
about a job carries the lease token, so a worker that lost its lease cannot overwrite the
attempt that replaced it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from reelgen.domain import events as ev
from reelgen.domain.errors import LeaseLost, Unavailable
from reelgen.domain.jobs import (
    GENERATING_SHARE,
    VARIANT_MEDIA_TYPES,
    Job,
    Stage,
    Status,
    Variant,
    generation_progress,
)
from reelgen.domain.spec import Operation
from reelgen.media.decode import Ending, ending, read_audio, read_frames
from reelgen.media.encode import encode_clip
from reelgen.models.base import (
    BatchingModel,
    Clip,
    Conditioning,
    GenerationSpec,
    StepCallback,
    StepInfo,
    VideoModel,
)
from reelgen.platform import WorkerContext
from reelgen.safety.classifiers import ClassifierUnavailable
from reelgen.safety.output import FrameSampler
from reelgen.safety.verdict import DESCRIPTIONS, Action, Verdict
from reelgen.storage import keys
from reelgen.storage.base import Body
from reelgen.store.jobs import WorkerFlags
from reelgen.store.sessions import marker_for

log = logging.getLogger("reelgen.worker")

FINISH_ON_DRAIN = 0.9
"""Past this share of steps a draining worker finishes the job instead of handing it back."""
IDLE_POLL_MAX_S = 5.0
OUTAGE_PATIENCE_S = 120.0
"""How long a worker write waits out an unreachable database before the attempt is dropped
(its lease then runs out and the job resumes elsewhere from its checkpoint)."""

T = TypeVar("T")


def patiently(
    call: Callable[[], T],
    *,
    what: str,
    ctx: dict[str, object],
    stop: threading.Event | None = None,
    patience_s: float = OUTAGE_PATIENCE_S,
) -> T:
    """Repeats a store call while the database is unreachable (a restart or failover).

    Safe for the worker's writes: each is fenced by the lease token, so a repeat after a
    lost answer changes nothing or is refused with `LeaseLost`. `stop` ends the wait early.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            return call()
        except Unavailable as exc:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("%s: %s; retrying in %.1f s", what, exc.message, delay, extra=ctx)
            time.sleep(delay)
            delay = min(1.0, delay * 2)


class CancelledByUser(Exception):
    pass


class HandBack(Exception):
    """Checkpointed at a step boundary; the job goes back to the queue (drain or preempt)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Worker:
    """Serves one or more models on one accelerator: the model of the job in hand is on the
    device, the others are parked in host memory, and a job for one of them switches (the
    dispatcher decides when a switch pays). A context serving several models is for one
    worker: a switch moves weights that another worker of the context could be using."""

    def __init__(self, platform: WorkerContext, *, worker_id: str | None = None):
        self.platform = platform
        self.models = dict(platform.models)
        """What it serves; a model it fails to switch to leaves it."""
        self.loaded = next(iter(platform.models))
        """The model on the device."""
        self.label = "+".join(platform.models)
        """The models it serves, as its metrics name them."""
        self.id = worker_id or f"worker_{secrets.token_hex(6)}"
        self.stop = threading.Event()
        self._born = time.monotonic()
        self._busy_s = 0.0
        self._finisher: threading.Thread | None = None
        self._decoded = threading.Event()
        """Set once the finishing clip's frames are all read from its model (or its finish
        ended): its model may leave the device."""
        self._decoded.set()
        """The previous job's encode, output check and upload, while the next generates."""
        self.free_mark: int | None = None
        """The assignment mark from just before the last job left the GPU."""
        self._prefetch: _Prefetch | None = None
        self._claimed_ahead = False
        self._unanswered: str | None = None
        """The token of a claim whose answer was lost."""

    def run(self) -> None:
        p = self.platform
        for model in reversed(self.models.values()):  # the first one stays on the device
            model.load()
            if model.name != self.loaded:
                model.park()
        marker = marker_for(p.settings.resolved_database_url())
        marker.start()
        ctx: dict[str, object] = {"worker_id": self.id, "model": self.label}
        patiently(
            lambda: p.jobs.register_worker(
                self.id,
                self.loaded,
                socket.gethostname(),
                p.clock(),
                session_key=marker.key,
                holds=self.holds(),
            ),
            what="registering",
            ctx=ctx,
            stop=self.stop,
            patience_s=float("inf"),
        )
        p.bus.work_available(self.loaded)  # the dispatcher learns of a new worker
        log.info("worker ready", extra=ctx)
        idle_wait = p.settings.worker_poll_seconds
        ahead: list[list[_JobRun]] = []
        """Claimed jobs not run yet, each entry one run of the model (several jobs: a
        batch): the next, claimed and prepared during the last step of the one before, or
        the rest of a claim whose jobs cannot share a run."""
        try:
            while not self.stop.is_set():
                if not ahead:
                    mark = p.bus.assignment_mark(self.id)
                    try:
                        jobs = self._claim()
                    except Unavailable as exc:
                        log.warning("cannot claim work: %s", exc.message, extra=ctx)
                        self.stop.wait(idle_wait)
                        idle_wait = min(IDLE_POLL_MAX_S, idle_wait * 2)
                        continue
                    if not jobs:
                        # Woken at once by the bus; the growing timeout is only the fallback.
                        if p.bus.wait_for_assignment(self.id, idle_wait, since=mark):
                            idle_wait = p.settings.worker_poll_seconds
                        else:
                            idle_wait = min(IDLE_POLL_MAX_S, idle_wait * 2)
                        continue
                    ahead = self.batches(self.open_runs(jobs))
                    if not ahead:
                        continue
                runs = ahead.pop(0)
                self._claimed_ahead = bool(ahead)  # no hand-over while claimed jobs wait
                idle_wait = p.settings.worker_poll_seconds
                started = time.monotonic()
                try:
                    finishes = self.generate(runs)
                except Exception:  # one job's bookkeeping must not end the worker
                    log.exception("job bookkeeping failed", extra={**ctx, "job_id": runs[0].job.id})
                    finishes = []
                self._busy_s += time.monotonic() - started
                self._wait_for_finisher()  # one run's clips finishing: memory stays bounded
                if finishes:
                    self._finisher = threading.Thread(
                        target=_each,
                        args=(finishes,),
                        name=f"reelgen-finish-{runs[0].job.id}",
                        daemon=True,
                    )
                    self._finisher.start()
                p.metrics.worker_busy.labels(self.id, self.label).set(
                    self._busy_s / max(1e-9, time.monotonic() - self._born)
                )
                if ahead:
                    continue
                prefetched, ahead_mark = self._take_prefetched()
                if prefetched:
                    ahead = self.batches(prefetched)
                    self.free_mark = None
                    continue
                # Free again: the dispatcher looks, and its answer comes on the bus; claiming
                # before it came would only find nothing. The mark is from before the GPU
                # was said to be free (or the last step said to begin), so an answer that
                # came meanwhile is not waited for.
                mark = next(
                    m
                    for m in (ahead_mark, self.free_mark, p.bus.assignment_mark(self.id))
                    if m is not None
                )
                self.free_mark = None
                p.bus.work_available(self.loaded)
                p.bus.wait_for_assignment(self.id, idle_wait, since=mark)
        finally:
            left, _ = self._take_prefetched()
            for unstarted in [*(r for batch in ahead for r in batch), *left]:
                self._settle(unstarted, _shutting_down)  # back to the queue, not lost
            self._wait_for_finisher()
            try:
                p.jobs.stop_worker(self.id, p.clock())
            except Unavailable as exc:
                log.warning("could not record the stop: %s", exc.message, extra=ctx)
            marker.stop()
            p.bus.forget_worker(self.id)
            log.info("worker stopped", extra=ctx)

    def _claim(self) -> list[Job]:
        """The jobs assigned to this worker (several: a batch), if any. A claim whose answer
        was lost (the database went away after committing it) is found again by its token."""
        p = self.platform
        if self._unanswered is not None:
            found = p.jobs.leased_with(self.id, self._unanswered)
            self._unanswered = None
            if found:
                return found
        token = secrets.token_hex(16)
        self._unanswered = token
        jobs = p.jobs.claim(
            worker_id=self.id,
            now=p.clock(),
            lease_seconds=p.settings.lease_seconds,
            lease_token=token,
        )
        self._unanswered = None
        return jobs

    def open_runs(self, jobs: list[Job]) -> list[_JobRun]:
        """Attempts at claimed jobs, their leases kept from now on. A job that cannot be
        opened (no room for its files) is left: its lease runs out and it resumes elsewhere."""
        runs = []
        for job in jobs:
            try:
                run = _JobRun(self, job)
            except Exception:
                log.exception("could not start the job", extra={"job_id": job.id})
                continue
            self.platform.bus.add_progress_listener(run.keeper.on_bus)
            run.keeper.start()
            runs.append(run)
        return runs

    def batches(self, runs: list[_JobRun]) -> list[list[_JobRun]]:
        """Claimed jobs as runs of the model: together where the model batches them (fresh
        jobs of one batch key, as the dispatcher assigns them), else one by one."""
        return [runs] if self._share_a_run(runs) else [[run] for run in runs]

    def _share_a_run(self, runs: list[_JobRun]) -> bool:
        model = self.models.get(runs[0].job.model) if runs else None
        if len(runs) < 2 or not isinstance(model, BatchingModel):
            return False
        if any(r.job.model != model.name or r.job.checkpoint_key is not None for r in runs):
            return False
        try:
            keys = {model.batch_key(run.spec(model)) for run in runs}
        except Exception:  # its inputs are gone: alone, it fails as the error says
            return False
        return len(keys) == 1 and None not in keys

    def hand_over(self, run: _JobRun) -> None:
        """`run`'s last model step begins: the dispatcher hears that this worker is free
        for the next job, which is claimed and prepared on another thread meanwhile."""
        p = self.platform
        if (
            not p.settings.worker_prefetch
            or self._prefetch is not None
            or self._claimed_ahead
            or self.stop.is_set()
        ):
            return
        self._prefetch = _Prefetch(self, run, p.bus.assignment_mark(self.id))
        self._prefetch.thread.start()

    def _take_prefetched(self) -> tuple[list[_JobRun], int | None]:
        """The jobs the last hand-over claimed (none if none came yet: the prefetch stops
        looking) and the assignment mark from before the hand-over."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is None:
            return [], None
        return prefetch.take(), prefetch.mark

    def holds(self) -> tuple[str, ...]:
        """The models it serves, the one on the device first (as the store keeps them)."""
        return (self.loaded, *(name for name in self.models if name != self.loaded))

    def model_for(self, job: Job) -> VideoModel:
        """The job's model, on the device: switching parks the one there. The finishing
        clip's decode needs its model's VAE, so a switch waits until its frames are read.
        A switch that fails hands the job back, and the worker serves that model no more
        (its `holds` say so, and the dispatcher reads them again)."""
        p = self.platform
        ctx: dict[str, object] = {"job_id": job.id, "worker_id": self.id}
        model = self.models.get(job.model)
        if model is None:  # it stopped serving it, and the dispatcher has not seen that yet
            log.warning("given a job for %s, which it does not serve", job.model, extra=ctx)
            raise HandBack(ev.NOT_SERVED)
        if job.model == self.loaded:
            return model
        self._decoded.wait()  # the clip's encode, output check and upload go on
        began = time.monotonic()
        self.models[self.loaded].park()
        try:
            model.load()
        except Exception as exc:
            log.exception("could not switch to %s; no longer serving it", job.model, extra=ctx)
            del self.models[job.model]  # the worker goes on with what it had, without it
            try:
                self.models[self.loaded].load()
            except Exception:
                log.exception("could not load %s again either; stopping", self.loaded, extra=ctx)
                self.stop.set()  # drains: what it holds goes back to the queue
                raise HandBack(ev.SWITCH_FAILED) from exc
            holds = self.holds()
            try:
                patiently(lambda: p.jobs.report_holds(self.id, holds), what="reporting", ctx=ctx)
            except Unavailable as unreachable:
                log.warning("could not record it: %s", unreachable.message, extra=ctx)
            raise HandBack(ev.SWITCH_FAILED) from exc
        took = time.monotonic() - began
        p.metrics.model_switches.labels(self.loaded, job.model).inc()
        p.metrics.model_switch_seconds.observe(took)
        log.info("switched from %s to %s in %.2f s", self.loaded, job.model, took, extra=ctx)
        self.loaded = job.model
        holds = self.holds()
        try:
            patiently(lambda: p.jobs.report_holds(self.id, holds), what="reporting", ctx=ctx)
        except Unavailable as exc:  # the dispatcher's own view already has the switch
            log.warning("could not record the switch: %s", exc.message, extra=ctx)
        return model

    def generate(self, runs: list[_JobRun]) -> list[Callable[[], None]]:
        """The model's part of one run (one job, or a batch of them), on this thread: what
        holds the GPU. Returns what is left of each job that goes on (decode, encode, output
        check, upload, publish), to run on another thread while the next run generates."""
        if len(runs) > 1:
            return self._generate_batch(runs)
        run = runs[0]
        generated: list[tuple[Clip, bool]] = []

        def phase() -> None:
            generated.append(run.generate())
            self._gpu_free()
            run.left_gpu()

        if not self._settle(run, phase):
            return []
        clip, resumed = generated[0]
        decoded = self._finishing_clip(clip)
        return [lambda: self.finish(run, clip, resumed, decoded)]

    def _generate_batch(self, runs: list[_JobRun]) -> list[Callable[[], None]]:
        """Fresh jobs of one batch key in one run of the model. Each job's errors end that
        job alone, as they would end it running alone: a job cancelled, preempted or drained
        at a step leaves the run there (with its checkpoint) and the others go on."""
        began: list[tuple[_JobRun, GenerationSpec]] = []
        model: list[BatchingModel] = []

        def begin(run: _JobRun) -> None:
            chosen = self.worker_model(run)
            spec = run.spec(chosen)
            run.total = chosen.num_steps(spec)
            run.report(
                step=0,
                total=run.total,
                progress=generation_progress(0, run.total),
                stage=Stage.GENERATING,
                force=True,
            )
            began.append((run, spec))
            model[:] = [chosen]

        for run in runs:
            self._settle(run, functools.partial(begin, run))
        if not began:
            return []
        started = time.monotonic()
        left: set[str] = set()

        def leaves_at_once(run: _JobRun) -> StepCallback:
            """`run`'s step callback; a job it stops ends (cancelled, handed back) there
            and then, not when the rest of the batch does."""

            def on_step(info: StepInfo) -> None:
                try:
                    run.on_step(info)
                except Exception as exc:
                    run.model_seconds = (time.monotonic() - started) / len(began)
                    left.add(run.job.id)
                    self._settle(run, functools.partial(_reraise, exc))
                    raise

            return on_step

        try:
            outcomes = model[0].generate_batch(
                [spec for _, spec in began], [leaves_at_once(run) for run, _ in began]
            )
        except Exception as exc:  # the run itself failed: so did each of its jobs
            outcomes = [exc] * len(began)
        took = time.monotonic() - started
        clips: list[tuple[_JobRun, Clip]] = []

        def delivered(run: _JobRun, outcome: Clip | Exception) -> None:
            run.model_seconds = took / len(began)  # its share of the device's time
            if isinstance(outcome, Exception):
                raise outcome
            clips.append((run, outcome))

        for (run, _), outcome in zip(began, outcomes, strict=True):
            if run.job.id not in left:
                self._settle(run, functools.partial(delivered, run, outcome))
        if not clips:
            return []
        self._gpu_free()
        finishes: list[Callable[[], None]] = []
        for run, clip in clips:
            if self._settle(run, run.left_gpu):
                decoded = self._finishing_clip(clip)  # the last one's counts: in turn
                finishes.append(functools.partial(self.finish, run, clip, False, decoded))
        return finishes

    def _gpu_free(self) -> None:
        """A run's steps are done. At most one run's clips finish at a time (memory stays
        bounded): the GPU is free for the next run only once the previous clips are done."""
        self._wait_for_finisher()
        self.free_mark = self.platform.bus.assignment_mark(self.id)

    def _finishing_clip(self, clip: Clip) -> threading.Event:
        """`clip` is the one whose decode a model switch now waits for (the clips before it
        are done); returns the event its finish sets."""
        decoded = clip.decoded if clip.decoded is not None else threading.Event()
        self._decoded = decoded
        return decoded

    def worker_model(self, run: _JobRun) -> BatchingModel:
        """A batch's model, on the device (`model_for`); one that batches."""
        model = self.model_for(run.job)
        if not isinstance(model, BatchingModel):
            raise RuntimeError(f"{model.name} does not run jobs together")
        return model

    def finish(self, run: _JobRun, clip: Clip, resumed: bool, decoded: threading.Event) -> None:
        try:
            if self._settle(run, lambda: run.finish(clip, resumed, decoded), final=True):
                self._finished(run.job, Status.COMPLETED)
        finally:
            decoded.set()

    def _settle(self, run: _JobRun, phase: Callable[[], None], *, final: bool = False) -> bool:
        """Runs one phase of `run`; on an error ends the job as the error says. True if
        the phase completed (and, unless `final`, the job goes on). The run's listener, temp
        files and metric are released whatever happens, once it is over."""
        done = False
        try:
            done = self._run_phase(run, phase, final=final)
        except Exception:  # recording the outcome itself failed: the lease will expire
            log.exception(
                "could not record the job's outcome",
                extra={"job_id": run.job.id, "worker_id": self.id},
            )
        finally:
            if final or not done:
                self.platform.bus.remove_progress_listener(run.keeper.on_bus)
                run.cleanup()
                self.platform.metrics.gpu_seconds.labels(run.job.model).observe(run.model_seconds)
        return done

    def _run_phase(self, run: _JobRun, phase: Callable[[], None], *, final: bool) -> bool:
        job = run.job
        ctx = {"job_id": job.id, "attempt": job.attempt, "worker_id": self.id}
        done = False
        try:
            try:
                phase()
                done = True
            finally:
                if final or not done:
                    run.keeper.stop()  # before the attempt's last write
        except CancelledByUser:
            self._end(job, Status.CANCELLED, "cancelled", "The job was cancelled while running.")
        except OutputBlocked as blocked:
            names = ", ".join(f"{DESCRIPTIONS[c]} ({c.value})" for c in blocked.verdict.categories)
            self._end(
                job,
                Status.FAILED,
                "moderation_blocked",
                f"The generated video was blocked by content moderation: {names}.",
                refund=True,
            )
        except OutputUnchecked as unchecked:
            self._end(
                job,
                Status.FAILED,
                "moderation_unavailable",
                "The generated video could not be checked by content moderation "
                f"({unchecked.cause.name} did not answer), so it is not shown.",
                refund=True,
            )
        except HandBack as back:
            self._hand_back(job, back.reason)
        except LeaseLost:
            log.warning("lease lost; dropping this attempt's work", extra=ctx)
        except Unavailable as exc:
            # The database stayed away longer than a worker waits: the lease will expire
            # and the job resumes elsewhere from its checkpoint.
            log.warning("database unreachable (%s); dropping", exc.message, extra=ctx)
        except Exception as exc:
            log.exception("generation failed", extra=ctx)
            self._end(
                job, Status.FAILED, "generation_failed", f"Generation failed: {exc}", refund=True
            )
        return done

    def _wait_for_finisher(self) -> None:
        if self._finisher is not None:
            self._finisher.join()
            self._finisher = None

    def _hand_back(self, job: Job, reason: str) -> None:
        ctx = {"job_id": job.id, "attempt": job.attempt, "worker_id": self.id}
        try:
            patiently(
                lambda: self.platform.jobs.release(
                    job.id, _token(job), now=self.platform.clock(), reason=reason
                ),
                what="handing back",
                ctx=ctx,
            )
        except (LeaseLost, Unavailable) as exc:
            log.warning("could not hand the job back (%s); its lease will expire", exc, extra=ctx)
            return
        log.info("job handed back (%s)", reason, extra=ctx)

    def _end(
        self, job: Job, status: Status, code: str, message: str, *, refund: bool = False
    ) -> None:
        ctx = {"job_id": job.id, "attempt": job.attempt, "worker_id": self.id}
        try:
            patiently(
                lambda: self.platform.jobs.finish(
                    job.id,
                    _token(job),
                    status=status,
                    code=code,
                    message=message,
                    now=self.platform.clock(),
                    refund=refund,
                ),
                what=f"recording {status.value}",
                ctx=ctx,
            )
        except (LeaseLost, Unavailable) as exc:
            log.warning("could not record %s (%s)", status.value, exc, extra=ctx)
            return
        self.platform.objects.delete_prefix(keys.checkpoints_prefix(job.id))
        self._finished(job, status)

    def _finished(self, job: Job, status: Status) -> None:
        self.platform.metrics.jobs_finished.labels(job.model, status.value).inc()
        self.platform.bus.publish_progress(
            {"id": job.id, "status": status.value, "stage": Stage.DONE.value, "final": True}
        )


def _shutting_down() -> None:
    raise HandBack(ev.SHUTDOWN)


def _reraise(error: Exception) -> None:
    raise error


def _each(calls: list[Callable[[], None]]) -> None:
    """One run's finishing jobs in turn (each settles its own errors)."""
    for call in calls:
        call()


PREFETCH_WAIT_S = 60.0
"""The longest a hand-over waits for the dispatcher's answer (it stops once the GPU is free)."""


class _Prefetch:
    """The next job, claimed and prepared while the current one's last step runs. Taken by
    the worker's loop once the GPU is free; a claim already under way is waited for, one
    not begun is given up (the loop claims instead), so only one of the two ever claims."""

    def __init__(self, worker: Worker, finishing: _JobRun, mark: int):
        self.worker, self.finishing, self.mark = worker, finishing, mark
        self._lock = threading.Lock()
        self._given_up = False
        self._claiming = False
        self.runs: list[_JobRun] = []
        self.thread = threading.Thread(
            target=self._fetch, name=f"reelgen-prefetch-{worker.id}", daemon=True
        )

    def _fetch(self) -> None:
        """Says the job is finishing (off the step loop: a write costs the device time
        there), then waits for the next assignment, claims and prepares it."""
        worker, p, run = self.worker, self.worker.platform, self.finishing
        if self._given_up:  # the step ended first
            return
        try:
            p.jobs.finishing(run.job.id, run.token, worker_id=worker.id, now=p.clock())
        except (LeaseLost, Unavailable) as exc:  # the step's own checks deal with it
            log.warning("could not say the job is finishing (%s)", exc, extra=run.log_ctx)
            return
        p.bus.work_available(worker.loaded)
        ctx = {"worker_id": worker.id}
        mark = self.mark
        while True:  # until a job is claimed, the GPU is free, or nothing comes
            named = p.bus.wait_for_assignment(worker.id, PREFETCH_WAIT_S, mark)
            with self._lock:
                if self._given_up or not named or worker.stop.is_set():
                    return
                self._claiming = True
            mark = p.bus.assignment_mark(worker.id)  # a naming during the claim wakes the next
            jobs: list[Job] = []
            try:
                jobs = worker._claim()
            except Unavailable as exc:  # the token finds a claim whose answer was lost
                log.warning("cannot claim the next job ahead: %s", exc.message, extra=ctx)
            except Exception:
                log.exception("claiming the next job ahead failed", extra=ctx)
                return
            if jobs:
                break
            with self._lock:
                self._claiming = False
                if self._given_up:  # `take` may be waiting for this claim's end
                    return
        self.runs = worker.open_runs(jobs)
        p.metrics.prefetched.inc(len(self.runs))
        for ahead in self.runs:
            try:
                ahead.prepare()
            except Exception:  # preparing again on the worker's thread ends the job as it says
                log.warning("could not prepare the job ahead", exc_info=True, extra=ahead.log_ctx)

    def take(self) -> list[_JobRun]:
        with self._lock:
            self._given_up = True
            claiming = self._claiming
        if claiming:
            self.thread.join()
        return self.runs


class OutputBlocked(Exception):
    def __init__(self, verdict: Verdict):
        super().__init__(verdict.action.value)
        self.verdict = verdict


class OutputUnchecked(Exception):
    """A classifier the deployment requires did not answer: the clip stays in quarantine."""

    def __init__(self, cause: ClassifierUnavailable):
        super().__init__(str(cause))
        self.cause = cause


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _token(job: Job) -> str:
    assert job.lease_token is not None
    return job.lease_token


class LeaseKeeper:
    """Renews one attempt's lease on its own thread, every `heartbeat_seconds`, whatever the
    model is doing: loading, a denoising step longer than the lease, a checkpoint write,
    encoding or an upload. The attempt reads what it learnt (cancel, preempt, lease lost) at
    its next step boundary."""

    def __init__(self, run: _JobRun):
        self.run = run
        self.cancelled = threading.Event()
        self.preempt = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name=f"lease-{run.job.id[-8:]}", daemon=True
        )
        self.state: tuple[int, int, int, Stage] = (0, 0, 0, run.job.stage)
        """(step, total, progress, stage) as last reported by the attempt."""
        self._stage_pending = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Before the attempt's last write (complete, finish, release); idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def on_bus(self, update: dict[str, object]) -> None:
        if update.get("id") == self.run.job.id and update.get("cancel_requested"):
            self.cancelled.set()

    def beat(self, *, stage_changed: bool = False) -> None:
        """One renewal now; raises `LeaseLost` when the lease is gone and `Unavailable`
        when the database cannot be reached (a stage change is then written by the next
        renewal that gets through)."""
        p = self.run.p
        step, total, progress, stage = self.state
        with self._lock:
            if self.lost.is_set():
                raise LeaseLost(f"Lease on {self.run.job.id} is no longer held by this worker.")
            self._stage_pending = self._stage_pending or stage_changed
            try:
                flags = p.jobs.heartbeat(
                    self.run.job.id,
                    self.run.token,
                    now=p.clock(),
                    lease_seconds=p.settings.lease_seconds,
                    step=step,
                    total_steps=total,
                    progress=progress,
                    stage=stage,
                    stage_changed=self._stage_pending,
                )
            except LeaseLost:
                self.lost.set()
                raise
            self._stage_pending = False
        self._learn(flags)

    def _learn(self, flags: WorkerFlags) -> None:
        if flags.cancel_requested:
            self.cancelled.set()
        if flags.preempt_requested:
            self.preempt.set()

    def _loop(self) -> None:
        interval = self.run.p.settings.heartbeat_seconds
        while not self._stop.wait(interval):
            try:
                self.beat()
            except LeaseLost:
                if not self._stop.is_set():
                    log.warning("lease lost", extra=self.run.log_ctx)
                return
            except Unavailable as exc:
                # The database may be restarting: keep trying. The fence decides afterwards
                # whether the lease survived the outage.
                log.warning(
                    "lease renewal failed (%s); retrying", exc.message, extra=self.run.log_ctx
                )
            except Exception:
                log.exception("lease renewal failed; retrying", extra=self.run.log_ctx)


@dataclasses.dataclass(frozen=True, slots=True)
class _Inputs:
    """What a job's spec is made from, read from storage (`_JobRun.prepare`)."""

    ready: bool
    image: bytes | None = None
    source: Path | None = None
    """A local copy of the video an edit changes or an extension continues."""
    ending: Ending | None = None
    source_seconds: int = 0
    """An extension's: the length of the video it continues, in seconds."""


class _JobRun:
    """The state of one attempt at one job."""

    def __init__(self, worker: Worker, job: Job):
        self.worker = worker
        self.p = worker.platform
        self.job = job
        self.token = _token(job)
        self.keeper = LeaseKeeper(self)
        self.last_publish = 0.0
        self.last_published: tuple[int, str] | None = None
        self.model_seconds = 0.0
        self.reported_stage = job.stage
        self.total = 0
        """The job's step count, known once generation begins."""
        self.last_step = -1
        self.inputs = _Inputs(False)
        self.checkpoint_key = job.checkpoint_key
        self.log_ctx = {"job_id": job.id, "attempt": job.attempt, "worker_id": worker.id}
        root = self.p.settings.data_dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{job.id}-", dir=root))

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def report(self, *, step: int, total: int, progress: int, stage: Stage, force: bool) -> None:
        """Hands progress to the lease keeper, renews at once on a stage change or when
        `force`d, and publishes progress to the bus at most once per interval."""
        now = self.p.clock()
        stage_changed = stage is not self.reported_stage
        self.keeper.state = (step, total, progress, stage)
        if force or stage_changed:
            self.reported_stage = stage
            try:
                self.keeper.beat(stage_changed=stage_changed)
            except Unavailable as exc:  # the keeper goes on renewing on its own schedule
                log.warning("renewal failed (%s); carrying on", exc.message, extra=self.log_ctx)
        self.check()
        state = (progress, stage.value)
        interval = self.p.settings.progress_interval_seconds
        if state != self.last_published and (force or now - self.last_publish >= interval):
            self.last_publish, self.last_published = now, state
            self.p.bus.publish_progress(
                {
                    "id": self.job.id,
                    "status": Status.IN_PROGRESS.value,
                    "stage": stage.value,
                    "progress": progress,
                }
            )

    def check(self) -> None:
        """What the keeper learnt since the last step boundary."""
        if self.keeper.lost.is_set():
            raise LeaseLost(f"Lease on {self.job.id} is no longer held by this worker.")
        if self.keeper.cancelled.is_set():
            raise CancelledByUser

    def spec(self, model: VideoModel) -> GenerationSpec:
        """What the model makes: the job's clip; for an extension only its new part,
        conditioned on the end of the video it continues (its last frames for a model that
        takes them, else its last frame); for an edit, the job's clip from the video it
        changes."""
        run_id = f"{self.job.id}:{self.token}"  # unique per claim (a handed-back job's
        # next claim reuses its attempt number)
        self.prepare()
        operation = self.job.spec.operation
        if operation is Operation.EXTEND:
            return self._extension_spec(run_id, Conditioning.CLIP in model.accepts)
        if operation is Operation.EDIT:
            spec = GenerationSpec.of(self.job.spec, run_id=run_id)
            return dataclasses.replace(spec, source_video=self.inputs.source)
        return GenerationSpec.of(self.job.spec, self.inputs.image, run_id=run_id)

    def prepare(self) -> None:
        """Reads the job's inputs from storage (its reference image, or the video an edit
        changes or an extension continues, with that video's end): no model needed, so a
        hand-over does it while the job before still holds the GPU."""
        if self.inputs.ready:
            return
        operation = self.job.spec.operation
        if operation in (Operation.EXTEND, Operation.EDIT):
            source = self._fetch_source()
            if operation is Operation.EXTEND:
                parent_id = self.job.spec.parent_id
                parent = self.p.jobs.get(parent_id) if parent_id is not None else None
                end = ending(source)
                seconds = parent.spec.seconds if parent is not None else end.seconds
                self.inputs = _Inputs(True, source=source, ending=end, source_seconds=seconds)
            else:
                self.inputs = _Inputs(True, source=source)
        else:
            key = self.job.spec.reference_key
            self.inputs = _Inputs(True, image=self.p.objects.get(key) if key else None)

    def _fetch_source(self) -> Path:
        """A local copy of the video an extension continues or an edit changes: a completed
        video of ours, or the one uploaded with the request (kept with the job's inputs)."""
        parent_id = self.job.spec.parent_id
        if parent_id is not None:
            parent = self.p.jobs.get(parent_id)
            key = parent.video_key if parent is not None else None
            what = parent_id
        else:
            key, what = keys.source_video(self.job.id), "the uploaded video"
        if key is None or not self.p.objects.exists(key):
            raise RuntimeError(f"the source video ({what}) is no longer available")
        path = self.tmp / "source.mp4"
        path.write_bytes(self.p.objects.get(key))
        return path

    def _extension_spec(self, run_id: str, clip: bool) -> GenerationSpec:
        inputs = self.inputs
        path, end, seconds = inputs.source, inputs.ending, inputs.source_seconds
        assert path is not None and end is not None
        new_part = self.job.spec.seconds - seconds
        if clip:
            spec = GenerationSpec.of(self.job.spec, run_id=run_id)
            return dataclasses.replace(
                spec, seconds=new_part, context_video=path, context_seconds=seconds
            )
        spec = GenerationSpec.of(self.job.spec, end.png(), run_id=run_id)
        return dataclasses.replace(spec, seconds=new_part)

    def _stitched(self, clip: Clip) -> Clip:
        """An extension's source video's frames and sound, then the new part's."""
        path, seconds = self.inputs.source, self.inputs.source_seconds
        if self.job.spec.operation is not Operation.EXTEND or path is None:
            return clip
        spec = self.job.spec
        head = read_frames(path, spec.width, spec.height, seconds * spec.fps, fps=spec.fps)
        audio = read_audio(path, seconds * clip.sample_rate, clip.sample_rate)
        tail = clip.audio if clip.audio.shape[0] == 2 else np.repeat(clip.audio[:1], 2, axis=0)
        return Clip(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            num_frames=spec.num_frames,
            frames=itertools.chain(head, clip.frames),
            audio=np.concatenate([audio, tail.astype(np.float32)], axis=1),
            sample_rate=clip.sample_rate,
            decoded=clip.decoded,
        )

    def on_step(self, info: StepInfo) -> None:
        """At a step boundary; a model that waits on a service calls it again with the same
        step while nothing moves, for the cancel, preempt and drain checks."""
        self.check()
        progress = generation_progress(info.step, info.total)
        new_step, self.last_step = info.step != self.last_step, info.step
        checkpoint = (
            new_step
            and info.snapshot is not None
            and info.step % self.p.settings.checkpoint_every_steps == 0
        )
        self.report(
            step=info.step,
            total=info.total,
            progress=progress,
            stage=Stage.GENERATING,
            force=checkpoint,
        )
        reason = None
        if self.keeper.preempt.is_set() and info.step < info.total:
            reason = ev.PREEMPTED
        elif self.worker.stop.is_set() and info.step < FINISH_ON_DRAIN * info.total:
            reason = ev.SHUTDOWN
        if (checkpoint or reason) and info.snapshot is not None and info.step < info.total:
            self.save_checkpoint(info)
        if reason:
            raise HandBack(reason)
        if new_step and info.step == info.total - 1:
            self.worker.hand_over(self)

    def save_checkpoint(self, info: StepInfo) -> None:
        assert info.snapshot is not None
        key = keys.checkpoint(self.job.id, self.job.attempt, info.step)
        self.p.objects.put(key, info.snapshot())
        patiently(
            lambda: self.p.jobs.save_checkpoint(
                self.job.id, self.token, step=info.step, key=key, now=self.p.clock()
            ),
            what="checkpointing",
            ctx=self.log_ctx,
        )
        if self.checkpoint_key is not None and self.checkpoint_key != key:
            self.p.objects.delete(self.checkpoint_key)
        self.checkpoint_key = key

    def _generate(self, model: VideoModel, spec: GenerationSpec) -> tuple[Clip, bool]:
        resume = None
        if self.job.checkpoint_key is not None and self.p.objects.exists(self.job.checkpoint_key):
            resume = self.p.objects.get(self.job.checkpoint_key)
            log.info("resuming after step %s", self.job.checkpoint_step, extra=self.log_ctx)
        started = time.monotonic()
        try:
            return model.generate(spec, self.on_step, resume_from=resume), resume is not None
        except ValueError:
            if resume is None:
                raise
            log.warning("checkpoint does not match the job; starting over", extra=self.log_ctx)
            return model.generate(spec, self.on_step, resume_from=None), False
        finally:
            self.model_seconds = time.monotonic() - started

    def generate(self) -> tuple[Clip, bool]:
        """The model's steps (from the checkpoint when there is one)."""
        model = self.worker.model_for(self.job)
        spec = self.spec(model)
        self.total = model.num_steps(spec)
        start_step = self.job.checkpoint_step if self.job.checkpoint_key else 0
        self.report(
            step=start_step,
            total=self.total,
            progress=generation_progress(start_step, self.total),
            stage=Stage.GENERATING,
            force=True,
        )
        return self._generate(model, spec)

    def left_gpu(self) -> None:
        """The stage change tells the dispatcher that the GPU is free; the lease stays held."""
        self.report(
            step=self.total,
            total=self.total,
            progress=GENERATING_SHARE,
            stage=Stage.ENCODING,
            force=True,
        )

    def finish(self, clip: Clip, resumed: bool, decoded: threading.Event) -> None:
        """Decode and encode, the output check, upload, publish: off the GPU. `decoded` is
        set once every frame is read from the model."""
        total = self.total
        start_step = self.job.checkpoint_step if self.job.checkpoint_key else 0
        first_step = start_step + 1 if resumed else 1
        clip = self._stitched(clip)
        sampler = FrameSampler(clip.fps)
        frames = self._encoding_frames(clip.frames, clip.num_frames, total, decoded)
        clip.frames = sampler.tee(frames)
        media = encode_clip(clip, self.tmp / "video.mp4")
        self.report(step=total, total=total, progress=96, stage=Stage.MODERATING_OUTPUT, force=True)
        self._moderate(sampler, clip, media.video_path)
        signed = self.tmp / "video.signed.mp4"
        self.p.provenance.sign(
            media.video_path,
            signed,
            model=self.job.spec.requested_model,
            model_version=self.job.model,
        )
        self.report(step=total, total=total, progress=97, stage=Stage.UPLOADING, force=True)
        job_id, attempt = self.job.id, self.job.attempt
        out = {v: keys.output(job_id, attempt, v) for v in Variant}
        bodies: dict[Variant, Body] = {
            Variant.VIDEO: signed,
            Variant.THUMBNAIL: media.thumbnail,
            Variant.SPRITESHEET: media.spritesheet,
        }
        for variant, body in bodies.items():
            self.p.objects.put(out[variant], body, content_type=VARIANT_MEDIA_TYPES[variant])
        self.keeper.stop()  # the last renewal is done; completion ends the lease
        now = self.p.clock()
        try:
            patiently(
                lambda: self.p.jobs.complete(
                    self.job.id,
                    self.token,
                    now=now,
                    expires_at=now + self.p.settings.retention_seconds(self.job.tier),
                    first_step=first_step,
                    video_key=out[Variant.VIDEO],
                    thumbnail_key=out[Variant.THUMBNAIL],
                    spritesheet_key=out[Variant.SPRITESHEET],
                ),
                what="publishing",
                ctx=self.log_ctx,
            )
        except LeaseLost:
            if not self._published(out[Variant.VIDEO]):
                self.p.objects.delete_prefix(keys.outputs_prefix(job_id, attempt))
                raise
        self.p.objects.delete_prefix(keys.checkpoints_prefix(job_id))
        log.info("completed", extra=self.log_ctx)

    def _moderate(self, sampler: FrameSampler, clip: Clip, video: Path) -> None:
        """Checks the encoded clip before anything of it is stored where it can be seen; a
        blocked (or doubtful) clip goes to quarantine and the job fails."""
        unanswered: ClassifierUnavailable | None = None
        try:
            verdict = self.p.output_moderator.check(
                sampler.samples,
                clip.audio,
                clip.sample_rate,
                prompt=self.job.spec.prompt,
                consent=self.job.likeness_consent,
                adult=self.job.age_verified,
            )
        except ClassifierUnavailable as exc:
            unanswered = exc
            verdict = self.p.output_moderator.unanswered(exc)
        digest = _sha256(video)
        quarantine = None
        if verdict.action is not Action.ALLOW:
            quarantine = keys.quarantine(self.job.id, self.job.attempt)
            self.p.objects.put(quarantine, video, content_type="video/mp4")
        self.p.audit.record(
            [
                {
                    **verdict.audit_columns(),
                    "at": self.p.clock(),
                    "job_id": self.job.id,
                    "user_id": self.job.user_id,
                    "content_sha256": digest,
                    "prompt": None,
                    "quarantine_key": quarantine,
                }
            ]
        )
        if unanswered is not None:
            log.warning("output moderation unavailable: %s", unanswered, extra=self.log_ctx)
            raise OutputUnchecked(unanswered)
        if quarantine is not None:
            log.warning("output blocked by moderation", extra=self.log_ctx)
            raise OutputBlocked(verdict)

    def _published(self, video_key: str) -> bool:
        """Whether an earlier try of `complete` committed although its answer was lost."""
        job = patiently(lambda: self.p.jobs.get(self.job.id), what="checking", ctx=self.log_ctx)
        return job is not None and job.status is Status.COMPLETED and job.video_key == video_key

    def _encoding_frames(
        self, frames: Iterator[np.ndarray], count: int, total: int, decoded: threading.Event
    ) -> Iterator[np.ndarray]:
        share = 95 - GENERATING_SHARE
        for i, frame in enumerate(frames):
            self.report(
                step=total,
                total=total,
                progress=GENERATING_SHARE + share * i // max(1, count),
                stage=Stage.ENCODING,
                force=False,
            )
            yield frame
        decoded.set()  # the model made its last frame
