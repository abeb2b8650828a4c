"""Input safety at submit: the prompt check (on the safety threads, off the event loop),
its audit row, and the refusal a block turns into."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from reelgen.domain.errors import ModerationBlocked
from reelgen.domain.jobs import User
from reelgen.platform import ApiContext
from reelgen.safety.verdict import DESCRIPTIONS, Verdict


def check_prompt(platform: ApiContext, prompt: str, style: str | None) -> Verdict:
    return platform.moderator.check(prompt, style=style)


def audit_row(
    platform: ApiContext, verdict: Verdict, *, user: User, prompt: str, job_id: str | None = None
) -> dict[str, Any]:
    keep_prompt = platform.settings.safety_prompt_retention_days > 0
    return {
        "at": platform.clock(),
        "stage": verdict.stage,
        "job_id": job_id,
        "user_id": user.id,
        "action": verdict.action.value,
        "categories": json.dumps([c.value for c in verdict.categories]),
        "scores": json.dumps({c.value: s for c, s in verdict.scores.items()}),
        "policy_version": verdict.policy_version,
        "content_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "prompt": prompt if keep_prompt else None,
        "details": json.dumps(verdict.details, default=str),
    }


def refusal(verdict: Verdict) -> ModerationBlocked:
    """What the caller is told: the categories, never which rule or term fired."""
    names = ", ".join(f"{DESCRIPTIONS[c]} ({c.value})" for c in verdict.categories)
    message = f"The prompt was refused by content moderation: {names}."
    return ModerationBlocked(
        message, categories=tuple(c.value for c in verdict.categories), param="prompt"
    )


def record_refusal(platform: ApiContext, verdict: Verdict, *, user: User, prompt: str) -> None:
    platform.audit.record([audit_row(platform, verdict, user=user, prompt=prompt)])
