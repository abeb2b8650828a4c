"""The worker's pipeline: a clip is decoded, encoded, checked and uploaded off the GPU's
critical path, while the same worker already generates the next job."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

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
