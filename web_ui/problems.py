"""HTTP problem JSON (RFC 9457) for every error, and the one mapping from domain errors to HTTP statuses."""

import math
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agenthub.database import unavailable
from agenthub.errors import (
    Conflict,
    CursorExpired,
    Forbidden,
    HubError,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    TooManyConnections,
    Unauthenticated,
)
from agenthub.text import ERROR_TYPE
from collaboration.models import validation_errors

_STATUS: list[tuple[type[HubError], int, str]] = [
    (CursorExpired, 410, "Cursor expired"),
    (InvalidInput, 400, "Invalid input"),
    (NotFound, 404, "Not found"),
    (Conflict, 409, "Conflict"),
    (Unauthenticated, 401, "Unauthenticated"),
    (Forbidden, 403, "Forbidden"),
    (TooManyConnections, 429, "Too many connections"),
    (RateLimited, 429, "Too many requests"),
    (QuotaExceeded, 429, "Quota exceeded"),
    (ServiceUnavailable, 503, "Service unavailable"),
]


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="agenthub"'} if status == 401 else None
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def problem_for(exc: HubError) -> JSONResponse:
    for kind, status, title in _STATUS:
        if isinstance(exc, kind):
            extra = {"oldest_cursor": exc.oldest} if isinstance(exc, CursorExpired) else {}
            if isinstance(exc, RateLimited | ServiceUnavailable):
                response = problem(status, title, exc.message, retry_after=round(exc.retry_after, 3))
                response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # whole seconds
                return response
            return problem(status, title, exc.message, **extra)
    return problem(500, "Internal error", exc.message)


async def unavailable_problem(request: Request, exc: Exception) -> Response:
    """Starlette's handler for what PostgreSQL raises when it is down, restarting or frozen: 503 with
    `Retry-After` (registered for the classes in `agenthub.database.UNAVAILABLE`)."""
    down = unavailable(exc)
    if down is None:
        raise exc
    return problem_for(down)


def validation_problem(exc: ValidationError) -> JSONResponse:
    """422 naming each field; 400 when the only fault is text that cannot be stored (a NUL), like other values
    that are well-formed but not acceptable."""
    errors = [{"loc": loc, "msg": msg, "type": kind} for loc, msg, kind in validation_errors(exc)]
    detail = "; ".join(f"{e['loc'] or 'body'}: {e['msg']}" for e in errors)
    if all(e["type"] == ERROR_TYPE for e in errors):
        return problem(400, "Invalid input", detail, errors=errors)
    return problem(422, "Validation failed", detail, errors=errors)
