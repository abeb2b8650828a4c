"""What the user asked for, as one typed value from the parsed request to the model. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self


class Operation(StrEnum):
    """How a job relates to the video it derives from, if any."""

    CREATE = "create"
    """A new clip from the prompt (and an optional reference image)."""
    REMIX = "remix"
    """The parent's size, length, style, seed and reference with a new prompt."""
    EXTEND = "extend"
    """Continues the parent clip (or an uploaded one): its frames, then new ones made from
    its last frame."""
    EDIT = "edit"
    """Changes the parent clip (or an uploaded one) as the prompt says, keeping its length,
    size, layout and motion."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Validated, complete and immutable: the store keeps it as columns of the job row, the
    worker hands it to the model, the API shows it. Nothing else restates these fields."""

    prompt: str
    requested_model: str
    """The public name the client sent (echoed back), e.g. `sora-2-2025-10-06`."""
    model: str
    """The adapter it resolved to, which decides the worker pool."""
    seconds: int
    width: int
    height: int
    fps: int
    seed: int
    style: str | None = None
    reference_key: str | None = None
    """Object key of the stored reference image."""
    parent_id: str | None = None
    operation: Operation = Operation.CREATE

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def num_frames(self) -> int:
        return self.seconds * self.fps

    def columns(self) -> dict[str, Any]:
        """The job-row columns that hold this spec (same names)."""
        out = {name: getattr(self, name) for name in SPEC_COLUMNS}
        out["operation"] = self.operation.value
        return out

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> Self:
        return cls(
            prompt=row["prompt"],
            requested_model=row["requested_model"] or row["model"],
            model=row["model"],
            seconds=int(row["seconds"]),
            width=int(row["width"]),
            height=int(row["height"]),
            fps=int(row["fps"]),
            seed=int(row["seed"]),
            style=row["style"],
            reference_key=row["reference_key"],
            parent_id=row["parent_id"],
            operation=Operation(row["operation"]),
        )


SPEC_COLUMNS = tuple(JobSpec.__dataclass_fields__)
