"""One worker serving several models: the dispatcher gives it jobs of each, it switches by
parking the model on its device and loading the other, never while the parked model's last
clip is still being decoded, and reports what it holds; a model it does not serve never
reaches it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from reelgen.cli.main import app
from reelgen.domain.jobs import Status
from reelgen.models.base import Clip, GenerationSpec, StepCallback
from reelgen.models.reference import ReferenceModel


class Tracked(ReferenceModel):
    """The reference renderer under another name, keeping a shared log of what happens on
    the device: loads, parks, runs, and when each clip's last frame was read."""

    def __init__(self, name: str, log: list[tuple[str, str, str]], on_device: set[str]):
        super().__init__(steps=3)
        self.name = name
        self.log = log
        self.on_device = on_device
        self.lock = threading.Lock()

    def _note(self, what: str, job: str = "") -> None:
        with self.lock:
            self.log.append((what, self.name, job))

    def load(self) -> None:
        super().load()
        self.on_device.add(self.name)
        self._note("load")

    def park(self) -> None:
        self.on_device.discard(self.name)
        self._note("park")

    def generate(
        self, spec: GenerationSpec, on_step: StepCallback, resume_from: bytes | None = None
    ) -> Clip:
        job = spec.run_id.split(":")[0]
        assert self.name in self.on_device, f"{self.name} ran while parked"
        self._note("run", job)
        clip = super().generate(spec, on_step, resume_from)
        frames = clip.frames
        done = threading.Event()

        def decoded() -> Iterator[np.ndarray]:  # as if each frame needed the device
            for frame in frames:
                assert self.name in self.on_device, f"{self.name} decoded while parked"
                yield frame
            self._note("decoded", job)
            done.set()

        clip.frames = decoded()
        clip.decoded = done
        return clip


def test_one_worker_switches_between_the_models_it_serves(start_server) -> None:
    log: list[tuple[str, str, str]] = []
    on_device: set[str] = set()

    def prepare(platform) -> None:
        platform.models["reference"] = Tracked("reference", log, on_device)
        platform.models["reference-b"] = Tracked("reference-b", log, on_device)

    live = start_server(prepare=prepare, serves=("reference", "reference-b"))
    worker = live.workers[0]
    body = {"prompt": "a paper boat on a pond", "seconds": "1", "size": "64x64"}
    with live.client() as http:
        # One after another, alternating: each one a switch.
        order = ["reference-b", "reference", "reference-b"]
        for model in order:
            video_id = http.post("/v1/videos", json={**body, "model": model}).json()["id"]
            assert live.wait_for(video_id)["status"] == "completed"
        # A backlog of both at once: the finishing clip is decoded before its model parks.
        burst = [
            http.post("/v1/videos", json={**body, "model": m, "seed": k}).json()["id"]
            for k, m in enumerate(["reference", "reference-b"] * 3)
        ]
        for video_id in burst:
            video = live.wait_for(video_id)
            assert video["status"] == "completed", video
    runs = [(name, job) for what, name, job in log if what == "run"]
    assert [name for name, _ in runs[:3]] == order
    assert {name for name, _ in runs[3:]} == {"reference", "reference-b"}
    changes = sum(1 for a, b in itertools.pairwise(runs) if a[0] != b[0])
    changes += runs[0][0] != "reference"  # the worker started with the first model loaded
    switched = live.platform.metrics.model_switches
    counted = sum(
        switched.labels(a, b)._value.get()
        for a, b in [("reference", "reference-b"), ("reference-b", "reference")]
    )
    assert counted == changes >= 3
    for k, (what, name, _job) in enumerate(log):
        if what == "park":
            ran = {job for w, n, job in log[:k] if w == "run" and n == name}
            decoded = {job for w, n, job in log[:k] if w == "decoded" and n == name}
            assert ran == decoded, f"{name} parked before its clips were decoded"
    row = next(w for w in live.platform.jobs.live_workers() if w.id == worker.id)
    assert row.holds == (worker.loaded, *({"reference", "reference-b"} - {worker.loaded}))
    for video_id in burst:
        job = live.platform.jobs.get(video_id)
        assert job is not None and job.status is Status.COMPLETED


def test_a_failed_switch_hands_the_job_back_and_the_worker_goes_on_without_that_model(
    start_server,
) -> None:
    log: list[tuple[str, str, str]] = []
    on_device: set[str] = set()

    class Broken(Tracked):
        def load(self) -> None:
            if any(what == "park" for what, name, _ in log if name == self.name):
                raise MemoryError("out of device memory")  # the switch back fails
            super().load()

    def prepare(platform) -> None:
        platform.models["reference"] = Tracked("reference", log, on_device)
        platform.models["reference-b"] = Broken("reference-b", log, on_device)

    live = start_server(prepare=prepare, serves=("reference", "reference-b"))
    worker = live.workers[0]
    body = {"prompt": "a paper boat on a pond", "seconds": "1", "size": "64x64"}
    with live.client() as http:
        stuck = http.post("/v1/videos", json={**body, "model": "reference-b"}).json()["id"]
        deadline = time.monotonic() + 30
        while not any(e.kind == "released" for e in live.platform.jobs.events_after(stuck)):
            assert time.monotonic() < deadline, "the job was not handed back"
            time.sleep(0.05)
        served = http.post("/v1/videos", json=body).json()["id"]
        assert live.wait_for(served)["status"] == "completed"
        time.sleep(0.5)
        assert http.get(f"/v1/videos/{stuck}").json()["status"] == "queued"
    reasons = [
        e.payload.reason for e in live.platform.jobs.events_after(stuck) if e.kind == "released"
    ]
    # Given again before the dispatcher read the worker's row anew, it hands it back again.
    assert reasons[0] == "model_switch_failed" and set(reasons[1:]) <= {"model_not_served"}
    assert len(reasons) <= 5, reasons
    assert worker.loaded == "reference" and "reference" in on_device
    row = next(w for w in live.platform.jobs.live_workers() if w.id == worker.id)
    assert row.holds == ("reference",)
    assert not [entry for entry in log if entry[0] == "run" and entry[1] == "reference-b"]


def test_a_job_for_a_model_the_worker_does_not_serve_waits(start_server) -> None:
    log: list[tuple[str, str, str]] = []
    on_device: set[str] = set()

    def prepare(platform) -> None:
        platform.models["reference-b"] = Tracked("reference-b", log, on_device)

    live = start_server(prepare=prepare)  # the worker serves "reference" only
    body = {"prompt": "a kite over a beach", "seconds": "1", "size": "64x64"}
    with live.client() as http:
        waiting = http.post("/v1/videos", json={**body, "model": "reference-b"}).json()["id"]
        served = http.post("/v1/videos", json=body).json()["id"]
        assert live.wait_for(served)["status"] == "completed"
        time.sleep(0.5)
        assert http.get(f"/v1/videos/{waiting}").json()["status"] == "queued"
    assert not [entry for entry in log if entry[0] == "run"]


def test_worker_cli_pairs_each_model_with_its_path(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"REELGEN_DATA_DIR": str(tmp_path)}
    weights = tmp_path / "weights"
    weights.mkdir()
    args = ["worker", "--model", "wan2.1-t2v-1.3b", "--model", "wan2.1-t2v-14b"]
    result = runner.invoke(app, [*args, "--model-path", str(weights)], env=env)
    assert result.exit_code == 2
    assert "1 paths for 2 models" in result.output
    result = runner.invoke(app, ["worker", "--model", "reference", "--model", "reference"], env=env)
    assert result.exit_code == 2 and "a model is named twice" in result.output
    result = runner.invoke(app, args, env=env)  # two models, one REELGEN_MODEL_PATH
    assert result.exit_code == 2 and "give one --model-path per --model" in result.output
