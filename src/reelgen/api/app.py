"""The HTTP application factory; the platform is built by the caller and injected."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from reelgen.api import errors
from reelgen.api.progress import ProgressHub
from reelgen.api.routes import admin, files, health, metrics, models, videos
from reelgen.platform import ApiContext

log = logging.getLogger("reelgen.api")


def create_app(platform: ApiContext) -> FastAPI:
    hub = ProgressHub(platform)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(
        title="Reelgen",
        version="0.1.0",
        summary="Text-to-video generation as a service, OpenAI Videos API compatible.",
        lifespan=lifespan,
    )
    app.state.platform = platform
    platform.metrics.watch_queue(platform.jobs, platform.clock)
    app.state.progress = hub
    errors.install(app)
    app.include_router(videos.router)
    app.include_router(models.router)
    app.include_router(files.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(admin.router)
    app.openapi = _without_422(app)  # type: ignore[method-assign]
    return app


def _without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """Validation errors leave as 400 in the error shape, so FastAPI's stock 422 never happens."""
    stock = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = stock()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    return openapi
