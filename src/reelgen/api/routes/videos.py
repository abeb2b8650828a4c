"""The `/v1/videos` routes: parse, call one service function, shape the answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from reelgen.api.content import object_response
from reelgen.api.deps import ApiDep, CurrentUser, run_sync
from reelgen.api.progress import ProgressHub
from reelgen.api.schemas import (
    CONTENT_RESPONSES,
    RemixBody,
    VideoCreateBody,
    VideoDeleted,
    VideoList,
    VideoPublic,
    error_responses,
)
from reelgen.domain.errors import InvalidRequest, NotFound, Unavailable
from reelgen.domain.jobs import VARIANT_MEDIA_TYPES, Job, User, Variant
from reelgen.platform import ApiContext
from reelgen.services import videos
from reelgen.services.videos import CreateVideo

router = APIRouter(prefix="/v1/videos", tags=["videos"])

FORM_FIELDS = {"prompt", "model", "seconds", "size", "style", "seed", "service_tier"}
REFERENCE_URL_FIELD = "input_reference[image_url]"
REFERENCE_FILE_ID_FIELD = "input_reference[file_id]"
SSE_MIN_INTERVAL_S = 1.0
SSE_KEEPALIVE_S = 15.0


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic puts nested models in `$defs`, which an OpenAPI operation cannot point into."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**defs[ref.removeprefix("#/$defs/")], **rest})
        return {k: resolve(v) for k, v in node.items()}

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_CREATE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(VideoCreateBody.model_json_schema())},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        **{f: {"type": "string"} for f in sorted(FORM_FIELDS)},
                        "input_reference": {"type": "string", "format": "binary"},
                        REFERENCE_URL_FIELD: {"type": "string"},
                    },
                }
            },
        },
    }
}


def _public(platform: ApiContext, job: Job) -> VideoPublic:
    return VideoPublic.from_view(videos.view(platform, job))


def _pydantic_message(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    if err["type"] == "extra_forbidden":
        return f"Unknown field {param!r}.", param
    return (f"{param}: {err['msg']}" if param else err["msg"]), param


def _from_json(raw: bytes) -> CreateVideo:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    try:
        body = VideoCreateBody.model_validate(data)
    except ValidationError as exc:
        message, param = _pydantic_message(exc)
        raise InvalidRequest(message, param=param) from exc
    ref = body.input_reference
    if ref is not None and ref.file_id is not None:
        raise InvalidRequest(
            "input_reference.file_id is not supported; upload the image instead.",
            param="input_reference",
        )
    return CreateVideo(
        prompt=body.prompt,
        model=body.model,
        seconds=body.seconds,
        size=body.size,
        style=body.style,
        seed=body.seed,
        reference_url=ref.image_url if ref is not None else None,
        service_tier=body.service_tier,
    )


def _data_url_chars(max_bytes: int) -> int:
    """The longest `data:` URL that can hold an image of `max_bytes` (base64 plus its header),
    so a reference image has one size limit however it is sent."""
    return 4 * -(-max_bytes // 3) + 256


async def _from_form(request: Request, max_bytes: int) -> CreateVideo:
    part_limit = max(64 * 1024, _data_url_chars(max_bytes))
    async with request.form(max_files=1, max_fields=16, max_part_size=part_limit) as form:
        values: dict[str, str] = {}
        image: bytes | None = None
        for name, value in form.multi_items():
            if name in values or (name == "input_reference" and image is not None):
                raise InvalidRequest(f"Field {name!r} is given more than once.", param=name)
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise InvalidRequest(f"Unexpected file field {name!r}.", param=name)
                image = await value.read(max_bytes + 1)
            elif name == "input_reference":
                raise InvalidRequest("input_reference must be an uploaded file.", param=name)
            elif name in FORM_FIELDS or name == REFERENCE_URL_FIELD:
                values[name] = value
            elif name == REFERENCE_FILE_ID_FIELD:
                raise InvalidRequest(
                    "input_reference.file_id is not supported; upload the image instead.",
                    param="input_reference",
                )
            else:
                raise InvalidRequest(f"Unknown field {name!r}.", param=name)
    seed = values.get("seed")
    if seed is not None and not seed.strip().isdigit():
        raise InvalidRequest(f"seed must be a non-negative integer; got {seed!r}.", param="seed")
    return CreateVideo(
        prompt=values.get("prompt"),
        model=values.get("model"),
        seconds=values.get("seconds"),
        size=values.get("size"),
        style=values.get("style"),
        seed=int(seed) if seed is not None else None,
        reference_image=image,
        reference_url=values.get(REFERENCE_URL_FIELD),
        service_tier=values.get("service_tier"),
    )


@router.post(
    "",
    response_model=VideoPublic,
    responses=error_responses(400, 401, 409, 429),
    openapi_extra=_CREATE_DOC,
)
async def create_video(
    request: Request,
    platform: ApiDep,
    user: CurrentUser,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Enqueues a generation; answers at once with the queued job (200, or 200 on replay)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    max_bytes = platform.settings.max_reference_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > _data_url_chars(max_bytes) + 2**20:
        raise InvalidRequest(f"Request body is larger than the {max_bytes} byte upload limit.")
    if content_type == "application/json":
        req = _from_json(await request.body())
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        req = await _from_form(request, max_bytes)
    else:
        raise InvalidRequest(
            "Content-Type must be application/json, multipart/form-data or "
            "application/x-www-form-urlencoded; "
            f"got {content_type or 'none'}."
        )
    view, created = await videos.submit_async(platform, user, req, idempotency_key=idempotency_key)
    public = VideoPublic.from_view(view)
    # Already a validated VideoPublic: serialise it once instead of re-validating it.
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return Response(public.model_dump_json(), media_type="application/json", headers=headers)


@router.post(
    "/extensions",
    response_model=VideoPublic,
    responses=error_responses(400, 401, 404, 409, 429),
)
async def extend_video(
    request: Request,
    platform: ApiDep,
    user: CurrentUser,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> VideoPublic:
    """Continues a completed video (`video: {"id": ...}`, as the openai SDK's `videos.extend`
    sends it) or an uploaded MP4; `seconds` is the extended video's total length."""
    source, prompt, fields = await _source_request(request, platform, {"prompt", "seconds"})
    seconds = fields.get("seconds")
    if seconds is not None and not isinstance(seconds, str | int):
        raise InvalidRequest("seconds must be a string or an integer.", param="seconds")
    return await run_sync(
        platform, _extend, platform, user, source, prompt, seconds, idempotency_key
    )


@router.post(
    "/edits",
    response_model=VideoPublic,
    responses=error_responses(400, 401, 404, 409, 429),
)
async def edit_video(
    request: Request,
    platform: ApiDep,
    user: CurrentUser,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> VideoPublic:
    """Changes a completed video (`video: {"id": ...}`, as the openai SDK's `videos.edit`
    sends it) or an uploaded MP4 as the prompt says: same length and size, the source's
    motion and layout kept."""
    source, prompt, _ = await _source_request(request, platform, {"prompt"})
    return await run_sync(platform, _edit, platform, user, source, prompt, idempotency_key)


async def _source_request(
    request: Request, platform: ApiContext, allowed: set[str]
) -> tuple[str | bytes, str, dict[str, Any]]:
    """(the source video: an id, or an uploaded file's bytes; the prompt; all fields) of a request
    that derives a video from another, as JSON (`video: {"id": ...}`) or a form (`video[id]`
    or a `video` file). `prompt` is required."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploaded: bytes | None = None
    if content_type == "application/json":
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InvalidRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        video = body.pop("video", None)
        video_id = video.get("id") if isinstance(video, dict) else None
        fields: dict[str, Any] = body
        unknown = set(fields) - allowed
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        limit = platform.settings.max_source_video_bytes
        async with request.form(max_files=1, max_fields=8, max_part_size=limit + 1) as form:
            fields = dict(form.multi_items())
            upload = fields.pop("video", None)
            if isinstance(upload, UploadFile):
                uploaded = await upload.read(limit + 1)
                if len(uploaded) > limit:
                    raise InvalidRequest(
                        f"The uploaded video is larger than {limit} bytes.", param="video"
                    )
        video_id = fields.pop("video[id]", None)
        unknown = set(fields) - allowed
    else:
        raise InvalidRequest(
            f"Content-Type must be application/json or multipart/form-data; got {content_type}."
        )
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"Unknown field {name!r}.", param=name)
    if uploaded is None and (not isinstance(video_id, str) or not video_id):
        raise InvalidRequest(
            "video is required: the id of a completed video (video[id]) or an uploaded MP4.",
            param="video",
        )
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt is required.", param="prompt")
    return (uploaded if uploaded is not None else str(video_id)), prompt, fields


def _extend(
    platform: ApiContext,
    user: User,
    source: str | bytes,
    prompt: str,
    seconds: str | int | None,
    idempotency_key: str | None,
) -> VideoPublic:
    job = videos.extend(platform, user, source, prompt, seconds, idempotency_key)
    return _public(platform, job)


def _edit(
    platform: ApiContext,
    user: User,
    source: str | bytes,
    prompt: str,
    idempotency_key: str | None,
) -> VideoPublic:
    job = videos.edit(platform, user, source, prompt, idempotency_key)
    return _public(platform, job)


UNSUPPORTED = {
    "characters": "Characters",
}


def _unsupported(operation: str) -> Any:
    async def route() -> Response:
        raise InvalidRequest(
            f"{UNSUPPORTED[operation]} (/v1/videos/{operation}) is not supported by this "
            "server yet.",
            code="unsupported_operation",
        )

    return route


def _add_unsupported(operation: str, path: str, method: str) -> None:
    router.add_api_route(
        path,
        _unsupported(operation),
        methods=[method],
        responses=error_responses(400),
        summary=f"{UNSUPPORTED[operation]} (not supported yet)",
        include_in_schema="{" not in path,
        operation_id=f"unsupported_{method.lower()}_{path.strip('/').replace('/', '_')}".replace(
            "{", ""
        )
        .replace("}", "")
        .replace(":", "_"),
    )


# Routes match in order: these two must come before `/{video_id}` takes the name as an id.
# The other unsupported routes come last, so that polls match after fewer routes.
_add_unsupported("characters", "/characters", "GET")
_add_unsupported("characters", "/characters", "DELETE")


@router.get("", response_model=VideoList, responses=error_responses(400, 401, 404))
async def list_videos(
    platform: ApiDep,
    user: CurrentUser,
    after: str | None = None,
    limit: Annotated[int, Query()] = 20,
    order: str = "desc",
) -> VideoList:
    return await run_sync(platform, _list, platform, user, after, limit, order)


def _list(platform: ApiContext, user: User, after: str | None, limit: int, order: str) -> VideoList:
    jobs, has_more = videos.list_jobs(platform, user, after=after, limit=limit, order=order)
    data = [_public(platform, j) for j in jobs]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/{video_id}", response_model=VideoPublic, responses=error_responses(401, 404))
async def retrieve_video(video_id: str, platform: ApiDep, user: CurrentUser) -> Response:
    public = await run_sync(platform, _retrieve, platform, user, video_id)
    headers = {}
    if public.status in ("queued", "in_progress"):
        headers["openai-poll-after-ms"] = str(platform.settings.poll_after_ms)
    # Already a validated VideoPublic: serialise it once instead of re-validating it.
    return Response(public.model_dump_json(), media_type="application/json", headers=headers)


def _retrieve(platform: ApiContext, user: User, video_id: str) -> VideoPublic:
    return VideoPublic.from_view(videos.get_view(platform, user, video_id))


@router.delete("/{video_id}", response_model=VideoDeleted, responses=error_responses(401, 404, 409))
async def delete_video(video_id: str, platform: ApiDep, user: CurrentUser) -> VideoDeleted:
    await run_sync(platform, videos.delete, platform, user, video_id)
    return VideoDeleted(id=video_id)


@router.post(
    "/{video_id}/cancel", response_model=VideoPublic, responses=error_responses(401, 404, 409)
)
async def cancel_video(video_id: str, platform: ApiDep, user: CurrentUser) -> VideoPublic:
    """Queued jobs stop at once; running jobs stop at their next step boundary."""
    return await run_sync(platform, _cancel, platform, user, video_id)


def _cancel(platform: ApiContext, user: User, video_id: str) -> VideoPublic:
    return _public(platform, videos.cancel(platform, user, video_id))


@router.post(
    "/{video_id}/remix",
    response_model=VideoPublic,
    responses=error_responses(400, 401, 404, 409, 429),
)
async def remix_video(
    video_id: str,
    body: RemixBody,
    platform: ApiDep,
    user: CurrentUser,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> VideoPublic:
    return await run_sync(platform, _remix, platform, user, video_id, body.prompt, idempotency_key)


def _remix(
    platform: ApiContext, user: User, video_id: str, prompt: str, idempotency_key: str | None
) -> VideoPublic:
    return _public(platform, videos.remix(platform, user, video_id, prompt, idempotency_key))


@router.get(
    "/{video_id}/content",
    response_model=None,
    response_class=FileResponse,
    responses={**CONTENT_RESPONSES, **error_responses(400, 401, 404)},
)
@router.head("/{video_id}/content", response_model=None, include_in_schema=False)
async def download_content(
    request: Request,
    video_id: str,
    platform: ApiDep,
    user: CurrentUser,
    variant: Variant = Variant.VIDEO,
) -> Response:
    """The bytes (Range, ETag) or, when configured, a redirect to a signed URL."""
    key = await run_sync(platform, videos.content_key, platform, user, video_id, variant)
    if platform.settings.content_redirect:
        return RedirectResponse(videos.content_url(platform, key), status_code=302)
    return file_response(request, platform, key, variant, cache="private, max-age=3600")


def file_response(
    request: Request, platform: ApiContext, key: str, variant: Variant, *, cache: str
) -> Response:
    return object_response(
        request, platform.objects, key, media_type=VARIANT_MEDIA_TYPES[variant], cache=cache
    )


@router.get(
    "/{video_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The event stream.", "content": {"text/event-stream": {}}},
        **error_responses(401, 404),
    },
)
async def video_events(
    video_id: str, request: Request, platform: ApiDep, user: CurrentUser
) -> StreamingResponse:
    """Server-Sent Events: a `video` event per change of status, stage or progress.

    At most about one event per second per job; the stream ends when the job does.
    """
    hub: ProgressHub = request.app.state.progress
    queue = await hub.subscribe(video_id)  # before the read: no change after it is missed
    try:
        first = await run_sync(platform, _retrieve, platform, user, video_id)
    except BaseException:
        hub.unsubscribe(video_id, queue)
        raise
    return StreamingResponse(
        _event_stream(request, platform, user, first, queue),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(public: VideoPublic) -> str:
    return f"event: video\nid: {public.id}-{public.progress}\ndata: {public.model_dump_json()}\n\n"


def _patched(public: VideoPublic, update: dict[str, Any]) -> VideoPublic:
    changes: dict[str, Any] = {k: update[k] for k in ("stage", "progress") if k in update}
    if update.get("status") == "in_progress":
        changes["status"] = "in_progress"
    return public.model_copy(update=changes)


def _changes_state(update: dict[str, Any]) -> bool:
    """An event from the log, or a worker's word that the job ended: re-read the job."""
    return "event" in update or bool(update.get("final"))


async def _event_stream(
    request: Request,
    platform: ApiContext,
    user: User,
    public: VideoPublic,
    queue: asyncio.Queue[dict[str, Any]],
) -> AsyncIterator[str]:
    hub: ProgressHub = request.app.state.progress
    try:
        yield _sse(public)
        last_sent = time.monotonic()
        while public.status in ("queued", "in_progress"):
            try:
                update = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            reread = _changes_state(update)
            fresh = public if reread else _patched(public, update)
            while not queue.empty():  # coalesce to the newest
                update = queue.get_nowait()
                reread = reread or _changes_state(update)
                if not reread:
                    fresh = _patched(fresh, update)
            if reread:
                try:
                    fresh = await run_sync(platform, _retrieve, platform, user, public.id)
                except NotFound:
                    yield f"event: deleted\ndata: {json.dumps({'id': public.id})}\n\n"
                    return
                except Unavailable:  # the database is away; a later event re-reads
                    continue
            if (fresh.status, fresh.stage, fresh.progress) == (
                public.status,
                public.stage,
                public.progress,
            ):
                continue
            wait = SSE_MIN_INTERVAL_S - (time.monotonic() - last_sent)
            if wait > 0 and fresh.status in ("queued", "in_progress"):
                await asyncio.sleep(wait)
                while not queue.empty():
                    newer = queue.get_nowait()
                    if _changes_state(newer):
                        queue.put_nowait(newer)
                        break
                    fresh = _patched(fresh, newer)
            public = fresh
            yield _sse(public)
            last_sent = time.monotonic()
    finally:
        hub.unsubscribe(public.id, queue)


for _op, _path, _method in (
    ("characters", "/characters", "POST"),
    *(
        ("characters", "/characters/{character_path:path}", method)
        for method in ("GET", "POST", "DELETE")
    ),
):
    _add_unsupported(_op, _path, _method)
