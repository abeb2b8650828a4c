"""The worker keeps its lease on its own schedule, not only at the model's step boundaries."""

from __future__ import annotations

import time
from dataclasses import dataclass

from reelgen.models.base import (
    Clip,
    Conditioning,
    GenerationSpec,
    StepCallback,
    StepInfo,
    VideoModel,
)
from reelgen.platform import ApiContext

LEASE_S = 0.6
STEP_S = 3 * LEASE_S


@dataclass
class SlowSteps:
    """Another adapter whose every denoising step lasts three leases."""

    inner: VideoModel

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def styles(self) -> frozenset[str]:
        return self.inner.styles

    @property
    def fps(self) -> int:
        return self.inner.fps

    @property
    def accepts(self) -> frozenset[Conditioning]:
        return self.inner.accepts

    @property
    def sizes(self) -> frozenset[str]:
        return self.inner.sizes

    @property
    def max_seconds(self) -> int:
        return self.inner.max_seconds

    @property
    def requires(self) -> frozenset[Conditioning]:
        return self.inner.requires

    def load(self) -> None:
        self.inner.load()

    def park(self) -> None:
        self.inner.park()

    def num_steps(self, spec: GenerationSpec) -> int:
        return self.inner.num_steps(spec)

    def estimate_seconds(self, spec: GenerationSpec) -> float:
        return self.inner.estimate_seconds(spec)

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        def slow(info: StepInfo) -> None:
            time.sleep(STEP_S)
            on_step(info)

        return self.inner.generate(spec, slow, resume_from=resume_from)


def _slow(platform: ApiContext) -> None:
    platform.models["reference"] = SlowSteps(platform.models["reference"])


def test_a_step_three_leases_long_never_loses_the_lease(start_server) -> None:
    live = start_server(
        prepare=_slow,
        reference_steps=2,
        lease_seconds=LEASE_S,
        heartbeat_seconds=0.1,
        checkpoint_every_steps=1,
    )
    with live.client() as http:
        video = http.post("/v1/videos", json={"prompt": "slow", "size": "64x64", "seconds": "1"})
    done = live.wait_for(video.json()["id"], timeout=60)
    assert done["status"] == "completed", done
    job = live.platform.jobs.get(done["id"])
    kinds = [e.kind for e in live.platform.jobs.events_after(done["id"])]
    assert "worker_lost" not in kinds, kinds
    assert job.attempt == 1 and kinds.count("started") == 1
