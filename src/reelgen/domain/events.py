"""Job events: one kind enum, one typed payload per kind. Pure, no I/O.

Every transition writes its event in the same transaction (the store does that), so the
event log is the audit and the source that SSE, webhooks and metrics read by cursor.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar


class EventKind(StrEnum):
    CREATED = "created"
    STARTED = "started"
    STAGE = "stage"
    FINISHING = "finishing"
    CHECKPOINT = "checkpoint"
    CANCEL_REQUESTED = "cancel_requested"
    PREEMPT_REQUESTED = "preempt_requested"
    RELEASED = "released"
    WORKER_LOST = "worker_lost"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETED = "deleted"
    EXPIRED = "expired"
    REVIEWED = "reviewed"


@dataclass(frozen=True, slots=True)
class Created:
    kind: ClassVar[EventKind] = EventKind.CREATED
    operation: str = "create"
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Started:
    kind: ClassVar[EventKind] = EventKind.STARTED
    attempt: int
    worker_id: str
    resume_step: int


@dataclass(frozen=True, slots=True)
class StageChanged:
    kind: ClassVar[EventKind] = EventKind.STAGE
    attempt: int
    stage: str


@dataclass(frozen=True, slots=True)
class Finishing:
    """The attempt's last model step has begun: its worker takes the next job now, so that
    claiming and preparing it overlap this step instead of leaving the GPU idle after it."""

    kind: ClassVar[EventKind] = EventKind.FINISHING
    attempt: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class Checkpointed:
    kind: ClassVar[EventKind] = EventKind.CHECKPOINT
    attempt: int
    step: int


@dataclass(frozen=True, slots=True)
class CancelRequested:
    kind: ClassVar[EventKind] = EventKind.CANCEL_REQUESTED
    step: int


@dataclass(frozen=True, slots=True)
class PreemptRequested:
    kind: ClassVar[EventKind] = EventKind.PREEMPT_REQUESTED


PREEMPTED = "preempted"
SHUTDOWN = "worker_shutdown"
SWITCH_FAILED = "model_switch_failed"
NOT_SERVED = "model_not_served"
"""The reasons a worker hands a job back (`Released.reason`)."""


@dataclass(frozen=True, slots=True)
class Released:
    kind: ClassVar[EventKind] = EventKind.RELEASED
    reason: str
    step: int


@dataclass(frozen=True, slots=True)
class WorkerLost:
    kind: ClassVar[EventKind] = EventKind.WORKER_LOST
    attempt: int
    worker_id: str | None
    step: int
    checkpoint_step: int
    counted: bool
    """Whether it counts toward the poison limit (no progress past the resumed checkpoint)."""
    detected_by: str
    """`session` (the worker's database session ended), `lease` (expired) or `restart`."""


@dataclass(frozen=True, slots=True)
class Completed:
    kind: ClassVar[EventKind] = EventKind.COMPLETED
    attempt: int
    first_step: int
    """The first step the final attempt computed (1 when it did not resume)."""


@dataclass(frozen=True, slots=True)
class Failed:
    kind: ClassVar[EventKind] = EventKind.FAILED
    attempt: int
    code: str
    step: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    kind: ClassVar[EventKind] = EventKind.CANCELLED
    while_status: str
    attempt: int
    step: int


@dataclass(frozen=True, slots=True)
class Deleted:
    kind: ClassVar[EventKind] = EventKind.DELETED


@dataclass(frozen=True, slots=True)
class Expired:
    kind: ClassVar[EventKind] = EventKind.EXPIRED


@dataclass(frozen=True, slots=True)
class Reviewed:
    """An admin decided on a job held for review (`approve` queues it, `reject` fails it)."""

    kind: ClassVar[EventKind] = EventKind.REVIEWED
    decision: str
    reviewer: str


Payload = (
    Created
    | Started
    | StageChanged
    | Finishing
    | Checkpointed
    | CancelRequested
    | PreemptRequested
    | Released
    | WorkerLost
    | Completed
    | Failed
    | Cancelled
    | Deleted
    | Expired
    | Reviewed
)

PAYLOADS: dict[EventKind, type[Payload]] = {cls.kind: cls for cls in typing.get_args(Payload)}

assert set(PAYLOADS) == set(EventKind), "every event kind has exactly one payload type"


def encode(payload: Payload) -> str:
    return json.dumps(dataclasses.asdict(payload), separators=(",", ":"))


def decode(kind: str, data: str) -> Payload:
    """Unknown keys are dropped so that older readers accept newer rows."""
    cls = PAYLOADS[EventKind(kind)]
    raw: dict[str, Any] = json.loads(data) if data else {}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True, slots=True, order=True)
class EventCursor:
    """A position in the event log that only moves forward, on both databases.

    `tx` orders by writing transaction on PostgreSQL (whose ids are handed out before
    commit, so a plain id can be passed by a transaction that commits later); SQLite has
    one writer at a time and leaves it 0.
    """

    tx: int = 0
    id: int = 0

    def __str__(self) -> str:
        return f"{self.tx}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> EventCursor:
        tx, _, ident = text.partition(".")
        return cls(int(tx), int(ident))


START = EventCursor()


@dataclass(frozen=True, slots=True)
class JobEvent:
    cursor: EventCursor
    job_id: str
    at: float
    payload: Payload

    @property
    def kind(self) -> EventKind:
        return self.payload.kind

    @property
    def id(self) -> int:
        return self.cursor.id
