"""Exceptions raised by the taskhost client.

Every exception the client raises is a :class:`TaskhostError`. A refusal by
the server (any answer with its ``{"error": {"code", "message"}}`` body) is
raised as the subclass matching its HTTP status, or its code where the code
is more specific (``unknown_plugin``, ``limit_reached``), carrying the
``status``, ``code`` and ``message`` the server sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

#: The codes the server documents (the OpenAPI document's ``ErrorCode``, with
#: each one's status and meaning; a test holds this tuple to it). A newer
#: server may send others: ``code`` is then that string.
ERROR_CODES: tuple[str, ...] = (
    "invalid_request",
    "malformed_json",
    "bad_body",
    "unauthorized",
    "forbidden",
    "not_found",
    "unknown_plugin",
    "no_models",
    "request_timeout",
    "conflict",
    "limit_reached",
    "payload_too_large",
    "unsupported_media_type",
    "invalid_plugin",
    "compile_timeout",
    "invalid_model",
    "quota_exceeded",
    "storage_error",
    "internal_error",
    "overloaded",
    "unavailable",
    "store_unwritable",
    "store_unavailable",
)


class TaskhostError(Exception):
    """Base of every error this client raises.

    ``status`` is the HTTP status of a refusal (``None`` when the error did
    not come from an HTTP answer), ``code`` the machine-readable code
    (``not_found``, ``quota_exceeded``, ...) and ``message`` the text meant for
    people.
    """

    def __init__(self, message: str, *, code: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.code}: {self.message}"
        return f"{self.status} {self.code}: {self.message}"


class ApiError(TaskhostError):
    """The server refused a request.

    ``retry_after`` is the ``Retry-After`` header in seconds, when the server
    sent one (429 and 503 answers).
    """

    status: int

    def __init__(self, message: str, *, code: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: ``invalid_request`` or ``malformed_json``."""


class Unauthorized(ApiError):
    """401: no token, or an unknown, revoked or expired one."""


class Forbidden(ApiError):
    """403: the token lacks the scope the route needs, or the tenant does not
    allow what was asked (an ad-hoc script in a queue that takes none)."""


class NotFound(ApiError):
    """404: ``not_found`` (or another tenant's id)."""


class UnknownPlugin(NotFound):
    """404 ``unknown_plugin``: no such plugin, or no such live version."""


class RequestTimeout(ApiError):
    """408: the request's body did not arrive in time."""


class Conflict(ApiError):
    """409: the request conflicts with a record's state."""


class LimitReached(Conflict):
    """409 ``limit_reached``: the host keeps no more queues or plugin names."""


class PayloadTooLarge(ApiError):
    """413: the body is larger than the server accepts."""


class UnsupportedMediaType(ApiError):
    """415: the body was sent with the wrong content type."""


class Unprocessable(ApiError):
    """422: ``invalid_plugin``, ``compile_timeout``, ``invalid_model``."""


class QuotaExceeded(ApiError):
    """429: a tenant's quota refuses the submission (see ``retry_after``)."""


class ServerError(ApiError):
    """500 (``storage_error``, ``internal_error``) or another 5xx the API does
    not name."""


class Unavailable(ApiError):
    """503: ``overloaded``, ``store_unwritable``, ``store_unavailable`` or
    ``unavailable``; the same request may succeed later (see ``retry_after``)."""


class WaitTimeout(TaskhostError, TimeoutError):
    """A wait ran past its timeout. ``last`` is the record last read."""

    def __init__(self, message: str, *, last: Any) -> None:
        super().__init__(message, code="wait_timeout")
        self.last = last


class TransportError(TaskhostError):
    """The request did not get an answer: the server could not be reached,
    the connection broke, or a timeout passed. The ``httpx`` exception is the
    ``__cause__``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="transport_error")


_BY_CODE: Mapping[str, type[ApiError]] = {
    "unknown_plugin": UnknownPlugin,
    "limit_reached": LimitReached,
}

_BY_STATUS: Mapping[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: QuotaExceeded,
    503: Unavailable,
}


def api_error(status: int, code: str, message: str, retry_after: float | None = None) -> ApiError:
    """The exception for a refusal with this status, code and message."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    return cls(message, code=code, status=status, retry_after=retry_after)


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for a refused (non-2xx) answer whose body was read.

    A body that is not the API's error shape (say, a proxy's HTML page) keeps
    the status, with the code ``http_<status>`` and the start of the body as
    the message.
    """
    code, message = f"http_{response.status_code}", response.text[:500] or response.reason_phrase
    try:
        detail = response.json()["error"]
        if isinstance(detail["code"], str) and isinstance(detail["message"], str):
            code, message = detail["code"], detail["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return api_error(response.status_code, code, message, _retry_after(response.headers.get("retry-after")))


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the API sends delta-seconds only)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
