"""Shared pieces of the PostgreSQL fleet benchmarks: scratch databases and fleet processes.

The fleet benchmarks (`queue_throughput`, `dispatch_latency`, `crash_recovery`) need a
local PostgreSQL server (default `postgresql://postgres@127.0.0.1:5432`, trust auth; set
`REELGEN_BENCH_PG` to use another). Each creates its own `reelgen_bench_*` database, runs
`reelgen db upgrade` on it, and drops it at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from _common import API_KEY, LOOPBACK, SIGNING_SECRET, free_port, log, python_executable

PG_SERVER = os.environ.get("REELGEN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
T = TypeVar("T")


def pg_url(database: str) -> str:
    return f"{PG_SERVER.rstrip('/')}/{database}"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(pg_url("postgres"), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def pg_server_info() -> str:
    """'PostgreSQL 15.x; synchronous_commit=on, fsync=on, ...' for the document."""
    import psycopg

    with psycopg.connect(pg_url("postgres"), autocommit=True, connect_timeout=5) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = {}
        for name in ("synchronous_commit", "fsync", "shared_buffers", "max_connections"):
            row = conn.execute(f"SHOW {name}").fetchone()  # type: ignore[arg-type]
            settings[name] = row[0] if row else "?"
    head = f"PostgreSQL {version[0] if version else '?'}"
    return head + "; " + ", ".join(f"`{k}={v}`" for k, v in settings.items())


@contextlib.contextmanager
def scratch_database(prefix: str, *, migrate: bool = True, keep: bool = False) -> Iterator[str]:
    """Creates `reelgen_bench_<prefix>_<random>`, migrated to head; yields its URL; drops it."""
    if not re.fullmatch(r"[a-z0-9_]+", prefix):
        raise ValueError(f"bad database prefix {prefix!r}")
    name = f"reelgen_bench_{prefix}_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {name}")
    url = pg_url(name)
    log(f"created database {name}")
    try:
        if migrate:
            from reelgen.store.database import make_engine, upgrade

            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
        yield url
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            log(f"dropped database {name}")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------------------- fleet processes


@dataclass
class FleetProc:
    """One `reelgen api|controller|worker` subprocess; JSON log lines on stderr go to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        out.append(json.loads(line))
        return out

    def find(self, message: str) -> dict[str, Any] | None:
        return next((e for e in self.lines() if e.get("msg") == message), None)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (workers drain), then SIGKILL."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {self.pid}) did not stop in {timeout:.0f} s; kill")
                self.kill()


@dataclass
class Fleet:
    """Fleet processes sharing one database, one object store and one data directory."""

    database_url: str
    settings: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="reelgen-fleet-")))
    procs: list[FleetProc] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
        env.update(
            REELGEN_DATABASE_URL=self.database_url,
            REELGEN_STORAGE_URL=f"file://{self.root / 'objects'}",
            REELGEN_DATA_DIR=str(self.root / "data"),
            REELGEN_BOOTSTRAP_API_KEY=API_KEY,
            REELGEN_SIGNING_SECRET=SIGNING_SECRET,
            REELGEN_PAID_MAX_CONCURRENT="1000000",
            REELGEN_PAID_MAX_PER_DAY="1000000",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        return env

    def platform_settings(self) -> Any:
        """The same settings as the processes, for an in-process `build_api`."""
        from reelgen.settings import Settings

        keys = {
            k.removeprefix("REELGEN_").lower(): v
            for k, v in self.env.items()
            if k.startswith("REELGEN_")
        }
        return Settings(**keys)

    def spawn(self, *args: str) -> FleetProc:
        name = f"{args[0]}-{len(self.procs)}"
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as handle:
            popen = subprocess.Popen(
                [python_executable(), "-m", "reelgen", *args],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        proc = FleetProc(name, popen, log_path)
        self.procs.append(proc)
        log(f"started reelgen {' '.join(args)} (pid {proc.pid})")
        return proc

    def api(self, timeout: float = 60.0) -> tuple[FleetProc, str]:
        import httpx

        port = free_port()
        proc = self.spawn("api", "--host", LOOPBACK, "--port", str(port))
        url = f"http://{LOOPBACK}:{port}"

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"reelgen api exited during start-up:\n{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
            return False

        wait_for(ready, timeout, "reelgen api /readyz")
        return proc, url

    def worker(self, *extra: str) -> FleetProc:
        return self.spawn("worker", *extra)

    def controller(self) -> FleetProc:
        return self.spawn("controller")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10.0)
        if self.keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            for proc in self.procs:
                log(f"{proc.name} log tail:\n{proc.tail()}")
        self.close()


def event_times(events: Sequence[Any], kind: str) -> list[Any]:
    """The events of one kind, in order."""
    return [e for e in events if e.kind == kind]
