"""The JSON Schema half of a task's acceptance check, run in a child process of its own.

A requester's schema is untrusted: a `pattern` can backtrack for hours (`(a+)+$` against a long string), and
Python's `re` holds the interpreter while it does, so validating in the hub would stall every request the replica
serves. `schema_errors` runs the validation in `python -m market.acceptance` under a wall-clock deadline and an
address-space limit, and kills it past the deadline: the check then fails, saying so. The schema itself is
checked at submission (`check_schema`), in the hub: that validates it against the metaschema, whose patterns are
fixed, and never runs the schema's own.
"""

import json
import resource
import sys
from itertools import islice
from typing import Any

import anyio
import jsonschema

from agenthub.errors import InvalidInput

MAX_ERRORS = 10
MEMORY_BYTES = 512 * 1024 * 1024  # the child's address space (Python and jsonschema take ~60 MB)


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


async def schema_errors(schema: dict[str, Any], result: dict[str, Any], *, seconds: float) -> list[str]:
    """`errors_of(schema, result)`, computed in a child process that is killed after `seconds` (then the one error
    says the check took too long)."""
    request = json.dumps({"schema": schema, "result": result}).encode()
    with anyio.move_on_after(seconds):
        done = await anyio.run_process([sys.executable, "-m", "market.acceptance"], input=request, check=False)
        if done.returncode == 0:
            errors: list[str] = json.loads(done.stdout)
            return errors
        return [f"(check): the schema check failed: {done.stderr.decode(errors='replace').strip()[-300:]}"]
    return [f"(check): the schema check took longer than {seconds:g} s (a pattern that backtracks?) and was stopped"]


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    request = json.load(sys.stdin)
    json.dump(errors_of(request["schema"], request["result"]), sys.stdout)


if __name__ == "__main__":
    main()
