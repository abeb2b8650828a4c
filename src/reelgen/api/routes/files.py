"""Signed content URLs: no API key, an HMAC over (key, expiry) instead."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from reelgen.api.deps import ApiDep
from reelgen.api.errors import error_response
from reelgen.api.routes.videos import file_response
from reelgen.api.schemas import CONTENT_RESPONSES, error_responses
from reelgen.domain.jobs import Variant
from reelgen.storage import keys
from reelgen.storage.signing import verify

router = APIRouter(tags=["files"])

MAX_AGE_CAP_S = 2**31
"""RFC 9111 caches treat larger max-age values as this; a bigger number only bloats headers."""


@router.get(
    "/files/{key:path}",
    response_model=None,
    response_class=FileResponse,
    responses={**CONTENT_RESPONSES, **error_responses(400, 403, 404)},
)
@router.head("/files/{key:path}", response_model=None, include_in_schema=False)
async def signed_file(
    request: Request, key: str, expires: int, signature: str, platform: ApiDep
) -> Response:
    now = platform.clock()
    if keys.quarantined(key) or not verify(platform.signing_secret, key, expires, signature, now):
        return error_response(
            403,
            "This link is invalid or has expired; request the content again.",
            type_="invalid_request_error",
            code="invalid_signature",
        )
    max_age = min(MAX_AGE_CAP_S, max(0, expires - int(now)))
    return file_response(
        request,
        platform,
        key,
        keys.variant_of(key) or Variant.SPRITESHEET,
        cache=f"public, max-age={max_age}",
    )
