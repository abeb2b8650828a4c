"""Which model names this installation serves and how to build each adapter."""

from __future__ import annotations

from reelgen.models.base import VideoModel
from reelgen.settings import Settings

AVAILABLE = ("reference",)


def build_model(name: str, settings: Settings) -> VideoModel:
    if name == "reference":
        from reelgen.models.reference import ReferenceModel

        return ReferenceModel(steps=settings.reference_steps)
    raise ValueError(f"Unknown model {name!r}; available: {', '.join(AVAILABLE)}")
