"""The fleet's processes: `reelgen api`, `reelgen controller`, `reelgen worker`.

Each builds its own platform from the same settings. Workers reach only the database, the
bus and object storage; the API is stateless, so any number of replicas can run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from prometheus_client import start_http_server

from reelgen import heap
from reelgen.api.app import create_app
from reelgen.controller import loop as controller
from reelgen.models.registry import build_model
from reelgen.platform import (
    Core,
    build_api,
    build_core,
    build_output_moderator,
    worker_context,
)
from reelgen.safety.output import OutputModerator
from reelgen.services.accounts import ensure_bootstrap_key
from reelgen.settings import Settings
from reelgen.store.election import leadership_for
from reelgen.store.notify import ASSIGNED_CHANNEL, PROGRESS_CHANNEL, WORK_CHANNEL
from reelgen.worker.runner import Worker

log = logging.getLogger("reelgen.fleet")


def _on_stop_signals(action: object) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        action()  # type: ignore[operator]

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _serve_metrics(core: Core, port: int | None) -> None:
    if port:
        start_http_server(port, addr="0.0.0.0", registry=core.metrics.registry)


def run_api(settings: Settings, *, host: str, port: int) -> None:
    platform = build_api(settings, listen=frozenset({PROGRESS_CHANNEL}))
    ensure_bootstrap_key(platform, create_if_empty=False)
    app = create_app(platform)
    heap.settle()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        platform.close()


def run_controller(settings: Settings, *, metrics_port: int | None) -> None:
    platform = build_core(settings, listen=frozenset({WORK_CHANNEL}))
    platform.metrics.watch_queue(platform.jobs, platform.clock)
    _serve_metrics(platform, metrics_port)
    stop = threading.Event()
    _on_stop_signals(stop.set)
    leadership = leadership_for(settings.resolved_database_url(), settings.data_dir)
    try:
        controller.run_elected(platform, stop, leadership)
    finally:
        platform.close()


class NoNudityCheck(SystemExit):
    pass


def refuse_without_nudity_check(settings: Settings, checks: OutputModerator) -> None:
    """A fleet worker publishes to real users: it needs an output nudity classifier."""
    if checks.has_nudity_check or settings.safety_allow_no_nudity_classifier:
        return
    raise NoNudityCheck(
        "refusing to start: this worker has no output nudity classifier. Install NudeNet "
        "(pip install 'reelgen[nudity]'; its wheel carries an AGPL-3.0 licence), or set "
        "REELGEN_SAFETY_ALLOW_NO_NUDITY_CLASSIFIER=true to run without one."
    )


def run_worker(
    settings: Settings,
    *,
    models: Sequence[tuple[str, Path | None]],
    gpu: str | None,
    metrics_port: int | None,
) -> None:
    """One worker per accelerator, serving `models` (name, weights directory; None: the
    settings' model path), the first on the device at start and the others parked in host
    memory; SIGTERM drains (checkpoint and hand back, or finish)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    adapters = [build_model(name, settings, path=path) for name, path in models]
    checks = build_output_moderator(settings)  # first: a refusal stops before connecting
    refuse_without_nudity_check(settings, checks)
    core = build_core(settings, listen=frozenset({ASSIGNED_CHANNEL, PROGRESS_CHANNEL}))
    platform = worker_context(core, adapters, checks)
    _serve_metrics(platform, metrics_port)
    worker = Worker(platform)

    def drain() -> None:
        worker.stop.set()
        platform.bus.wake_local()

    _on_stop_signals(drain)
    try:
        worker.run()
    finally:
        platform.close()
