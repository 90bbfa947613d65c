"""The JSON Schema half of a task's acceptance check, run in a child process.

A requester's schema is untrusted: a `pattern` can backtrack for hours (`(a+)+$` against a long string), and
Python's `re` holds the interpreter while it does, so validating in the hub would stall every request the replica
serves. `SchemaChecker` keeps one warm child, `python -m market.acceptance` (started at the first check; importing
jsonschema takes a fifth of a second), under an address-space limit, and asks it one check at a time, a line of
JSON each way. Past the deadline, or if the caller gives up, the child is killed (the next check starts another):
the check then fails, saying so. The schema itself is checked at submission (`check_schema`), in the hub: that
validates it against the metaschema, whose patterns are fixed, and never runs the schema's own.
"""

import json
import resource
import subprocess
import sys
from itertools import islice
from typing import Any

import anyio
import jsonschema
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from agenthub.errors import InvalidInput

MAX_ERRORS = 10
MEMORY_BYTES = 512 * 1024 * 1024  # the child's address space (Python and jsonschema take ~60 MB)
_MAX_REPLY_BYTES = 64 * 1024  # ten errors of at most 500 characters, as JSON
_STOP_SECONDS = 2.0


def check_schema(schema: dict[str, Any]) -> None:
    """Raise `InvalidInput` unless `schema` is a JSON Schema (draft 2020-12)."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidInput(f"acceptance.json_schema is not a valid JSON Schema: {exc.message}") from None


def errors_of(schema: dict[str, Any], instance: Any) -> list[str]:
    """Why `instance` fails `schema`: the first `MAX_ERRORS` errors, one line each (empty: it passes)."""
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"[:500]
            for e in islice(validator.iter_errors(instance), MAX_ERRORS)]


class SchemaChecker:
    """The warm child that runs `errors_of`, one check at a time; `aclose` stops it (the hub's shutdown)."""

    def __init__(self, *, seconds: float) -> None:
        self.seconds = seconds
        self._lock = anyio.Lock()
        self._process: Process | None = None
        self._replies: BufferedByteReceiveStream | None = None

    async def errors(self, schema: dict[str, Any], result: dict[str, Any]) -> list[str]:
        """`errors_of(schema, result)` from the child; after `seconds` the child is killed and the one error says
        the check took too long."""
        request = json.dumps({"schema": schema, "result": result}).encode() + b"\n"
        async with self._lock:
            answered = False
            try:
                with anyio.move_on_after(self.seconds):
                    process, replies = await self._started()
                    assert process.stdin is not None
                    await process.stdin.send(request)
                    reply = await replies.receive_until(b"\n", _MAX_REPLY_BYTES)
                    answered = True
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead, anyio.DelimiterNotFound):
                return ["(check): the schema checker stopped (out of memory?) before it answered"]
            finally:
                if not answered:  # timed out, crashed, or the caller gave up: its next answer would be out of step
                    await self._stop()
            if not answered:
                return [f"(check): the schema check took longer than {self.seconds:g} s (a pattern that "
                        "backtracks?) and was stopped"]
            errors: list[str] = json.loads(reply)
            return errors

    async def _started(self) -> tuple[Process, BufferedByteReceiveStream]:
        if self._process is None or self._replies is None:
            process = await anyio.open_process([sys.executable, "-m", "market.acceptance"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert process.stdout is not None
            self._process, self._replies = process, BufferedByteReceiveStream(process.stdout)
        return self._process, self._replies

    async def _stop(self) -> None:
        process, self._process, self._replies = self._process, None, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            process.kill()
            with anyio.move_on_after(_STOP_SECONDS):
                await process.wait()
            await process.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            await self._stop()


def main() -> None:
    """The child: a request per line on stdin, `errors_of` as a line of JSON on stdout for each."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.write(json.dumps(errors_of(request["schema"], request["result"])) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
