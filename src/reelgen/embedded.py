"""`reelgen serve`: API, controller and workers in one process over SQLite and a directory."""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import uvicorn

from reelgen import heap
from reelgen.api.app import create_app
from reelgen.controller import loop as controller
from reelgen.platform import Core, api_context, build_catalog, build_core, worker_context
from reelgen.services.accounts import ensure_bootstrap_key
from reelgen.settings import Settings
from reelgen.store.database import upgrade
from reelgen.store.election import leadership_for
from reelgen.worker.runner import Worker

log = logging.getLogger("reelgen.serve")


def _lock_data_dir(data_dir: Path) -> IO[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "serve.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise SystemExit(
            f"Another `reelgen serve` is already using the data directory {data_dir}."
        ) from exc
    return handle


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    announce: Callable[[str], None] = print,
) -> None:
    lock = _lock_data_dir(settings.data_dir)
    core = build_core(settings)
    if settings.is_embedded_database:
        upgrade(core.db.engine)
    catalog = build_catalog(settings)
    api = api_context(core, catalog)
    new_key = ensure_bootstrap_key(api, create_if_empty=True)
    if settings.is_embedded_database:
        controller.recover_orphans(core)

    stop = threading.Event()
    leadership = leadership_for(settings.resolved_database_url(), settings.data_dir)
    served = worker_context(core, [catalog[settings.default_model]])
    pool = [Worker(served) for _ in range(workers)]
    threads = [threading.Thread(target=w.run, name=w.id, daemon=True) for w in pool]
    threads.append(
        threading.Thread(
            target=controller.run_elected,
            args=(core, stop, leadership),
            name="controller",
            daemon=True,
        )
    )
    for t in threads:
        t.start()

    url = settings.public_url or f"http://{host}:{port}"
    announce(f"Reelgen is serving at {url}/v1 (data in {settings.data_dir.resolve()})")
    if new_key is not None:
        announce(
            f"Created an API key for user 'admin' (paid tier); it is shown only once:\n  {new_key}"
        )
    config = uvicorn.Config(
        create_app(api), host=host, port=port, log_level="warning", access_log=False
    )
    # uvicorn re-raises the signal that stopped it; these handlers absorb it so the
    # workers can drain below instead of the process dying mid-job.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: log.info("draining workers before exit"))
    heap.settle()
    try:
        uvicorn.Server(config).run()
    finally:
        _shutdown(core, pool, threads, stop)
        lock.close()


def _shutdown(
    core: Core, pool: list[Worker], threads: list[threading.Thread], stop: threading.Event
) -> None:
    """Workers checkpoint and release their jobs at the next step; nothing accepted is lost."""
    stop.set()
    for w in pool:
        w.stop.set()
    core.bus.wake_workers_local()
    core.bus.wake_local()
    for t in threads:
        t.join(timeout=60)
    core.close()
