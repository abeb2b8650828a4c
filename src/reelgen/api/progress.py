"""Fans job progress out to SSE streams without a query per stream.

Updates arrive from the bus (workers publish about once a second per job; across
processes through PostgreSQL NOTIFY) and from one batched read of every watched job per
`poll_s`, which catches what the bus cannot carry (SQLite across processes, cancels and
requeues decided elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from reelgen.api.deps import run_sync
from reelgen.domain.errors import Unavailable
from reelgen.platform import Platform

log = logging.getLogger("reelgen.api.progress")

Update = dict[str, Any]


class ProgressHub:
    def __init__(self, platform: Platform, poll_s: float = 2.0):
        self.platform = platform
        self.poll_s = poll_s
        self._subs: dict[str, set[asyncio.Queue[Update]]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.platform.bus.add_progress_listener(self._from_bus)
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        self.platform.bus.remove_progress_listener(self._from_bus)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, job_id: str) -> asyncio.Queue[Update]:
        queue: asyncio.Queue[Update] = asyncio.Queue()
        self._subs[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[Update]) -> None:
        subs = self._subs.get(job_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subs[job_id]

    def _from_bus(self, update: Update) -> None:
        """Called on the bus's thread."""
        if self._loop is not None and update.get("id") in self._subs:
            self._loop.call_soon_threadsafe(self._dispatch, update)

    def _dispatch(self, update: Update) -> None:
        for queue in self._subs.get(update["id"], ()):
            queue.put_nowait(update)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            ids = list(self._subs)
            if not ids:
                continue
            try:
                rows = await run_sync(self.platform, self.platform.jobs.job_states, ids)
            except Unavailable as exc:  # streams stay open; the next poll catches up
                log.warning("progress poll skipped: %s", exc.message)
                continue
            except Exception:
                log.exception("progress poll failed")
                continue
            for job_id, status, stage, progress in rows:
                self._dispatch(
                    {"id": job_id, "status": status, "stage": stage, "progress": progress}
                )
