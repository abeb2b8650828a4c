"""`reelgen serve` as a real subprocess: SIGKILL mid-generation loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelgen.media.encode import probe_video
from reelgen.platform import build_api
from reelgen.settings import Settings

from .conftest import free_port

pytestmark = pytest.mark.slow

KEY = "rg_restart_test_key"


class ServeProcess:
    def __init__(self, data_dir: Path, port: int, steps: int):
        self.data_dir, self.port, self.steps = data_dir, port, steps
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "REELGEN_BOOTSTRAP_API_KEY": KEY,
            "REELGEN_REFERENCE_STEPS": str(self.steps),
            "REELGEN_CHECKPOINT_EVERY_STEPS": "5",
            "REELGEN_HEARTBEAT_SECONDS": "0.05",
        }
        cmd = [
            sys.executable,
            "-m",
            "reelgen",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            "1",
        ]
        with open(self.data_dir.parent / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "serve exited during start-up"
            time.sleep(0.05)
        raise AssertionError("serve did not become ready")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    # Enough steps that the signal lands mid-run: progress reaches the client with a lag,
    # and at 80 steps a fast machine could finish the clip inside it.
    proc = ServeProcess(tmp_path / "data", free_port(), steps=240)
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


def _wait_step(http: httpx.Client, video_id: str, step: int, total: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if http.get(f"/v1/videos/{video_id}").json()["progress"] >= 90 * step // total:
            return
        time.sleep(0.01)
    raise AssertionError(f"{video_id} never reached step {step}")


def _wait_done(http: httpx.Client, video_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        video = http.get(f"/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed"):
            return video
        time.sleep(0.1)
    raise AssertionError(f"{video_id} did not finish")


def _events(data_dir: Path, video_id: str) -> list:
    platform = build_api(Settings(data_dir=data_dir))
    try:
        return platform.jobs.events_after(video_id)
    finally:
        platform.close()


def test_sigkill_mid_generation_resumes_from_checkpoint(
    serve: ServeProcess, tmp_path: Path
) -> None:
    serve.start()
    with serve.client() as http:
        body = {"prompt": "waves under a neon sky", "size": "256x144", "seconds": "2"}
        running = http.post("/v1/videos", json=body).json()
        queued = http.post("/v1/videos", json={**body, "prompt": "queued behind"}).json()
        _wait_step(http, running["id"], 22, serve.steps)
    serve.signal(signal.SIGKILL)

    serve.start()
    with serve.client() as http:
        done = _wait_done(http, running["id"])
        assert done["status"] == "completed", done
        assert _wait_done(http, queued["id"])["status"] == "completed"
        content = http.get(f"/v1/videos/{running['id']}/content").content
    path = tmp_path / "resumed.mp4"
    path.write_bytes(content)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (256, 144, 48)

    events = _events(serve.data_dir, running["id"])
    kinds = [e.kind for e in events]
    assert "worker_lost" in kinds
    lost = next(e for e in events if e.kind == "worker_lost")
    assert lost.payload.checkpoint_step >= 20
    starts = [e for e in events if e.kind == "started"]
    assert [s.payload.attempt for s in starts] == [1, 2]
    assert starts[1].payload.resume_step == lost.payload.checkpoint_step
    assert kinds[-1] == "completed"


def test_sigterm_drains_and_requeues(serve: ServeProcess) -> None:
    serve.start()
    with serve.client() as http:
        body = {"prompt": "slow drifting clouds", "size": "256x144", "seconds": "2"}
        video = http.post("/v1/videos", json=body).json()
        _wait_step(http, video["id"], 12, serve.steps)
    serve.signal(signal.SIGTERM)
    assert serve.proc is not None and serve.proc.returncode == 0

    events = _events(serve.data_dir, video["id"])
    released = [e for e in events if e.kind == "released"]
    assert len(released) == 1 and released[0].payload.step >= 12

    serve.start()
    with serve.client() as http:
        assert _wait_done(http, video["id"])["status"] == "completed"
    starts = [e for e in _events(serve.data_dir, video["id"]) if e.kind == "started"]
    assert [s.payload.attempt for s in starts] == [1, 1]
    assert starts[1].payload.resume_step == released[0].payload.step
