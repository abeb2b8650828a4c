"""Fans job changes out to SSE streams without a query per stream.

Two sources, one per kind of change:
- the event log, read through a cursor (`JobStore.read_events`): every state change of a
  job (started, stage, completed, failed, cancelled, requeued...) is an event written in
  the transaction that made it, so none is missed, whichever process made it;
- the bus, for progress within a stage: workers publish it about once a second per job
  (across processes through PostgreSQL NOTIFY); progress is not an event.

While anyone is watching, one page of events is read per `poll_s` for the whole process.
The hub keeps no history: a stream starts from the job as it is when it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

from reelgen.api.deps import run_sync
from reelgen.domain.errors import Unavailable
from reelgen.domain.events import EventCursor
from reelgen.platform import ApiContext

log = logging.getLogger("reelgen.api.progress")

Update = dict[str, Any]


class ProgressHub:
    def __init__(self, platform: ApiContext, poll_s: float = 0.5):
        self.platform = platform
        self.poll_s = poll_s
        self._subs: dict[str, set[asyncio.Queue[Update]]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._cursor: EventCursor | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.platform.bus.add_progress_listener(self._from_bus)
        self._task = asyncio.create_task(self._tail())

    async def stop(self) -> None:
        self.platform.bus.remove_progress_listener(self._from_bus)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def subscribe(self, job_id: str) -> asyncio.Queue[Update]:
        """Call before reading the job's state, so no change after that read is missed."""
        if self._cursor is None:
            self._cursor = await run_sync(self.platform, self.platform.jobs.head_cursor)
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

    async def _tail(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if not self._subs:
                self._cursor = None  # nobody watches: no need to read; the next starts afresh
                continue
            try:
                await self._read_new_events()
            except Unavailable as exc:  # streams stay open; the next round catches up
                log.warning("event tail paused: %s", exc.message)
            except Exception:
                log.exception("event tail failed")

    async def _read_new_events(self) -> None:
        jobs = self.platform.jobs
        while self._cursor is not None:
            events = await run_sync(self.platform, jobs.read_events, self._cursor)
            for event in events:
                if event.job_id in self._subs:
                    self._dispatch({"id": event.job_id, "event": event.kind.value})
            if not events:
                return
            self._cursor = events[-1].cursor
