"""The worker's pipeline: a clip is decoded, encoded, checked and uploaded off the GPU's
critical path, while the same worker already generates the next job."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from reelgen.domain import events as ev
from reelgen.domain.events import START
from reelgen.models.base import Clip


class _WaitsForTheNext:
    """The reference model, except that the first clip's decoding waits until the next
    job's generation has begun: with a serial worker that never happens, and the first
    job fails."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name, self.styles, self.fps = inner.name, inner.styles, inner.fps
        self.generations = 0
        self.next_began = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, spec: Any, on_step: Any, resume_from: bytes | None = None) -> Clip:
        self.generations += 1
        if self.generations > 1:
            self.next_began.set()
        clip = self.inner.generate(spec, on_step, resume_from)
        if self.generations == 1:
            clip.frames = self._after_next(clip.frames)
        return clip

    def _after_next(self, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        if not self.next_began.wait(30):
            raise RuntimeError("the next job's generation never began")
        yield from frames


def test_the_next_job_generates_while_the_last_one_finishes(start_server) -> None:
    model: list[_WaitsForTheNext] = []

    def prepare(platform: Any) -> None:
        model.append(_WaitsForTheNext(platform.models["reference"]))
        platform.models["reference"] = model[0]

    live = start_server(workers=1, prepare=prepare)
    body = {"prompt": "a red kite over a beach", "seconds": "1", "size": "64x64"}
    with live.client() as http:
        ids = [http.post("/v1/videos", json=body).json()["id"] for _ in range(3)]
    videos = [live.wait_for(i) for i in ids]
    assert [v["status"] for v in videos] == ["completed"] * 3, videos
    assert model[0].generations == 3

    def at(job_id: str, kind: str) -> float:
        return next(e.at for e in live.platform.jobs.events_after(job_id) if e.kind.value == kind)

    assert at(ids[1], "started") < at(ids[0], "completed")  # claimed before the first ended
    with live.client() as http:
        for video_id in ids:
            got = http.get(f"/v1/videos/{video_id}/content")
            assert got.status_code in (200, 302, 307), got.text


class _LastStepWaits:
    """The reference model, except that the first job's last step does not end before
    `ready()` says so (or 30 s pass): what the worker does meanwhile shows."""

    def __init__(self, inner: Any, ready: Any):
        self.inner, self.ready = inner, ready
        self.name, self.styles, self.fps = inner.name, inner.styles, inner.fps
        self.generations = 0
        self.waited: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, spec: Any, on_step: Any, resume_from: bytes | None = None) -> Clip:
        self.generations += 1
        first = self.generations == 1

        def step(info: Any) -> None:
            on_step(info)
            if first and info.step == info.total - 1:
                self.waited.append(_until(self.ready, 30))

        return self.inner.generate(spec, step, resume_from)


def _until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _submit_two(live: Any, model: list[_LastStepWaits], ids: list[str]) -> list[dict]:
    body = {"prompt": "a red kite over a beach", "seconds": "1", "size": "64x64"}
    with live.client() as http:
        first = http.post("/v1/videos", json=body).json()["id"]
        assert _until(lambda: model[0].generations == 1, 30)  # the first job holds the GPU
        ids += [first, http.post("/v1/videos", json=body).json()["id"]]
    return [live.wait_for(i) for i in ids]


def _order(live: Any, ids: list[str]) -> list[tuple[str, str]]:
    """Both jobs' events in the order they were written: (job, kind or stage)."""
    events = live.platform.jobs.read_events(START, limit=10_000)
    out = []
    for e in events:
        if e.job_id in ids:
            stage = getattr(e.payload, "stage", None)
            out.append((e.job_id, f"stage:{stage}" if stage else e.kind.value))
    return out


def test_the_next_job_is_claimed_and_prepared_during_the_last_step(start_server_any) -> None:
    model: list[_LastStepWaits] = []
    ids: list[str] = []

    def second_claimed() -> bool:
        got = live.platform.jobs.get(ids[1]) if len(ids) == 2 else None
        return got is not None and got.status.value == "in_progress"

    def prepare(platform: Any) -> None:
        model.append(_LastStepWaits(platform.models["reference"], second_claimed))
        platform.models["reference"] = model[0]

    live = start_server_any(prepare=prepare)
    videos = _submit_two(live, model, ids)
    assert [v["status"] for v in videos] == ["completed"] * 2, videos
    assert model[0].waited == [True]  # claimed while the first job's last step ran
    order = _order(live, ids)
    first_free = order.index((ids[0], "stage:encoding"))
    assert order.index((ids[0], "finishing")) < order.index((ids[1], "started")) < first_free
    prefetched = live.workers[0].platform.metrics.prefetched
    assert prefetched._value.get() == 1


def test_without_prefetch_the_next_job_waits_for_the_gpu(start_server) -> None:
    model: list[_LastStepWaits] = []
    ids: list[str] = []

    def prepare(platform: Any) -> None:
        model.append(_LastStepWaits(platform.models["reference"], lambda: len(ids) == 2))
        platform.models["reference"] = model[0]

    live = start_server(prepare=prepare, worker_prefetch=False)
    videos = _submit_two(live, model, ids)
    assert [v["status"] for v in videos] == ["completed"] * 2, videos
    order = _order(live, ids)
    assert (ids[0], "finishing") not in order
    assert order.index((ids[0], "stage:encoding")) < order.index((ids[1], "started"))


def test_a_draining_worker_hands_a_prefetched_job_back(start_server) -> None:
    model: list[_LastStepWaits] = []
    ids: list[str] = []

    def second_claimed_then_stop() -> bool:
        got = live.platform.jobs.get(ids[1]) if len(ids) == 2 else None
        if got is None or got.status.value != "in_progress":
            return False
        live.workers[0].stop.set()  # drains: the first job is past FINISH_ON_DRAIN
        return True

    def prepare(platform: Any) -> None:
        model.append(_LastStepWaits(platform.models["reference"], second_claimed_then_stop))
        platform.models["reference"] = model[0]

    live = start_server(prepare=prepare)
    body = {"prompt": "a red kite over a beach", "seconds": "1", "size": "64x64"}
    with live.client() as http:
        ids.append(http.post("/v1/videos", json=body).json()["id"])
        assert _until(lambda: model[0].generations == 1, 30)
        ids.append(http.post("/v1/videos", json=body).json()["id"])
    assert live.wait_for(ids[0])["status"] == "completed"
    assert _until(lambda: live.platform.jobs.get(ids[1]).status.value == "queued", 30)
    released = [e.payload for e in live.platform.jobs.events_after(ids[1])]
    assert any(getattr(p, "reason", None) == ev.SHUTDOWN for p in released), released
    assert model[0].generations == 1  # it never generated here; another worker will
