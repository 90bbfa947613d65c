"""A fake Anthropic Messages API for tests: `POST /v1/messages` answers with scripted replies, in order, and
records every request body it received, and the API key it carried (the SDK sends it as `x-api-key` or as a
bearer token, depending on its version). With nothing left in the script it answers 400, so a test that makes
more calls than it expected fails loudly. A `HANG` reply holds the request until the server stops."""

import itertools
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_server.app import make_server
from tests.conftest import bind_free

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    hang: bool = False


HANG = Reply(hang=True)


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(name: str, arguments: dict[str, Any], *, id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": arguments}


def message(*content: dict[str, Any], stop_reason: str = "end_turn", input_tokens: int = 10,
            output_tokens: int = 5, **usage: int) -> Reply:
    """A reply reporting its usage (`cache_read_input_tokens=...` and the like go into `usage` too)."""
    return Reply(body={"id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant",
                       "model": "claude-test", "content": list(content), "stop_reason": stop_reason,
                       "stop_sequence": None,
                       "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, **usage}})


def error(status: int, kind: str, detail: str) -> Reply:
    return Reply(status=status, body={"type": "error", "error": {"type": kind, "message": detail}})


OVERLOADED = error(529, "overloaded_error", "Overloaded")
UNAUTHORIZED = error(401, "authentication_error", "invalid x-api-key")


class MessagesApi:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.api_keys: list[str | None] = []
        self._script: deque[Reply] = deque()
        self._stopping = anyio.Event()

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    @property
    def unused(self) -> int:
        """Scripted replies not served yet."""
        return len(self._script)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    async def _messages(self, request: Request) -> JSONResponse:
        self.requests.append(json.loads(await request.body()))
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.api_keys.append(request.headers.get("x-api-key") or bearer or None)
        reply = self._script.popleft() if self._script else error(400, "invalid_request_error", "nothing scripted")
        if reply.hang:
            await self._stopping.wait()
            reply = error(503, "api_error", "server stopping")
        return JSONResponse(reply.body, status_code=reply.status)


@asynccontextmanager
async def running_messages_api() -> AsyncIterator[MessagesApi]:
    """A `MessagesApi` served on a free loopback port until the block ends."""
    api = MessagesApi()
    sock = bind_free()
    server = make_server(api.app(), log_level="warning")
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes readiness only as this flag
                await anyio.sleep(0.01)
        api.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            yield api
        finally:
            api._stopping.set()
            server.should_exit = True
