"""Public shapes: the OpenAI Videos API objects, plus Reelgen's extra fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from reelgen.domain.jobs import Status
from reelgen.services.videos import VideoView


class VideoError(BaseModel):
    code: str
    message: str


class VideoPublic(BaseModel):
    id: str
    object: Literal["video"] = "video"
    model: str
    prompt: str | None
    status: Literal["queued", "in_progress", "completed", "failed"]
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
            error = VideoError(code=job.error_code, message=job.error_message or job.error_code)
        return cls(
            id=job.id,
            model=job.model,
            prompt=job.prompt,
            status=status.value,  # type: ignore[arg-type]
            progress=job.progress,
            created_at=int(job.created_at),
            completed_at=int(job.completed_at) if job.completed_at is not None else None,
            expires_at=int(job.expires_at) if job.expires_at is not None else None,
            seconds=str(job.seconds),
            size=job.size,
            remixed_from_video_id=job.remixed_from,
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
