"""Runs fleet processes (`reelgen worker`, `controller`, `api`) as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reelgen.domain.jobs import Job, Tier, User
from reelgen.platform import ApiContext, build_api
from reelgen.services import videos
from reelgen.services.accounts import authenticate, create_key
from reelgen.settings import Settings


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def logged(self, message: str) -> bool:
        return any(entry.get("msg") == message for entry in self.lines())

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)


@dataclass
class Fleet:
    root: Path
    env: dict[str, str]
    platform: ApiContext
    user: User
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, *args: str, **env: str) -> Proc:
        log = self.root / f"{args[0]}-{len(self.procs)}.log"
        with open(log, "wb") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", "reelgen", *args],
                env={**self.env, **env},
                stdout=subprocess.DEVNULL,
                stderr=handle,
            )
        proc = Proc(args[0], popen, log)
        self.procs.append(proc)
        return proc

    def submit(self, prompt: str, **fields: Any) -> Job:
        req = videos.CreateVideo(prompt=prompt, **{"size": "128x72", "seconds": 1, **fields})
        job, _ = videos.submit(self.platform, self.user, req)
        return job

    def job(self, job_id: str) -> Job:
        job = self.platform.jobs.get(job_id)
        assert job is not None
        return job

    def events(self, job_id: str) -> list[Any]:
        return self.platform.jobs.events_after(job_id)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=10)


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_fleet(root: Path, database_url: str, **settings: str) -> Fleet:
    env = {
        **os.environ,
        "REELGEN_DATABASE_URL": database_url,
        "REELGEN_STORAGE_URL": f"file://{root / 'objects'}",
        "REELGEN_DATA_DIR": str(root / "data"),
        "REELGEN_LEASE_SECONDS": "2",
        "REELGEN_HEARTBEAT_SECONDS": "0.2",
        "REELGEN_CONTROLLER_INTERVAL_SECONDS": "0.2",
        "REELGEN_WORKER_POLL_SECONDS": "0.2",
        "REELGEN_CHECKPOINT_EVERY_STEPS": "5",
        "REELGEN_REFERENCE_STEPS": "40",
        "REELGEN_PAID_MAX_CONCURRENT": "1000",
        "REELGEN_PAID_MAX_PER_DAY": "100000",
        **settings,
    }
    keys = {  # JSON values as the environment source would read them
        k.removeprefix("REELGEN_").lower(): json.loads(v) if v[:1] in ("{", "[") else v
        for k, v in env.items()
        if k.startswith("REELGEN_")
    }
    platform = build_api(Settings(**keys))  # type: ignore[arg-type]
    key = create_key(platform, user_name="fleet-tester", tier=Tier.PAID)
    return Fleet(root, env, platform, authenticate(platform, key))
