"""Content review: jobs that input moderation held, and an admin's decision on each."""

from __future__ import annotations

from reelgen.domain.errors import Conflict, InvalidRequest, NotFound
from reelgen.domain.jobs import User
from reelgen.platform import ApiContext
from reelgen.safety.verdict import Action, Verdict
from reelgen.services import moderation
from reelgen.services.videos import VideoView, view


def held(platform: ApiContext, limit: int) -> list[VideoView]:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    return [view(platform, job) for job in platform.jobs.awaiting_review(limit)]


def review(platform: ApiContext, admin: User, video_id: str, decision: str) -> VideoView:
    """An admin's decision on a held job, audited like any verdict."""
    if decision not in ("approve", "reject"):
        raise InvalidRequest("decision must be 'approve' or 'reject'.", param="decision")
    job = platform.jobs.review(
        video_id, approve=decision == "approve", reviewer=admin.name, now=platform.clock()
    )
    if job is None:
        found = platform.jobs.get(video_id)
        if found is None or found.deleted_at is not None:
            raise NotFound(f"No video found with id {video_id!r}.", param="video_id")
        raise Conflict(
            f"Video {video_id} is not held for review (it is {found.status.value}).",
            code="not_in_review",
        )
    decided = Verdict(
        action=Action.ALLOW if decision == "approve" else Action.BLOCK,
        categories=(),
        scores={},
        policy_version=f"review by {admin.name}",
        stage="review",
        details={"reviewer": admin.id, "decision": decision},
    )
    platform.audit.record(
        [
            moderation.audit_row(
                platform, decided, user_id=job.user_id, prompt=job.spec.prompt, job_id=job.id
            )
        ]
    )
    if decision == "approve":
        platform.bus.work_available(job.model)
    return view(platform, job)
