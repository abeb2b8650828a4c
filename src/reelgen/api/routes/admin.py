"""Operator endpoints, exposed like `/metrics` (keep both on the cluster network)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from reelgen.api.deps import ApiDep, run_sync
from reelgen.services import fleet

router = APIRouter(tags=["admin"])


@router.get("/admin/pools")
async def pools(platform: ApiDep) -> dict[str, Any]:
    """Desired workers per model pool (the autoscaling signal) and the load behind it, as
    the leading controller last computed them; `age_seconds` says how fresh that is."""
    return await run_sync(platform, fleet.pool_report, platform)
