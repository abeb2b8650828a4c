"""A worker: claim a job, run the model step by step, encode, upload, publish.

It talks to the store and object storage only, never to the API. Every write about a job
carries the lease token, so a worker that lost its lease cannot overwrite the next one.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from reelgen.domain.errors import LeaseLost
from reelgen.domain.jobs import GENERATING_SHARE, Job, Stage, Status, generation_progress
from reelgen.media.encode import encode_clip
from reelgen.models.base import GenerationSpec, StepInfo
from reelgen.platform import Platform

log = logging.getLogger("reelgen.worker")

DAY_S = 86_400


class CancelledByUser(Exception):
    pass


class Drained(Exception):
    """The worker is shutting down; the job goes back to the queue from its checkpoint."""


class Worker:
    def __init__(self, platform: Platform, *, model_name: str, worker_id: str | None = None):
        self.platform = platform
        self.model_name = model_name
        self.id = worker_id or f"worker_{secrets.token_hex(6)}"
        self.stop = threading.Event()

    def run(self) -> None:
        p = self.platform
        model = p.model(self.model_name)
        model.load()
        p.jobs.register_worker(self.id, self.model_name, socket.gethostname(), p.clock())
        log.info("worker %s ready for model %s", self.id, self.model_name)
        try:
            while not self.stop.is_set():
                job = p.jobs.claim(
                    worker_id=self.id,
                    model=self.model_name,
                    now=p.clock(),
                    lease_seconds=p.settings.lease_seconds,
                    lease_token=secrets.token_hex(16),
                )
                if job is None:
                    p.jobs.touch_worker(self.id, p.clock(), None)
                    p.wait_for_work(p.settings.worker_poll_seconds)
                    continue
                self.process(job)
        finally:
            p.jobs.stop_worker(self.id, p.clock())
            log.info("worker %s stopped", self.id)

    def process(self, job: Job) -> None:
        run = _JobRun(self, job)
        try:
            run.execute()
        except CancelledByUser:
            self._end(job, Status.CANCELLED, "cancelled", "The job was cancelled while running.")
        except Drained:
            self.platform.jobs.release(
                job.id, _token(job), now=self.platform.clock(), reason="worker_shutdown"
            )
            log.info("job %s attempt %s released at shutdown", job.id, job.attempt)
        except LeaseLost:
            log.warning("job %s attempt %s: lease lost, dropping the work", job.id, job.attempt)
        except Exception as exc:
            log.exception("job %s attempt %s failed", job.id, job.attempt)
            self._end(job, Status.FAILED, "generation_failed", f"Generation failed: {exc}")
        finally:
            self.platform.take_cancel(job.id)
            run.cleanup()

    def _end(self, job: Job, status: Status, code: str, message: str) -> None:
        try:
            self.platform.jobs.finish(
                job.id,
                _token(job),
                status=status,
                code=code,
                message=message,
                now=self.platform.clock(),
            )
        except LeaseLost:
            log.warning("job %s: lease lost before recording %s", job.id, status.value)
        self.platform.objects.delete_prefix(f"checkpoints/{job.id}")


def _token(job: Job) -> str:
    assert job.lease_token is not None
    return job.lease_token


class _JobRun:
    """The state of one attempt at one job."""

    def __init__(self, worker: Worker, job: Job):
        self.worker = worker
        self.p = worker.platform
        self.job = job
        self.token = _token(job)
        self.last_beat = 0.0
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{job.id}-", dir=self._tmp_root()))

    def _tmp_root(self) -> Path:
        root = self.p.settings.data_dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def beat(self, *, step: int, total: int, progress: int, stage: Stage, force: bool) -> None:
        now = self.p.clock()
        if not force and now - self.last_beat < self.p.settings.heartbeat_seconds:
            return
        self.last_beat = now
        flags = self.p.jobs.heartbeat(
            self.job.id,
            self.token,
            now=now,
            lease_seconds=self.p.settings.lease_seconds,
            step=step,
            total_steps=total,
            progress=progress,
            stage=stage,
        )
        if flags.cancel_requested:
            raise CancelledByUser

    def spec(self) -> GenerationSpec:
        j = self.job
        image = self.p.objects.get_bytes(j.reference_key) if j.reference_key else None
        return GenerationSpec(
            prompt=j.prompt,
            seconds=j.seconds,
            width=j.width,
            height=j.height,
            seed=j.seed,
            style=j.style,
            reference_image=image,
        )

    def on_step(self, info: StepInfo) -> None:
        if self.p.take_cancel(self.job.id):
            raise CancelledByUser
        progress = generation_progress(info.step, info.total)
        checkpoint = info.step % self.p.settings.checkpoint_every_steps == 0
        draining = self.worker.stop.is_set() and info.step < info.total
        if (checkpoint or draining) and info.step < info.total:
            self.save_checkpoint(info)
        self.beat(
            step=info.step,
            total=info.total,
            progress=progress,
            stage=Stage.GENERATING,
            force=checkpoint,
        )
        if draining:
            raise Drained

    def save_checkpoint(self, info: StepInfo) -> None:
        key = f"checkpoints/{self.job.id}/a{self.job.attempt}-step{info.step:05d}"
        self.p.objects.put_bytes(key, info.snapshot())
        old = self.p.jobs.save_checkpoint(
            self.job.id, self.token, step=info.step, key=key, now=self.p.clock()
        )
        if old is not None:
            self.p.objects.delete(old)

    def execute(self) -> None:
        model = self.p.model(self.job.model)
        spec = self.spec()
        resume = None
        if self.job.checkpoint_key is not None and self.p.objects.exists(self.job.checkpoint_key):
            resume = self.p.objects.get_bytes(self.job.checkpoint_key)
            log.info(
                "job %s attempt %s resumes after step %s",
                self.job.id,
                self.job.attempt,
                self.job.checkpoint_step,
            )
        self.beat(
            step=self.job.checkpoint_step,
            total=model.num_steps(spec),
            progress=generation_progress(self.job.checkpoint_step, model.num_steps(spec)),
            stage=Stage.GENERATING,
            force=True,
        )
        try:
            clip = model.generate(spec, self.on_step, resume_from=resume)
        except ValueError:
            if resume is None:
                raise
            log.warning("job %s: checkpoint does not match, starting over", self.job.id)
            clip = model.generate(spec, self.on_step, resume_from=None)
        total = model.num_steps(spec)
        self.beat(
            step=total, total=total, progress=GENERATING_SHARE, stage=Stage.ENCODING, force=True
        )
        clip.frames = self._encoding_frames(clip.frames, clip.num_frames, total)
        media = encode_clip(clip, self.tmp / "video.mp4")
        self.beat(step=total, total=total, progress=97, stage=Stage.UPLOADING, force=True)
        prefix = f"videos/{self.job.id}/a{self.job.attempt}"
        keys = dict(
            video_key=f"{prefix}/video.mp4",
            thumbnail_key=f"{prefix}/thumbnail.webp",
            spritesheet_key=f"{prefix}/spritesheet.jpg",
        )
        self.p.objects.put_file(keys["video_key"], media.video_path)
        self.p.objects.put_bytes(keys["thumbnail_key"], media.thumbnail)
        self.p.objects.put_bytes(keys["spritesheet_key"], media.spritesheet)
        now = self.p.clock()
        try:
            self.p.jobs.complete(
                self.job.id,
                self.token,
                now=now,
                expires_at=now + self.p.settings.retention_days * DAY_S,
                **keys,
            )
        except LeaseLost:
            self.p.objects.delete_prefix(prefix)
            raise
        self.p.objects.delete_prefix(f"checkpoints/{self.job.id}")
        log.info("job %s attempt %s completed", self.job.id, self.job.attempt)

    def _encoding_frames(
        self, frames: Iterator[np.ndarray], count: int, total: int
    ) -> Iterator[np.ndarray]:
        share = 95 - GENERATING_SHARE
        for i, frame in enumerate(frames):
            self.beat(
                step=total,
                total=total,
                progress=GENERATING_SHARE + share * i // max(1, count),
                stage=Stage.ENCODING,
                force=False,
            )
            yield frame
