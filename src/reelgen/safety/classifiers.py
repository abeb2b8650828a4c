"""The one classifier interface of the safety checks, on either side: the built-in image
checks (faces, nudity, the hash blocklist), a deployment's hosted moderation endpoint or
Llama Guard-style model (`safety.remote`), or its own Python class all look at `Content`
and answer scores per category.

The prompt check gives a classifier the prompt's text; the reference image check gives it
the image; the output check gives it the clip's sampled frames and, when a transcriber is
configured, what the audio says. A classifier answers only for what it understands (a text
model ignores frames; the face detector ignores text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from reelgen.safety.verdict import Category

Scores = dict[Category, float]


@dataclass(frozen=True, slots=True)
class Content:
    text: str | None = None
    frames: Sequence[np.ndarray] = ()
    """RGB frames (height, width, 3) of uint8."""


class Classifier(Protocol):
    name: str
    nudity: bool
    """Whether it detects nudity in frames (a fleet refuses to start without one)."""

    def check(self, content: Content) -> tuple[Scores, dict[str, Any]]:
        """Scores per category (those it has no opinion on left out) and what it saw, for
        the audit log. Raises `ClassifierUnavailable` when it cannot answer."""
        ...


class ClassifierUnavailable(Exception):
    """A classifier could not answer (its service is down, slow or answered nonsense)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def merge(
    scores: Scores, details: dict[str, Any], classifiers: Sequence[Classifier], content: Content
) -> None:
    """Runs `classifiers` on `content`, raising each category to the highest score."""
    for classifier in classifiers:
        found, seen = classifier.check(content)
        details.update(seen)
        for category, s in found.items():
            scores[category] = max(scores.get(category, 0.0), s)
