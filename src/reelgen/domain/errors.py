"""Errors the platform reports to callers; the API maps each class to an HTTP status."""

from __future__ import annotations


class ReelgenError(Exception):
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ReelgenError):
    code = "invalid_request"


class ModerationBlocked(InvalidRequest):
    """Content refused by a safety check; the message names the category, never the rule."""

    code = "moderation_blocked"

    def __init__(self, message: str, *, categories: tuple[str, ...], param: str | None = None):
        super().__init__(message, param=param)
        self.categories = categories


class Unauthorized(ReelgenError):
    code = "invalid_api_key"


class Forbidden(ReelgenError):
    code = "permission_denied"


class NotFound(ReelgenError):
    code = "not_found"


class Conflict(ReelgenError):
    code = "conflict"


class RateLimited(ReelgenError):
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = max(1, retry_after)


class LeaseLost(ReelgenError):
    """A worker acted on a job whose lease it no longer holds (fencing)."""

    code = "lease_lost"


class Unavailable(ReelgenError):
    """The database cannot be reached right now (restart, failover, network); retry soon.

    Nothing was committed by the call that raised it, except where a commit's answer itself
    was lost: callers that retry a write must be idempotent or fenced."""

    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class ModerationUnavailable(Unavailable):
    """A content classifier the deployment requires did not answer; nothing was accepted."""

    code = "moderation_unavailable"
