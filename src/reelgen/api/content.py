"""Serving stored objects over HTTP through the storage interface only: HEAD, one byte range
(206 / 416), ETag and If-None-Match. No filesystem path is involved, so any back-end works."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from reelgen.domain.errors import NotFound
from reelgen.storage.base import InvalidKey, ObjectInfo, ObjectStore

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(start, end exclusive) for one satisfiable range; None to send everything (absent,
    malformed or several ranges, which RFC 9110 lets a server ignore); False if unsatisfiable."""
    match = RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            return False
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or (last and int(last) < start):
        return False
    return start, end


def _stat(objects: ObjectStore, key: str) -> ObjectInfo:
    try:
        info = objects.stat(key)
    except InvalidKey:
        info = None
    if info is None:
        raise NotFound("The content is no longer stored.")
    return info


def _headers(info: ObjectInfo, cache: str) -> dict[str, str]:
    return {
        "ETag": info.etag,
        "Cache-Control": cache,
        "Accept-Ranges": "bytes",
        "Last-Modified": formatdate(info.modified, usegmt=True),
    }


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in iterate_in_threadpool(chunks):
        yield chunk


def object_response(
    request: Request, objects: ObjectStore, key: str, *, media_type: str, cache: str
) -> Response:
    info = _stat(objects, key)
    headers = _headers(info, cache)
    if info.etag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    status, start, end = 200, 0, info.size
    wanted = request.headers.get("range")
    if wanted is not None and request.headers.get("if-range", info.etag) == info.etag:
        chosen = _byte_range(wanted, info.size)
        if chosen is False:
            headers["Content-Range"] = f"bytes */{info.size}"
            return Response(status_code=416, headers=headers)
        if isinstance(chosen, tuple):
            status, (start, end) = 206, chosen
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        _stream(objects.read(key, start, end)),
        status_code=status,
        headers=headers,
        media_type=media_type,
    )
