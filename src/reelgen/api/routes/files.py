"""Signed content URLs: no API key, an HMAC over (key, expiry) instead."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from reelgen.api.deps import PlatformDep
from reelgen.api.errors import error_response
from reelgen.api.routes.videos import file_response
from reelgen.domain.jobs import Variant
from reelgen.storage.signing import verify

router = APIRouter(tags=["files"])

SUFFIX_VARIANTS = {"video": Variant.VIDEO, "thumbnail": Variant.THUMBNAIL}


def _variant(key: str) -> Variant:
    name = key.rsplit("/", 1)[-1].split(".")[0]
    return SUFFIX_VARIANTS.get(name, Variant.SPRITESHEET)


@router.get("/files/{key:path}", response_model=None)
@router.head("/files/{key:path}", response_model=None, include_in_schema=False)
async def signed_file(
    request: Request, key: str, expires: int, signature: str, platform: PlatformDep
) -> Response:
    now = platform.clock()
    if not verify(platform.signing_secret, key, expires, signature, now):
        return error_response(
            403,
            "This link is invalid or has expired; request the content again.",
            type_="invalid_request_error",
            code="invalid_signature",
        )
    max_age = max(0, int(expires - now))
    return file_response(request, platform, key, _variant(key), cache=f"public, max-age={max_age}")
