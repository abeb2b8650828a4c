"""Request-scoped dependencies, as `Annotated` aliases routes declare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from reelgen.domain.errors import Forbidden
from reelgen.domain.jobs import User
from reelgen.platform import ApiContext
from reelgen.services import accounts

P = ParamSpec("P")
T = TypeVar("T")


async def get_platform(request: Request) -> ApiContext:
    platform: ApiContext = request.app.state.platform
    return platform


ApiDep = Annotated[ApiContext, Depends(get_platform)]


async def run_sync(
    platform: ApiContext, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Runs service code that may block on the database.

    SQLite is a library in this process: its calls take microseconds to a millisecond, less
    than handing them to a thread, so they run inline. Networked databases go to a thread.
    """
    if platform.db.calls_are_inline:
        return fn(*args, **kwargs)
    return await run_in_threadpool(fn, *args, **kwargs)


async def get_user(request: Request) -> User:
    platform: ApiContext = request.app.state.platform
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    token = key.strip() if scheme.lower() == "bearer" else None
    user = accounts.cached_user(platform, token)  # the usual case: no thread hop
    if user is not None:
        return user
    return await run_sync(platform, accounts.authenticate, platform, token)


CurrentUser = Annotated[User, Depends(get_user)]


async def get_admin(request: Request) -> User:
    user = await get_user(request)
    if not user.admin:
        raise Forbidden(
            "This endpoint needs an admin key (`reelgen keys create --admin`).",
            code="admin_required",
        )
    return user


AdminUser = Annotated[User, Depends(get_admin)]
