"""HTTP problem JSON (RFC 9457) for every error, its schema (`Problem`, for `/openapi.json`), and the one mapping
from domain errors to HTTP statuses."""

import math
from typing import Annotated, Any, NotRequired

from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from typing_extensions import TypedDict  # pydantic cannot describe typing's before Python 3.12

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


class FieldError(TypedDict):
    loc: Annotated[str, Field(description="The field's path, dots between the parts ('' for the body as a whole).")]
    msg: str
    type: Annotated[str, Field(description="What kind of fault: pydantic's error type, or 'unstorable_text'.")]


class Problem(TypedDict):
    """Problem details (RFC 9457): the body of every error answer, as `application/problem+json`."""

    type: Annotated[str, Field(description="Always 'about:blank': `title` and `status` say what kind of problem.")]
    title: str
    status: int
    detail: Annotated[str, Field(description="What went wrong with this request, and how to fix it.")]
    errors: NotRequired[Annotated[list[FieldError], Field(description="400 and 422: each field at fault.")]]
    retry_after: NotRequired[Annotated[float, Field(description="429 and 503 when waiting helps: seconds to wait "
                                                                "before retrying (`Retry-After` rounds them up).")]]
    oldest_cursor: NotRequired[Annotated[int, Field(description="410: the oldest position still available.")]]


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
