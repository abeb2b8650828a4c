"""Where queued jobs stand, answered from memory instead of a scan per request.

Counting the jobs ahead of one costs a scan of the queue ahead of it; every poll of a
queued video and every submit asks. Each API process keeps instead, per model, the queue's
ranks and estimated seconds, sorted, with running sums, read again every `REFRESH_S` in the
background: a position is then a binary search. Jobs this process accepts are added at
once, so a client's second submit counts its first; jobs other replicas accepted, and jobs
that started, show up within `REFRESH_S`. Positions past `MAX_ROWS` are counted exactly.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from dataclasses import dataclass

from reelgen.domain.jobs import Job
from reelgen.store.jobs import JobStore, QueueRows, QueueStats

REFRESH_S = 1.0
MAX_ROWS = 50_000


@dataclass(slots=True)
class _ModelQueue:
    ranks: list[float]
    seconds_before: list[float]
    """seconds_before[i]: estimated seconds of the first i queued jobs."""
    complete: bool
    running_seconds: float
    live_workers: int

    @classmethod
    def of(cls, rows: QueueRows) -> _ModelQueue:
        return cls(
            ranks=[r for r, _ in rows.ranked],
            seconds_before=[0.0, *itertools.accumulate(s for _, s in rows.ranked)],
            complete=rows.complete,
            running_seconds=rows.running_seconds,
            live_workers=rows.live_workers,
        )

    def stats(self, rank_at: float) -> QueueStats | None:
        ahead = bisect.bisect_left(self.ranks, rank_at)
        if ahead == len(self.ranks) and not self.complete:
            return None  # behind the part held in memory
        ahead_s = self.seconds_before[ahead] + self.running_seconds
        return QueueStats(ahead, ahead_s, self.live_workers)

    def add(self, rank_at: float, seconds: float) -> None:
        at = bisect.bisect_left(self.ranks, rank_at)
        if at < len(self.ranks) and self.ranks[at] == rank_at:
            return  # already read from the database
        if at == len(self.ranks) and not self.complete:
            return  # behind the part held; such positions are counted exactly
        self.ranks.insert(at, rank_at)
        self.seconds_before.insert(at + 1, self.seconds_before[at])
        for i in range(at + 1, len(self.seconds_before)):
            self.seconds_before[i] += seconds


class QueueBoard:
    def __init__(self, models: list[str]):
        self.models = models
        self._queues: dict[str, _ModelQueue] = {}
        self._added_during: list[Job] | None = None
        """Jobs accepted while a refresh reads; None when none is reading."""
        self._lock = threading.Lock()

    def refresh(self, jobs: JobStore, now: float) -> None:
        with self._lock:
            self._added_during = []
        fresh = {m: _ModelQueue.of(jobs.queue_rows(m, now, MAX_ROWS)) for m in self.models}
        with self._lock:
            for job in self._added_during:  # accepted while the rows were read
                fresh[job.model].add(job.rank_at, job.estimated_seconds)
            self._queues, self._added_during = fresh, None

    def add(self, job: Job) -> None:
        """A job this process has just accepted."""
        with self._lock:
            queue = self._queues.get(job.model)
            if queue is not None:
                queue.add(job.rank_at, job.estimated_seconds)
            if self._added_during is not None and job.model in self.models:
                self._added_during.append(job)

    def stats(self, job: Job) -> QueueStats | None:
        """The job's place as of the last refresh and this process's own submits since;
        None when it must be counted exactly."""
        with self._lock:
            queue = self._queues.get(job.model)
            return None if queue is None else queue.stats(job.rank_at)
