"""Every error leaves as `{"error": {message, type, param, code}}` with a fitting status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from reelgen.domain.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NotFound,
    RateLimited,
    ReelgenError,
    Unauthorized,
    Unavailable,
)

STATUS = {
    InvalidRequest: (400, "invalid_request_error"),
    Unauthorized: (401, "authentication_error"),
    Forbidden: (403, "permission_error"),
    NotFound: (404, "invalid_request_error"),
    Conflict: (409, "invalid_request_error"),
    RateLimited: (429, "rate_limit_error"),
    LeaseLost: (409, "invalid_request_error"),
    Unavailable: (503, "server_error"),
}


RETRYABLE = frozenset({408, 429})
"""Client errors a retry can cure; the others say `x-should-retry: false`, which the openai
SDK honours instead of retrying a 409 (or a 5xx) three times in vain."""


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    response = JSONResponse(body, status_code=status)
    if 400 <= status < 500 and status not in RETRYABLE:
        response.headers["x-should-retry"] = "false"
    return response


async def _reelgen_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ReelgenError)
    status, type_ = next(
        (STATUS[k] for k in type(exc).__mro__ if k in STATUS), (500, "server_error")
    )
    response = error_response(status, exc.message, type_=type_, param=exc.param, code=exc.code)
    if isinstance(exc, RateLimited | Unavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return error_response(
        400, message, type_="invalid_request_error", param=param, code="invalid_request"
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    response = error_response(exc.status_code, str(exc.detail), type_=type_)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def install(app: FastAPI) -> None:
    app.add_exception_handler(ReelgenError, _reelgen_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
