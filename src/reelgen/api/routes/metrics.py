"""Prometheus exposition of this process's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reelgen.api.deps import ApiDep, run_sync

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(platform: ApiDep) -> Response:
    body = await run_sync(platform, generate_latest, platform.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
