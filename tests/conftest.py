"""Shared fixtures: a real platform on a SQLite file, served over loopback HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from reelgen.api.app import create_app
from reelgen.controller import loop as controller
from reelgen.domain.jobs import Tier
from reelgen.platform import ApiContext, build_api, build_output_moderator, worker_context
from reelgen.services.accounts import create_key
from reelgen.settings import Settings
from reelgen.store.database import upgrade
from reelgen.store.election import leadership_for
from reelgen.worker.runner import Worker

PG_ADMIN_URL = os.environ.get(
    "REELGEN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _pg_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(statement)


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database; each test copies it (fast) instead of migrating."""
    name = f"reelgen_tpl_{os.getpid()}"
    try:
        _pg_admin(f"DROP DATABASE IF EXISTS {name}")
    except Exception as exc:
        if os.environ.get("REELGEN_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    _pg_admin(f"CREATE DATABASE {name}")
    from reelgen.store.database import make_engine

    engine = make_engine(_pg_url(name))
    upgrade(engine)
    engine.dispose()
    yield name
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = f"reelgen_t_{uuid.uuid4().hex[:12]}"
    _pg_admin(f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    yield _pg_url(name)
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test once per store: the contract both must keep."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reelgen.db'}"
    return str(request.getfixturevalue("pg_url"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = dict(
        data_dir=data_dir,
        reference_steps=6,
        checkpoint_every_steps=2,
        heartbeat_seconds=0.05,
        worker_poll_seconds=0.2,
        controller_interval_seconds=0.2,
        poll_after_ms=100,
    )
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@dataclass
class LiveServer:
    url: str
    platform: ApiContext
    paid_key: str
    free_key: str
    workers: list[Worker]

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.paid_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_for(self, video_id: str, key: str | None = None, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self.client(key) as http:
            while time.monotonic() < deadline:
                video = http.get(f"/v1/videos/{video_id}").json()
                if video["status"] in ("completed", "failed"):
                    return video
                time.sleep(0.05)
        raise AssertionError(f"{video_id} did not finish in {timeout} s")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; servers start from a copy instead of migrating anew."""
    from reelgen.store.database import make_engine

    path = tmp_path_factory.mktemp("template") / "reelgen.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def start_server(tmp_path: Path, sqlite_template: Path) -> Iterator:
    """Starts API + controller + workers in this process; yields a factory."""
    started: list[
        tuple[uvicorn.Server, threading.Thread, list[Worker], threading.Event, ApiContext]
    ]
    started = []

    def start(
        workers: int = 1,
        prepare: Callable[[ApiContext], None] | None = None,
        output_checks: list | None = None,
        serves: tuple[str, ...] = ("reference",),
        **overrides: object,
    ) -> LiveServer:
        """`prepare` may swap or add model adapters before any worker starts; `serves`:
        the adapters each worker serves; `output_checks` replaces the workers' output image
        checks."""
        settings = make_settings(tmp_path / f"data{len(started)}", **overrides)
        url = settings.resolved_database_url()
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            target = Path(url.removeprefix("sqlite:///"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sqlite_template, target)
        platform = build_api(settings)
        if prepare is not None:
            prepare(platform)
        upgrade(platform.db.engine)
        paid = create_key(platform, user_name="alice", tier=Tier.PAID)
        free = create_key(platform, user_name="bob", tier=Tier.FREE)
        stop = threading.Event()
        checks = build_output_moderator(settings)
        if output_checks is not None:
            checks.checks = output_checks
        served = worker_context(platform, [platform.models[name] for name in serves], checks)
        pool = [Worker(served) for _ in range(workers)]
        for w in pool:
            threading.Thread(target=w.run, daemon=True).start()
        leadership = leadership_for(settings.resolved_database_url(), settings.data_dir)
        threading.Thread(
            target=controller.run_elected, args=(platform, stop, leadership), daemon=True
        ).start()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(platform), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        started.append((server, thread, pool, stop, platform))
        return LiveServer(f"http://127.0.0.1:{port}", platform, paid, free, pool)

    yield start
    for server, _thread, pool, stop, platform in started:  # every one stops at once
        server.should_exit = True
        stop.set()
        for w in pool:
            w.stop.set()
        platform.bus.wake_workers_local()
        platform.bus.wake_local()
    for _server, thread, _pool, _stop, platform in started:
        thread.join(timeout=10)
        platform.close()


@pytest.fixture
def live(start_server) -> LiveServer:
    return start_server()


@pytest.fixture
def start_server_any(database_url: str, start_server):
    """`start_server` once per store (SQLite file, PostgreSQL)."""

    def start(**overrides: object) -> LiveServer:
        return start_server(database_url=database_url, **overrides)

    return start
