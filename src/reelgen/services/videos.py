"""Video jobs as users see them: submit, read, list, cancel, delete, remix, content."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
from dataclasses import dataclass

from reelgen.domain.errors import Conflict, InvalidRequest, NotFound, RateLimited
from reelgen.domain.jobs import (
    DAY_S,
    DEFAULT_SECONDS,
    DEFAULT_SIZE,
    FPS,
    Job,
    Stage,
    Status,
    Tier,
    TierLimits,
    User,
    Variant,
    parse_seconds,
    parse_size,
)
from reelgen.models.base import GenerationSpec
from reelgen.models.registry import AVAILABLE
from reelgen.platform import Platform
from reelgen.services.images import validate_reference_image
from reelgen.storage.signing import sign_path
from reelgen.store.jobs import UsageView

MODEL_ALIASES = {"sora-2": "reference", "sora-2-pro": "reference"}
MAX_SEED = 2**31 - 1


@dataclass(frozen=True, slots=True)
class CreateVideo:
    """A create request after transport parsing, before validation."""

    prompt: str | None
    model: str | None = None
    seconds: str | int | None = None
    size: str | None = None
    style: str | None = None
    seed: int | None = None
    reference_image: bytes | None = None
    reference_url: str | None = None


@dataclass(frozen=True, slots=True)
class VideoView:
    job: Job
    queue_position: int | None
    eta_seconds: int | None


def tier_limits(platform: Platform, tier: Tier) -> TierLimits:
    s = platform.settings
    if tier is Tier.PAID:
        return TierLimits(s.paid_max_concurrent, s.paid_max_per_day)
    return TierLimits(s.free_max_concurrent, s.free_max_per_day)


def _decode_data_url(url: str) -> bytes:
    if not url.startswith("data:") or ";base64," not in url:
        raise InvalidRequest(
            "input_reference.image_url must be a base64 data: URL; this server does not fetch "
            "remote images. Upload the file instead.",
            param="input_reference",
        )
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            "input_reference.image_url is not valid base64.", param="input_reference"
        ) from exc


def _resolve_model(name: str | None, platform: Platform) -> str:
    name = name or platform.settings.default_model
    name = MODEL_ALIASES.get(name, name)
    if name not in AVAILABLE:
        raise InvalidRequest(
            f"Unknown model {name!r}; available models: {', '.join(AVAILABLE)}.", param="model"
        )
    return name


def _validated(platform: Platform, req: CreateVideo) -> tuple[dict[str, object], bytes | None]:
    s = platform.settings
    prompt = (req.prompt or "").strip()
    if not prompt:
        raise InvalidRequest("prompt is required and must not be empty.", param="prompt")
    if len(prompt) > s.max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(prompt)} characters; the limit is {s.max_prompt_chars}.",
            param="prompt",
        )
    width, height = parse_size(req.size or DEFAULT_SIZE)
    seconds = parse_seconds(req.seconds if req.seconds is not None else DEFAULT_SECONDS)
    model_name = _resolve_model(req.model, platform)
    styles = platform.model(model_name).styles
    if req.style is not None and req.style not in styles:
        raise InvalidRequest(
            f"Unknown style {req.style!r}; styles are {', '.join(sorted(styles))}.",
            param="style",
        )
    if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}.", param="seed")
    if req.reference_image is not None and req.reference_url is not None:
        raise InvalidRequest(
            "Give input_reference as a file or as image_url, not both.", param="input_reference"
        )
    image = req.reference_image
    if req.reference_url is not None:
        image = _decode_data_url(req.reference_url)
    if image is not None:
        image = validate_reference_image(
            image, max_bytes=s.max_reference_bytes, max_pixels=s.max_reference_pixels
        )
    fields: dict[str, object] = dict(
        prompt=prompt,
        model=model_name,
        seconds=seconds,
        width=width,
        height=height,
        style=req.style,
        seed=req.seed,
        reference_sha256=hashlib.sha256(image).hexdigest() if image is not None else None,
    )
    return fields, image


def _admit(limits: TierLimits, tier: Tier, now: float):
    def admit(usage: UsageView) -> None:
        if usage.active >= limits.max_concurrent:
            raise RateLimited(
                f"The {tier.value} tier allows {limits.max_concurrent} concurrent jobs and you "
                f"have {usage.active} queued or running; retry when one finishes.",
                retry_after=15,
                code="concurrency_limit_exceeded",
            )
        if usage.today >= limits.max_per_day:
            wait = (usage.oldest_today or now) + DAY_S - now
            raise RateLimited(
                f"The {tier.value} tier allows {limits.max_per_day} jobs per 24 hours and you "
                f"have used them all; retry in {math.ceil(wait)} s.",
                retry_after=math.ceil(wait),
                code="daily_limit_exceeded",
            )

    return admit


def submit(
    platform: Platform,
    user: User,
    req: CreateVideo,
    *,
    idempotency_key: str | None = None,
    remixed_from: Job | None = None,
) -> tuple[Job, bool]:
    """Validates, stores the reference image, and enqueues; nothing is stored on refusal."""
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key"
        )
    fields, image = _validated(platform, req)
    if remixed_from is not None:
        fields["remixed_from"] = remixed_from.id
    request_hash = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    now = platform.clock()
    job_id = f"video_{secrets.token_hex(16)}"
    seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
    model_name = str(fields["model"])
    spec = GenerationSpec(
        prompt=str(fields["prompt"]),
        seconds=int(fields["seconds"]),  # type: ignore[call-overload]
        width=int(fields["width"]),  # type: ignore[call-overload]
        height=int(fields["height"]),  # type: ignore[call-overload]
        seed=seed,
        style=req.style,
        fps=FPS,
    )
    model = platform.model(model_name)
    reference_key = f"inputs/{job_id}/reference" if image is not None else None
    row = dict(
        id=job_id,
        user_id=user.id,
        tier=user.tier.value,
        model=model_name,
        prompt=spec.prompt,
        seconds=spec.seconds,
        width=spec.width,
        height=spec.height,
        seed=seed,
        style=spec.style,
        reference_key=reference_key,
        remixed_from=remixed_from.id if remixed_from else None,
        status=Status.QUEUED.value,
        stage=Stage.WAITING_FOR_GPU.value,
        progress=0,
        step=0,
        total_steps=model.num_steps(spec),
        estimated_seconds=model.estimate_seconds(spec),
        created_at=now,
        not_before=now,
        rank_at=platform.policy.rank(user.tier, now),
        attempt=0,
        max_attempts=platform.settings.max_attempts,
        cancel_requested=False,
        checkpoint_step=0,
    )
    if image is not None and reference_key is not None:
        platform.objects.put_bytes(reference_key, image)
    try:
        job, created = platform.jobs.submit(
            row,
            admit=_admit(tier_limits(platform, user.tier), user.tier, now),
            idempotency=(user.id, idempotency_key) if idempotency_key else None,
            request_hash=request_hash,
        )
    except BaseException:
        if reference_key is not None:
            platform.objects.delete_prefix(f"inputs/{job_id}")
        raise
    if not created and reference_key is not None:
        platform.objects.delete_prefix(f"inputs/{job_id}")
    if created:
        platform.bus.work_available(job.model)
    return job, created


def get_job(platform: Platform, user: User, video_id: str) -> Job:
    job = platform.jobs.get(video_id)
    if job is None or job.user_id != user.id or job.deleted_at is not None:
        raise NotFound(f"No video found with id {video_id!r}.", param="video_id")
    return job


def view(platform: Platform, job: Job) -> VideoView:
    if job.status is Status.QUEUED:
        ahead, ahead_seconds, live = platform.jobs.queue_stats(job, platform.clock())
        eta = ahead_seconds / max(1, live) + job.estimated_seconds
        return VideoView(job, ahead, math.ceil(eta))
    if job.status is Status.IN_PROGRESS:
        return VideoView(job, 0, math.ceil(job.estimated_seconds * (100 - job.progress) / 100))
    return VideoView(job, None, None)


def list_jobs(
    platform: Platform, user: User, *, after: str | None, limit: int, order: str
) -> tuple[list[Job], bool]:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    after_seq = get_job(platform, user, after).seq if after else None
    jobs = platform.jobs.list_for_user(
        user.id, after_seq=after_seq, limit=limit + 1, descending=order == "desc"
    )
    return jobs[:limit], len(jobs) > limit


def cancel(platform: Platform, user: User, video_id: str) -> Job:
    job = get_job(platform, user, video_id)
    if job.status in (Status.COMPLETED, Status.FAILED):
        raise Conflict(
            f"Video {video_id} already ended with status {job.status.value}; nothing to cancel.",
            code="job_finished",
        )
    cancelled = platform.jobs.request_cancel(job.id, platform.clock())
    if cancelled.cancel_requested:
        platform.signal_cancel(job.id)
    return cancelled


def delete(platform: Platform, user: User, video_id: str) -> None:
    """Cancels a live job, then removes its stored content; the row stays for the audit."""
    job = get_job(platform, user, video_id)
    if not job.status.is_terminal:
        cancel(platform, user, video_id)
    platform.jobs.mark_deleted(job.id, platform.clock())
    platform.objects.delete_prefix(f"videos/{job.id}")
    platform.objects.delete_prefix(f"inputs/{job.id}")


def remix(
    platform: Platform, user: User, video_id: str, prompt: str | None, idempotency_key: str | None
) -> Job:
    """A new job with the source's size, length, style and seed and a new prompt."""
    source = get_job(platform, user, video_id)
    if source.status is not Status.COMPLETED:
        raise InvalidRequest(
            f"Only completed videos can be remixed; {video_id} is {source.status.value}.",
            param="video_id",
        )
    image = platform.objects.get_bytes(source.reference_key) if source.reference_key else None
    req = CreateVideo(
        prompt=prompt,
        model=source.model,
        seconds=source.seconds,
        size=source.size,
        style=source.style,
        seed=source.seed,
        reference_image=image,
    )
    job, _ = submit(platform, user, req, idempotency_key=idempotency_key, remixed_from=source)
    return job


def content_key(platform: Platform, user: User, video_id: str, variant: Variant) -> str:
    job = get_job(platform, user, video_id)
    if job.status is not Status.COMPLETED:
        raise InvalidRequest(
            f"Video {video_id} is {job.status.value}; content is available once it is completed.",
            param="video_id",
        )
    key = job.content_key(variant)
    if key is None:
        raise NotFound(f"The content of video {video_id} has expired or was deleted.")
    return key


def signed_content_url(platform: Platform, key: str) -> str:
    expires = int(platform.clock()) + platform.settings.signed_url_ttl_seconds
    return sign_path(platform.signing_secret, key, expires)
