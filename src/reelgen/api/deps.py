"""Request-scoped dependencies, as `Annotated` aliases routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from reelgen.domain.jobs import User
from reelgen.platform import Platform
from reelgen.services import accounts


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_user(request: Request, platform: PlatformDep) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    token = key.strip() if scheme.lower() == "bearer" else None
    return await run_in_threadpool(accounts.authenticate, platform, token)


CurrentUser = Annotated[User, Depends(get_user)]
