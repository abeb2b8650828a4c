"""One in-process platform for benchmarks that bring their own model adapter: API (real
HTTP on loopback), controller and one worker serving `model`, over SQLite in a temporary
directory, with a paid key."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from _common import free_port

from reelgen.api.app import create_app
from reelgen.controller import loop as controller
from reelgen.domain.jobs import Tier
from reelgen.models.base import VideoModel
from reelgen.platform import build_api, worker_context
from reelgen.services.accounts import create_key
from reelgen.settings import Settings
from reelgen.store.database import upgrade
from reelgen.store.election import leadership_for
from reelgen.worker.runner import Worker


@contextlib.contextmanager
def platform_serving(
    models: Sequence[VideoModel], *, keep: bool = False, **settings: Any
) -> Iterator[httpx.Client]:
    """Yields an HTTP client of the running platform, with the paid key, its one worker
    serving `models` (the API offers each); stops it after."""
    root = Path(tempfile.mkdtemp(prefix="reelgen-bench-inprocess-"))
    config = Settings(data_dir=root, checkpoint_every_steps=1000, **settings)
    platform = build_api(config)
    for model in models:
        platform.models[model.name] = model
    upgrade(platform.db.engine)
    key = create_key(platform, user_name="bench", tier=Tier.PAID)
    worker = Worker(worker_context(platform, models))
    stop = threading.Event()
    leadership = leadership_for(config.resolved_database_url(), config.data_dir)
    threading.Thread(target=worker.run, daemon=True).start()
    threading.Thread(
        target=controller.run_elected, args=(platform, stop, leadership), daemon=True
    ).start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(platform), host="127.0.0.1", port=port, log_level="error")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as http:
            yield http
    finally:
        server.should_exit = True
        stop.set()
        worker.stop.set()
        platform.bus.wake_workers_local()
        time.sleep(0.5)
        platform.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def wait_all(
    http: httpx.Client, ids: Iterable[str], timeout_s: float
) -> dict[str, tuple[dict[str, Any], float]]:
    """Each job's final video and when (time.monotonic()) it was seen ended; the ones that
    did not end within `timeout_s` are missing."""
    waiting = list(ids)
    ended: dict[str, tuple[dict[str, Any], float]] = {}
    deadline = time.monotonic() + timeout_s
    while len(ended) < len(waiting) and time.monotonic() < deadline:
        for video_id in waiting:
            if video_id not in ended:
                video = http.get(f"/v1/videos/{video_id}").json()
                if video["status"] in ("completed", "failed"):
                    ended[video_id] = (video, time.monotonic())
        time.sleep(0.1)
    return ended
