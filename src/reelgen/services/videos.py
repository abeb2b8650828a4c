"""Video jobs as users see them: submit, read, list, cancel, delete, remix, content."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import secrets
import tempfile
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelgen.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound, RateLimited
from reelgen.domain.jobs import (
    DAY_S,
    DEFAULT_SECONDS,
    DEFAULT_SIZE,
    MAX_SECONDS,
    MIN_SECONDS,
    SIZES,
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
from reelgen.domain.spec import JobSpec, Operation
from reelgen.media.decode import Ending, ending, png
from reelgen.models.base import BatchingModel, Conditioning, GenerationSpec, VideoModel
from reelgen.platform import ApiContext
from reelgen.safety.verdict import Action, Verdict
from reelgen.services import moderation
from reelgen.services.images import validate_reference_image
from reelgen.storage import keys
from reelgen.storage.signing import signed_url
from reelgen.store.jobs import Submitted, UsageView

MAX_SEED = 2**31 - 1
DATED_NAME = re.compile(r"^(?P<base>.+)-\d{4}-\d{2}-\d{2}$")


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
    service_tier: str | None = None


@dataclass(frozen=True, slots=True)
class VideoView:
    job: Job
    queue_position: int | None
    eta_seconds: int | None


def tier_limits(platform: ApiContext, tier: Tier) -> TierLimits:
    s = platform.settings
    if tier is Tier.PAID:
        return TierLimits(s.paid_max_concurrent, s.paid_max_per_day, s.paid_gpu_seconds_per_day)
    if tier is Tier.BATCH:
        return TierLimits(s.batch_max_concurrent, s.batch_max_per_day, s.batch_gpu_seconds_per_day)
    return TierLimits(s.free_max_concurrent, s.free_max_per_day, s.free_gpu_seconds_per_day)


SERVICE_TIERS = {"auto": None, "default": None, "flex": Tier.BATCH, "batch": Tier.BATCH}
"""A request may lower its key's tier to batch (hours, the fleet's spare capacity), never
raise it: "auto" and "default" keep the key's tier."""


def service_tier(user: User, requested: str | None) -> Tier:
    if requested is None:
        return user.tier
    if requested not in SERVICE_TIERS:
        raise InvalidRequest(
            f"Unknown service_tier {requested[:32]!r}; use one of "
            f"{', '.join(SERVICE_TIERS)} (batch runs within hours at lower priority).",
            param="service_tier",
        )
    tier = SERVICE_TIERS[requested] or user.tier
    if tier is Tier.BATCH and not user.allow_batch:
        raise Forbidden(
            f"This API key may not use service_tier={requested!r}; send 'default' (or leave "
            "it out), or ask the operator for a key that allows batch.",
            param="service_tier",
        )
    return tier


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


def resolve_model(names: dict[str, str], requested: str, adapters: Collection[str]) -> str | None:
    """The adapter a public model name maps to, or None when it names none."""
    if requested in adapters:
        return requested
    if requested in names:
        return names[requested]
    dated = DATED_NAME.match(requested)
    if dated is not None and dated["base"] in names:
        return names[dated["base"]]
    return None


def _model_names(platform: ApiContext, requested: str | None) -> tuple[str, str]:
    """(name as requested, adapter)."""
    names = platform.settings.model_names
    requested = requested or platform.settings.default_model
    adapters = platform.models
    adapter = resolve_model(names, requested, adapters) if len(requested) <= 128 else None
    if adapter is None or adapter not in adapters:
        public = sorted({*names, *adapters})
        raise InvalidRequest(
            f"Unknown model {requested[:128]!r}; available models: {', '.join(public)}.",
            param="model",
        )
    return requested, adapter


def _validated(
    platform: ApiContext, req: CreateVideo, *, seed: int
) -> tuple[JobSpec, bytes | None]:
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
    requested_model, model_name = _model_names(platform, req.model)
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
    spec = JobSpec(
        prompt=prompt,
        requested_model=requested_model,
        model=model_name,
        seconds=seconds,
        width=width,
        height=height,
        fps=platform.models[model_name].fps,
        seed=seed,
        style=req.style,
    )
    return spec, image


def _request_hash(
    req: CreateVideo, spec: JobSpec, image: bytes | None, source: bytes | None
) -> str:
    """What makes two submits under one Idempotency-Key the same request."""
    fields = {
        **{k: v for k, v in spec.columns().items() if k != "reference_key"},
        "seed": req.seed,
        "reference_sha256": hashlib.sha256(image).hexdigest() if image is not None else None,
        "source_sha256": hashlib.sha256(source).hexdigest() if source is not None else None,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _admit(limits: TierLimits, tier: Tier, now: float, gpu_s: float) -> Callable[[UsageView], None]:
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
        if usage.today_gpu_s + gpu_s > limits.gpu_seconds_per_day:
            wait = (usage.oldest_today or now) + DAY_S - now
            raise RateLimited(
                f"The {tier.value} tier allows {limits.gpu_seconds_per_day:.0f} GPU-seconds per "
                f"24 hours; you have used {usage.today_gpu_s:.0f} and this video needs "
                f"{gpu_s:.0f}. Retry in {math.ceil(wait)} s, or ask for a shorter or smaller "
                "video.",
                retry_after=math.ceil(wait),
                code="daily_limit_exceeded",
            )

    return admit


@dataclass(frozen=True, slots=True)
class _Submission:
    """A validated submit, ready for the store."""

    row: dict[str, Any]
    admit: Callable[[UsageView], None]
    idempotency: tuple[str, str] | None
    request_hash: str
    job_id: str
    image: bytes | None
    reference_key: str | None
    audit: list[dict[str, Any]] | None = None
    screened: tuple[bytes, ...] = ()
    """More images for the input checks: frames of an uploaded video to edit."""
    source_video: bytes | None = None
    """An uploaded video the job extends or edits, stored with its inputs."""

    @property
    def images(self) -> tuple[bytes, ...]:
        """What the input checks look at besides the prompt."""
        return (self.image, *self.screened) if self.image is not None else self.screened

    @property
    def has_inputs(self) -> bool:
        return self.reference_key is not None or self.source_video is not None


def _batching(
    platform: ApiContext, model: VideoModel, spec: JobSpec, cost_view: GenerationSpec
) -> tuple[str | None, float]:
    """The job's batch key and what a full batch saves (`BatchingModel`): only a new clip
    from text alone, on a model that runs jobs together, where batches are allowed."""
    limit = platform.settings.max_batch
    if (
        limit <= 1
        or spec.reference_key is not None
        or spec.operation in (Operation.EXTEND, Operation.EDIT)
        or not isinstance(model, BatchingModel)
    ):
        return None, 1.0
    key = model.batch_key(cost_view)
    return key, (model.batch_gain(cost_view, limit) if key is not None else 1.0)


def _prepare(
    platform: ApiContext,
    user: User,
    req: CreateVideo,
    *,
    idempotency_key: str | None,
    parent: Job | None,
    operation: Operation,
    source_video: bytes | None = None,
    continued_s: int | None = None,
) -> _Submission:
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 characters.", param="Idempotency-Key"
        )
    raw = secrets.token_bytes(20)  # one system call for the id and the seed
    seed = req.seed if req.seed is not None else int.from_bytes(raw[16:]) % MAX_SEED
    spec, image = _validated(platform, req, seed=seed)
    _check_inputs(platform, spec.model, req.model, image is not None, operation)
    made_s = spec.seconds
    if operation is Operation.EXTEND and continued_s is not None:  # only the new part is made
        made_s = spec.seconds - continued_s
    _check_shape(platform, spec, req.model, made_s, operation, uploaded=source_video is not None)
    job_id = f"video_{raw[:16].hex()}"
    reference_key = keys.reference(job_id) if image is not None else None
    spec = dataclasses.replace(
        spec,
        reference_key=reference_key,
        parent_id=parent.id if parent is not None else None,
        operation=operation,
    )
    # Only a replay under the same Idempotency-Key compares it.
    request_hash = _request_hash(req, spec, image, source_video) if idempotency_key else ""
    now = platform.clock()
    tier = service_tier(user, req.service_tier)
    model = platform.model(spec.model)
    cost_view = GenerationSpec.of(spec)
    if made_s != spec.seconds:
        cost_view = dataclasses.replace(cost_view, seconds=made_s)
    if continued_s is not None and Conditioning.CLIP in model.accepts:
        cost_view = dataclasses.replace(  # the source's last frames run too; no file is read
            cost_view, context_video=Path(keys.source_video(job_id)), context_seconds=continued_s
        )
    if operation is Operation.EDIT:  # an edit's step count; estimates read no file
        cost_view = dataclasses.replace(cost_view, source_video=Path(keys.source_video(job_id)))
    estimated_s = model.estimate_seconds(cost_view)
    batch_key, batch_gain = _batching(platform, model, spec, cost_view)
    row = dict(
        spec.columns(),
        id=job_id,
        user_id=user.id,
        tier=tier.value,
        status=Status.QUEUED.value,
        stage=Stage.WAITING_FOR_GPU.value,
        progress=0,
        step=0,
        total_steps=model.num_steps(cost_view),
        estimated_seconds=estimated_s,
        batch_key=batch_key,
        batch_gain=batch_gain,
        likeness_consent=user.likeness_consent,
        age_verified=user.age_verified,
        created_at=now,
        not_before=now,
        attempt=0,
        max_attempts=platform.settings.max_attempts,
        strikes=0,
        attempt_start_step=0,
        cancel_requested=False,
        checkpoint_step=0,
    )
    return _Submission(
        row=row,
        admit=_admit(tier_limits(platform, tier), tier, now, estimated_s),
        idempotency=(user.id, idempotency_key) if idempotency_key else None,
        request_hash=request_hash,
        job_id=job_id,
        image=image,
        reference_key=reference_key,
    )


def _check_shape(
    platform: ApiContext,
    spec: JobSpec,
    requested: str | None,
    made_s: int,
    operation: Operation,
    *,
    uploaded: bool,
) -> None:
    """Refuses a size the model does not make, and a clip longer than it makes in one run
    (an extension: the part it adds). `uploaded`: the size is an uploaded video's."""
    adapter = platform.models[spec.model]
    name = requested or spec.model
    param = "video" if uploaded or operation is Operation.EDIT else "size"
    if spec.size not in adapter.sizes:
        able = sorted(n for n, m in platform.models.items() if spec.size in m.sizes)
        hint = f" Models that make it: {', '.join(able)}." if able else ""
        sizes = ", ".join(s for s in SIZES if s in adapter.sizes)
        raise InvalidRequest(
            f"The model {name} makes videos of {sizes}, not {spec.size}.{hint}",
            param=param,
            code="unsupported_size",
        )
    if made_s > adapter.max_seconds:
        what = (
            f"adds at most {adapter.max_seconds} s to a video"
            if (operation is Operation.EXTEND)
            else f"makes videos of at most {adapter.max_seconds} s"
        )
        raise InvalidRequest(
            f"The model {name} {what}; this one asks for {made_s} s.",
            param="video" if operation is Operation.EDIT else "seconds",
            code="unsupported_duration",
        )


def _check_inputs(
    platform: ApiContext, model: str, requested: str | None, image: bool, operation: Operation
) -> None:
    """Refuses what the model would ignore (a reference image, or a video's last frame to
    continue from, for a model that takes none; a video to edit for one that cannot) and a
    request without the image an image-to-video model needs."""
    adapter = platform.models[model]
    name = requested or model
    needs, param = None, "video"
    if operation is Operation.EDIT:
        needs, what = Conditioning.VIDEO, "edit videos"
    elif operation is Operation.EXTEND:
        needs, what = Conditioning.IMAGE, "continue videos (it takes no image to start from)"
        if Conditioning.CLIP in adapter.accepts:
            needs = Conditioning.CLIP
    elif image:
        needs, what, param = Conditioning.IMAGE, "take a reference image", "input_reference"
    if needs is not None and needs not in adapter.accepts:
        able = sorted(n for n, m in platform.models.items() if needs in m.accepts)
        hint = f" Models that can: {', '.join(able)}." if able else ""
        raise InvalidRequest(
            f"The model {name} cannot {what}.{hint}", param=param, code="unsupported_input"
        )
    if Conditioning.IMAGE in adapter.requires and needs is None:
        raise InvalidRequest(
            f"The model {name} makes videos from an image: send one as input_reference.",
            param="input_reference",
            code="missing_input",
        )


def _store_inputs(platform: ApiContext, sub: _Submission) -> None:
    """The job's inputs: its reference image and an uploaded source video."""
    if sub.image is not None and sub.reference_key is not None:
        platform.objects.put(sub.reference_key, sub.image)
    if sub.source_video is not None:
        platform.objects.put(
            keys.source_video(sub.job_id), sub.source_video, content_type="video/mp4"
        )


def _check(platform: ApiContext, user: User, sub: _Submission) -> list[Verdict]:
    return moderation.check_input(
        platform,
        str(sub.row["prompt"]),
        sub.row["style"],
        sub.images,
        consent=user.likeness_consent,
        adult=user.age_verified,
    )


def _moderated(
    platform: ApiContext, user: User, sub: _Submission, verdicts: list[Verdict]
) -> _Submission:
    """The submission with its verdicts' audit rows, or the refusal (audited) if it may not
    be generated. One that needs a review is queued held (`awaiting_review`) until an
    admin decides."""
    rows = moderation.audit_rows(
        platform, verdicts, user=user, prompt=str(sub.row["prompt"]), images=sub.images
    )
    verdict = moderation.worst(verdicts)
    if verdict.action is Action.BLOCK:
        platform.audit.record(rows)
        raise moderation.refusal(verdict, from_video=sub.source_video is not None)
    row = sub.row
    if verdict.action is Action.REVIEW:
        row = {**row, "stage": Stage.AWAITING_REVIEW.value}
    return dataclasses.replace(sub, row=row, audit=rows)


def _enqueue(platform: ApiContext, sub: _Submission) -> Future[Submitted]:
    return platform.jobs.submit_future(
        sub.row,
        admit=sub.admit,
        idempotency=sub.idempotency,
        request_hash=sub.request_hash,
        audit=sub.audit,
    )


def _settle(platform: ApiContext, sub: _Submission, outcome: Future[Submitted]) -> Submitted:
    """Cleans up after a refusal or a replay; announces a new job. Returns the outcome or
    raises what refused it."""
    try:
        done = outcome.result()
    except BaseException:
        if sub.has_inputs:
            platform.objects.delete_prefix(keys.inputs_prefix(sub.job_id))
        raise
    if not done.created and sub.has_inputs:
        platform.objects.delete_prefix(keys.inputs_prefix(sub.job_id))
    if done.created:
        platform.bus.work_available(done.job.model)
    return done


def submit(
    platform: ApiContext,
    user: User,
    req: CreateVideo,
    *,
    idempotency_key: str | None = None,
    parent: Job | None = None,
    operation: Operation = Operation.CREATE,
    source_video: bytes | None = None,
    screened: tuple[bytes, ...] = (),
    continued_s: int | None = None,
) -> tuple[Job, bool]:
    """Validates, stores the reference image (and an extension's or edit's uploaded source
    video), and enqueues; nothing is stored on refusal. `screened`: more images for the
    input checks; `continued_s`: an extension's source length (the model makes the rest).

    Returns once the job is committed; concurrent submits share a commit (group commit)."""
    sub = _prepare(
        platform,
        user,
        req,
        idempotency_key=idempotency_key,
        parent=parent,
        operation=operation,
        source_video=source_video,
        continued_s=continued_s,
    )
    sub = dataclasses.replace(sub, screened=screened, source_video=source_video)
    sub = _moderated(platform, user, sub, _check(platform, user, sub))
    _store_inputs(platform, sub)
    done = _settle(platform, sub, _enqueue(platform, sub))
    return done.job, done.created


async def submit_async(
    platform: ApiContext, user: User, req: CreateVideo, *, idempotency_key: str | None = None
) -> tuple[VideoView, bool]:
    """`submit` for an event loop: waits for the commit without blocking the loop.

    Returns the new job's view and whether it was created."""
    sub = _prepare(
        platform,
        user,
        req,
        idempotency_key=idempotency_key,
        parent=None,
        operation=Operation.CREATE,
    )
    verdicts = await asyncio.wrap_future(platform.safety_pool.submit(_check, platform, user, sub))
    if moderation.worst(verdicts).action is Action.BLOCK:
        await asyncio.to_thread(_moderated, platform, user, sub, verdicts)  # raises
    sub = _moderated(platform, user, sub, verdicts)
    if sub.image is not None:
        await asyncio.to_thread(_store_inputs, platform, sub)
    outcome = _enqueue(platform, sub)
    with contextlib.suppress(Exception):  # _settle re-raises it
        await asyncio.wrap_future(outcome)
    if sub.reference_key is None:
        return _finish(platform, sub, outcome)
    # file deletes: off the loop
    return await asyncio.to_thread(_finish, platform, sub, outcome)


def _finish(
    platform: ApiContext, sub: _Submission, outcome: Future[Submitted]
) -> tuple[VideoView, bool]:
    done = _settle(platform, sub, outcome)
    return view(platform, done.job), done.created


def get_job(platform: ApiContext, user: User, video_id: str) -> Job:
    job = platform.jobs.get(video_id)
    if job is None or job.user_id != user.id or job.deleted_at is not None:
        raise NotFound(f"No video found with id {video_id!r}.", param="video_id")
    return job


def get_view(platform: ApiContext, user: User, video_id: str) -> VideoView:
    """`view(get_job(...))` on the poll path."""
    job = platform.jobs.get(video_id)
    if job is None or job.user_id != user.id or job.deleted_at is not None:
        raise NotFound(f"No video found with id {video_id!r}.", param="video_id")
    return view(platform, job)


def view(platform: ApiContext, job: Job) -> VideoView:
    """A queued job's place and ETA are the dispatcher's latest forecast (`None` until its
    first, within a second or so of the submit; the ETA also while no worker serves it)."""
    if job.status is Status.QUEUED:
        if job.eta_at is None:
            return VideoView(job, job.queue_position, None)
        wait = max(0.0, job.eta_at - platform.clock())
        return VideoView(job, job.queue_position, math.ceil(wait + job.estimated_seconds))
    if job.status is Status.IN_PROGRESS:
        return VideoView(job, 0, math.ceil(job.estimated_seconds * (100 - job.progress) / 100))
    return VideoView(job, None, None)


def list_jobs(
    platform: ApiContext, user: User, *, after: str | None, limit: int, order: str
) -> tuple[list[Job], bool]:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    after_seq = None
    if after is not None:
        after_seq = platform.jobs.seq_for_user(user.id, after)
        if after_seq is None:
            raise NotFound(f"No video found with id {after!r} to list after.", param="after")
    jobs = platform.jobs.list_for_user(
        user.id, after_seq=after_seq, limit=limit + 1, descending=order == "desc"
    )
    return jobs[:limit], len(jobs) > limit


def cancel(platform: ApiContext, user: User, video_id: str) -> Job:
    job = get_job(platform, user, video_id)
    if job.status in (Status.COMPLETED, Status.FAILED):
        raise Conflict(
            f"Video {video_id} already ended with status {job.status.value}; nothing to cancel.",
            code="job_finished",
        )
    cancelled = platform.jobs.request_cancel(job.id, platform.clock())
    if cancelled.cancel_requested:
        # Tells the worker now instead of at its next heartbeat (best effort: the flag in
        # the row is what counts).
        platform.bus.publish_progress({"id": job.id, "cancel_requested": True})
    return cancelled


def delete(platform: ApiContext, user: User, video_id: str) -> None:
    """Cancels a live job, then removes its stored content; the row stays for the audit."""
    job = get_job(platform, user, video_id)
    if not job.status.is_terminal:
        cancel(platform, user, video_id)
    platform.jobs.mark_deleted(job.id, platform.clock())
    for prefix in keys.job_prefixes(job.id):
        platform.objects.delete_prefix(prefix)


def remix(
    platform: ApiContext, user: User, video_id: str, prompt: str | None, idempotency_key: str | None
) -> Job:
    """A new job with the source's size, length, style and seed and a new prompt. An edit
    or an extension is remixed by editing or extending its own source again with the new
    prompt (the new video names that source as its parent)."""
    source = get_job(platform, user, video_id)
    if source.status is not Status.COMPLETED:
        raise InvalidRequest(
            f"Only completed videos can be remixed; {video_id} is {source.status.value}.",
            param="video_id",
        )
    spec = source.spec
    if spec.operation in (Operation.EDIT, Operation.EXTEND):
        return _redo(platform, user, source, prompt, idempotency_key)
    image = None
    if spec.reference_key is not None:
        if not platform.objects.exists(spec.reference_key):
            raise InvalidRequest(
                f"The reference image of {video_id} has expired or was deleted, so it cannot "
                "be remixed; create a new video with a new reference image instead.",
                param="video_id",
                code="reference_expired",
            )
        image = platform.objects.get(spec.reference_key)
    req = CreateVideo(
        prompt=prompt,
        model=spec.requested_model,
        seconds=spec.seconds,
        size=spec.size,
        style=spec.style,
        seed=spec.seed,
        reference_image=image,
    )
    job, _ = submit(
        platform,
        user,
        req,
        idempotency_key=idempotency_key,
        parent=source,
        operation=Operation.REMIX,
    )
    return job


def _redo(
    platform: ApiContext, user: User, job: Job, prompt: str | None, idempotency_key: str | None
) -> Job:
    origin: str | bytes
    if job.spec.parent_id is not None:
        origin = job.spec.parent_id
    else:
        key = keys.source_video(job.id)
        if not platform.objects.exists(key):
            raise InvalidRequest(
                f"The video {job.id} was made from an upload that is no longer stored, so "
                "it cannot be remixed.",
                param="video_id",
                code="video_expired",
            )
        origin = platform.objects.get(key)
    if job.spec.operation is Operation.EDIT:
        return edit(platform, user, origin, prompt, idempotency_key, like=job.spec)
    return extend(platform, user, origin, prompt, job.spec.seconds, idempotency_key, like=job.spec)


def extend(
    platform: ApiContext,
    user: User,
    source: str | bytes,
    prompt: str | None,
    seconds: str | int | None,
    idempotency_key: str | None,
    *,
    like: JobSpec | None = None,
) -> Job:
    """A new job that continues a video (a completed one by id, or an uploaded MP4): the
    worker conditions the model on the source's last frame, generates the rest and stitches
    the two; `seconds` is the total. `like`: the job a remix redoes (an upload's extension
    keeps its model, style and seed; one by id takes the source video's)."""
    if seconds is None:
        raise InvalidRequest(
            "seconds (the extended video's total length) is required.", param="seconds"
        )
    total = parse_seconds(seconds)
    if isinstance(source, bytes):
        end = _read_upload(source, stills=0)
        _longer(total, end.seconds, "the uploaded video")
        req = CreateVideo(
            prompt=prompt, seconds=total, size=_upload_size(end), reference_image=end.png(),
            **_settings_of(like),
        )  # fmt: skip
        # its last frame goes through the reference-image checks (it conditions the model)
        return _derived(
            platform, user, req, idempotency_key, Operation.EXTEND, upload=source,
            continued_s=end.seconds,
        )  # fmt: skip
    parent = _completed(platform, user, source, "extended")
    _longer(total, parent.spec.seconds, source)
    req = _like(parent, prompt, seconds=total)
    return _derived(
        platform, user, req, idempotency_key, Operation.EXTEND, parent=parent,
        continued_s=parent.spec.seconds,
    )  # fmt: skip


def edit(
    platform: ApiContext,
    user: User,
    source: str | bytes,
    prompt: str | None,
    idempotency_key: str | None,
    *,
    like: JobSpec | None = None,
) -> Job:
    """A new job that changes a video (a completed one by id, or an uploaded MP4) as the
    prompt says: the same length and size, the source's motion and layout kept. `like`: as
    for `extend`."""
    if isinstance(source, bytes):
        end = _read_upload(source, stills=EDIT_STILLS)
        if not MIN_SECONDS <= end.seconds <= MAX_SECONDS:
            raise InvalidRequest(
                f"The uploaded video is {end.seconds} s long; videos from {MIN_SECONDS} to "
                f"{MAX_SECONDS} s can be edited.",
                param="video",
            )
        req = CreateVideo(
            prompt=prompt, seconds=end.seconds, size=_upload_size(end), **_settings_of(like)
        )
        screened = tuple(png(still) for still in end.stills)
        return _derived(
            platform, user, req, idempotency_key, Operation.EDIT, upload=source, screened=screened
        )
    parent = _completed(platform, user, source, "edited")
    req = _like(parent, prompt, seconds=parent.spec.seconds)
    return _derived(platform, user, req, idempotency_key, Operation.EDIT, parent=parent)


EDIT_STILLS = 4
"""Frames of an uploaded video to edit that go through the reference-image checks (all of
it shapes the output; a video of ours passed the output checks when it was made)."""


def _completed(platform: ApiContext, user: User, video_id: str, verb: str) -> Job:
    """The caller's completed video, whose file is still stored."""
    parent = get_job(platform, user, video_id)
    if parent.status is not Status.COMPLETED or parent.video_key is None:
        raise InvalidRequest(
            f"Only completed videos can be {verb}; {video_id} is {parent.status.value}.",
            param="video",
        )
    if not platform.objects.exists(parent.video_key):
        raise InvalidRequest(
            f"The video {video_id} has expired or was deleted, so it cannot be {verb}.",
            param="video",
            code="video_expired",
        )
    return parent


def _settings_of(spec: JobSpec | None) -> dict[str, Any]:
    """A remixed job's model, style and seed (none: the defaults and a new seed)."""
    if spec is None:
        return {}
    return {"model": spec.requested_model, "style": spec.style, "seed": spec.seed}


def _like(parent: Job, prompt: str | None, *, seconds: int) -> CreateVideo:
    """A request with the parent's model, size, style and seed and a new prompt."""
    spec = parent.spec
    return CreateVideo(prompt=prompt, seconds=seconds, size=spec.size, **_settings_of(spec))


def _derived(
    platform: ApiContext,
    user: User,
    req: CreateVideo,
    idempotency_key: str | None,
    operation: Operation,
    *,
    parent: Job | None = None,
    upload: bytes | None = None,
    screened: tuple[bytes, ...] = (),
    continued_s: int | None = None,
) -> Job:
    job, _ = submit(
        platform,
        user,
        req,
        idempotency_key=idempotency_key,
        parent=parent,
        operation=operation,
        source_video=upload,
        screened=screened,
        continued_s=continued_s,
    )
    return job


def _longer(total: int, seconds: int, what: str) -> None:
    if total <= seconds:
        raise InvalidRequest(
            f"seconds is the extended video's total length, so it must be more than the "
            f"{seconds} s of {what}; got {total}.",
            param="seconds",
        )


def _read_upload(data: bytes, *, stills: int) -> Ending:
    """An uploaded source video, read back to learn its size and length (kept with the
    job's inputs for the worker when the job is accepted)."""
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        try:
            return ending(Path(f.name), stills=stills)
        except Exception as exc:
            raise InvalidRequest(
                f"The uploaded video cannot be read as a video: {exc}", param="video"
            ) from exc


def _upload_size(end: Ending) -> str:
    height, width = end.frame.shape[:2]
    size = f"{width}x{height}"
    if size not in SIZES:
        raise InvalidRequest(
            f"The uploaded video is {size}; videos of these sizes can be used: {', '.join(SIZES)}.",
            param="video",
        )
    return size


def content_key(platform: ApiContext, user: User, video_id: str, variant: Variant) -> str:
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


def content_url(platform: ApiContext, key: str) -> str:
    """Where a content redirect goes: the CDN (signed for its edge) when one is configured,
    else the store's own expiring URL (presigned on S3)."""
    settings = platform.settings
    expires = int(platform.clock()) + settings.signed_url_ttl_seconds
    if settings.cdn_base_url is not None and settings.cdn_signing_secret is not None:
        if keys.quarantined(key):
            raise ValueError("quarantined content is never given a URL")
        secret = settings.cdn_signing_secret.get_secret_value().encode()
        return signed_url(settings.cdn_base_url, secret, key, expires)
    return platform.objects.url_for(key, expires)
