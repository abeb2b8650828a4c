"""Operator endpoints. `/admin/pools` is exposed like `/metrics` (keep both on the cluster
network); the review endpoints need an admin key."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from reelgen.api.deps import AdminUser, ApiDep, run_sync
from reelgen.api.schemas import VideoPublic, error_responses
from reelgen.services import fleet, reviews

router = APIRouter(tags=["admin"])


@router.get("/admin/pools")
async def pools(platform: ApiDep) -> dict[str, Any]:
    """Desired workers per model pool (the autoscaling signal) and the load behind it, as
    the leading controller last computed them; `age_seconds` says how fresh that is."""
    return await run_sync(platform, fleet.pool_report, platform)


class HeldList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoPublic]


class ReviewDecision(BaseModel):
    decision: Literal["approve", "reject"]


@router.get("/admin/reviews", response_model=HeldList, responses=error_responses(400, 401, 403))
async def held_for_review(platform: ApiDep, _admin: AdminUser, limit: int = Query(100)) -> HeldList:
    """Jobs that input moderation held for a review, oldest first."""
    held = await run_sync(platform, reviews.held, platform, limit)
    return HeldList(data=[VideoPublic.from_view(v) for v in held])


@router.post(
    "/admin/reviews/{video_id}",
    response_model=VideoPublic,
    responses=error_responses(400, 401, 403, 404, 409),
)
async def decide_review(
    video_id: str, body: ReviewDecision, platform: ApiDep, admin: AdminUser
) -> VideoPublic:
    """`approve` queues the job (its wait starts now); `reject` fails it with
    `moderation_blocked`."""
    decided = await run_sync(platform, reviews.review, platform, admin, video_id, body.decision)
    return VideoPublic.from_view(decided)
