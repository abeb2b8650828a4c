"""Liveness and readiness for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from reelgen.api.deps import ApiDep, run_sync
from reelgen.store.database import head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(platform: ApiDep) -> JSONResponse:
    def check() -> dict[str, str]:
        revision = platform.db.schema_revision()
        if revision != head_revision():
            raise RuntimeError(f"database at revision {revision}, code expects {head_revision()}")
        return {"status": "ready", "database": "ok", "schema": str(revision)}

    try:
        return JSONResponse(await run_sync(platform, check))
    except Exception as exc:
        return JSONResponse({"status": "not_ready", "reason": str(exc)}, status_code=503)
