"""What a safety check answers: an action, the categories that caused it, and every score,
under the policy version that produced them (the audit log keeps all three)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Category(StrEnum):
    SEXUAL_MINORS = "sexual_minors"
    REAL_PERSON = "real_person"
    VIOLENCE_GRAPHIC = "violence_graphic"
    SEXUAL = "sexual"
    HATE = "hate"
    SELF_HARM = "self_harm"


MANDATORY = (Category.SEXUAL_MINORS, Category.REAL_PERSON, Category.VIOLENCE_GRAPHIC)
ADULT = frozenset({Category.SEXUAL})
"""Categories a deployment may allow, but only for users verified as adults."""
"""Always on: a deployment cannot switch these off."""

DESCRIPTIONS = {
    Category.SEXUAL_MINORS: "sexual content involving minors",
    Category.REAL_PERSON: "a real person's likeness without consent",
    Category.VIOLENCE_GRAPHIC: "graphic violence or gore",
    Category.SEXUAL: "sexual content",
    Category.HATE: "hate symbols or hateful content",
    Category.SELF_HARM: "self-harm",
}


class Action(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"


_SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Scores at or above `block` block; at or above `review` hold the job for review."""

    block: float = 0.5
    review: float = 0.35


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    categories: tuple[Category, ...]
    """The categories at the verdict's action, most severe first (empty when allowed)."""
    scores: Mapping[Category, float]
    policy_version: str
    stage: str = "input_text"
    """What was checked: input_text, input_image, output_frames, output_audio."""
    details: Mapping[str, object] = field(default_factory=dict)
    """For the audit log only (which signals fired); never shown to the user."""

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    def audit_columns(self) -> dict[str, str]:
        """The verdict as the audit log's columns (lists and mappings as JSON)."""
        return {
            "stage": self.stage,
            "action": self.action.value,
            "categories": json.dumps([c.value for c in self.categories]),
            "scores": json.dumps({c.value: s for c, s in self.scores.items()}),
            "policy_version": self.policy_version,
            "details": json.dumps(self.details, default=str),
        }

    def worst(self, other: Verdict) -> Verdict:
        """The stricter of two verdicts (ties keep self); used to fold several checks."""
        return other if _SEVERITY[other.action] > _SEVERITY[self.action] else self


def decide(
    scores: Mapping[Category, float],
    thresholds: Mapping[Category, Thresholds],
    enabled: frozenset[Category],
    policy_version: str,
    *,
    stage: str,
    details: Mapping[str, object] | None = None,
) -> Verdict:
    """Turns per-category scores into a verdict; a disabled category never acts."""
    blocking = [c for c in Category if c in enabled and scores.get(c, 0.0) >= thresholds[c].block]
    reviewing = [c for c in Category if c in enabled and scores.get(c, 0.0) >= thresholds[c].review]
    if blocking:
        action, categories = Action.BLOCK, blocking
    elif reviewing:
        action, categories = Action.REVIEW, reviewing
    else:
        action, categories = Action.ALLOW, []
    return Verdict(
        action=action,
        categories=tuple(categories),
        scores={c: round(float(scores.get(c, 0.0)), 4) for c in Category},
        policy_version=policy_version,
        stage=stage,
        details=dict(details or {}),
    )
