"""The HTTP application factory; the platform is built by the caller and injected."""

from __future__ import annotations

from fastapi import FastAPI

from reelgen.api import errors
from reelgen.api.routes import files, health, videos
from reelgen.platform import Platform


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="Reelgen",
        version="0.1.0",
        summary="Text-to-video generation as a service, OpenAI Videos API compatible.",
    )
    app.state.platform = platform
    errors.install(app)
    app.include_router(videos.router)
    app.include_router(files.router)
    app.include_router(health.router)
    return app
