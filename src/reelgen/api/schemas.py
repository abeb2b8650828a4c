"""Public shapes: the OpenAI Videos API objects, plus Reelgen's extra fields."""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict

from reelgen.domain.jobs import VARIANT_MEDIA_TYPES, Status
from reelgen.domain.spec import Operation
from reelgen.services.videos import VideoView


class VideoError(BaseModel):
    code: str
    message: str


PublicStatus = Literal["queued", "in_progress", "completed", "failed"]


class VideoPublic(BaseModel):
    id: str
    object: Literal["video"] = "video"
    model: str
    prompt: str | None
    status: PublicStatus
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    seconds: str
    size: str
    remixed_from_video_id: str | None
    error: VideoError | None
    stage: str
    queue_position: int | None
    eta_seconds: int | None

    @classmethod
    def from_view(cls, v: VideoView) -> VideoPublic:
        job = v.job
        status = Status.FAILED if job.status is Status.CANCELLED else job.status
        error = None
        if job.error_code is not None:
            error = VideoError.model_construct(
                code=job.error_code, message=job.error_message or job.error_code
            )
        spec = job.spec
        # From a stored job, whose values are already of these types: not validated again.
        return cls.model_construct(
            id=job.id,
            model=spec.requested_model,
            prompt=spec.prompt or None,  # None: forgotten past its retention
            status=cast(PublicStatus, status.value),
            progress=job.progress,
            created_at=int(job.created_at),
            completed_at=int(job.completed_at) if job.completed_at is not None else None,
            expires_at=int(job.expires_at) if job.expires_at is not None else None,
            seconds=str(spec.seconds),
            size=spec.size,
            remixed_from_video_id=spec.parent_id if spec.operation is Operation.REMIX else None,
            error=error,
            stage=job.stage.value,
            queue_position=v.queue_position,
            eta_seconds=v.eta_seconds,
        )


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoPublic]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class ImageReference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_url: str | None = None
    file_id: str | None = None


class VideoCreateBody(BaseModel):
    """The JSON body of a create; multipart bodies carry the same fields as form parts."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    model: str | None = None
    seconds: str | int | None = None
    size: str | None = None
    style: str | None = None
    seed: int | None = None
    input_reference: ImageReference | None = None
    service_tier: str | None = None
    """"batch" (or "flex"): lower priority, done within the batch deadline; "auto" or
    "default": the key's tier."""


class RemixBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The request is invalid; `error.param` says where."},
    401: {"model": ErrorBody, "description": "The API key is missing or unknown."},
    403: {"model": ErrorBody, "description": "The signed link is invalid or has expired."},
    404: {"model": ErrorBody, "description": "No such video, or its content is gone."},
    409: {
        "model": ErrorBody,
        "description": "The video's state, or an Idempotency-Key reused for another request.",
    },
    429: {
        "model": ErrorBody,
        "description": "A tier limit was reached.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        },
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: the errors it can answer, all in the OpenAI error shape."""
    return {status: ERROR_RESPONSES[status] for status in statuses}


_BYTES = {
    media_type: {"schema": {"type": "string", "format": "binary"}}
    for media_type in VARIANT_MEDIA_TYPES.values()
}
CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The bytes of the variant: an MP4, a WebP thumbnail or a JPEG spritesheet.",
        "content": _BYTES,
    },
    206: {"description": "The one byte range a `Range` header asked for.", "content": _BYTES},
    304: {"description": "Not modified: the `If-None-Match` ETag is current."},
    416: {"description": "The `Range` lies outside the object."},
}
