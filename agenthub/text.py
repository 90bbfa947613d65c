"""Text PostgreSQL can store, checked at the door.

PostgreSQL `text` and `jsonb` cannot hold NUL (`\\u0000`), and UTF-8 cannot encode a lone surrogate (`\\ud800`
alone, which Python's `json` decodes happily). A value holding either fails its INSERT with an error that says
nothing to the caller and, in a batched write, fails every other row of the batch too. So inputs are checked
before anything else looks at them, and the refusal names the field:

- at the edges, on the raw input: `find_unstorable` over MCP tool arguments and REST JSON bodies (`check_json`),
  `require_storable` over path ids, query parameters and header values. This runs before any other validation,
  so a NUL in an agent id is reported as a NUL (400), not as a pattern mismatch;
- in the models: every input model inherits `Storable`, whose after-validator checks each field again, so a model
  built anywhere else (from path ids, inside a service, from a NATS payload) cannot carry such text either. It is
  an after-validator on purpose: a before-validator would make pydantic validate the field in Python mode, where
  strict models refuse what JSON can only express as a string (datetimes, enum values).
"""

import json
from typing import Any

from pydantic import BaseModel, field_validator
from pydantic_core import PydanticCustomError

from agenthub.errors import UnstorableText

ERROR_TYPE = "unstorable_text"  # the pydantic error type of a refused value
_ESCAPED_NUL = b"\\u0000"  # how a NUL can appear in JSON text (a raw one is invalid JSON)


def _problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    for char in text:
        if "\ud800" <= char <= "\udfff":
            return f"contains a lone surrogate (\\u{ord(char):04x}), which is not valid Unicode text"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def find_unstorable(value: object, path: str = "") -> tuple[str, str] | None:
    """(where, what) for the first string in `value` PostgreSQL cannot store, or None. `where` is a dotted path
    from `path` through dicts (by key; a bad key is reported at its dict) and lists (by index). Walks without
    recursion, so the depth of a JSON value cannot overflow the stack."""
    stack: list[tuple[str, object]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or _has_surrogate(item):
                problem = _problem(item)
                assert problem is not None
                return where, problem
        elif isinstance(item, dict):
            for key, inner in reversed(item.items()):
                inner_path = f"{where}.{key}" if where else str(key)
                stack.append((inner_path, inner))
                stack.append((where, key))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}.{i}" if where else str(i), inner) for i, inner in reversed(list(enumerate(item))))
    return None


def require_storable(field: str, value: object) -> None:
    """Raise `UnstorableText` naming `field` (and where inside it) when `value` cannot be stored."""
    found = find_unstorable(value, field)
    if found is not None:
        raise UnstorableText(found[0] or field, found[1])


def check_json(body: bytes) -> None:
    """Raise `UnstorableText` naming the field when the JSON `body` holds an escaped NUL in a string (a lone
    surrogate escape is refused by the JSON parser itself). Malformed JSON is left for that parser to report."""
    if _ESCAPED_NUL not in body:
        return
    try:
        value = json.loads(body)
    except ValueError:
        return
    found = find_unstorable(value)
    if found is not None:
        raise UnstorableText(found[0] or "body", found[1])


class Storable(BaseModel):
    """Base of every input model: a field whose value holds text PostgreSQL cannot store fails validation with
    the error type `unstorable_text`, located at that field."""

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, BaseModel):  # a nested model checked its own fields
            return value
        found = find_unstorable(value)
        if found is not None:
            where, problem = found
            raise PydanticCustomError(ERROR_TYPE, "{where}{problem}",
                                      {"where": f"{where}: " if where else "", "problem": problem})
        return value
