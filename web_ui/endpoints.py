"""A small table of JSON endpoints: each declares its body, query and response models once, which gives both the
Starlette route (parsing, validation, error translation) and its entry in `/openapi.json`. An operation whose body
has an `idempotency_key` says so in the document: its description, a 409 response and `x-idempotency`."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthub.errors import HubError
from agenthub.text import check_json, require_storable
from market.idempotency import CONTRACT, KEEP_AT_LEAST
from web_ui.problems import problem, problem_for, validation_problem

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Request, Any], Awaitable[BaseModel | Response]]

IDEMPOTENCY_FIELD = "idempotency_key"
_IDEMPOTENCY = {  # `x-idempotency` of an operation that takes a key: the contract in fields
    "in": "body", "name": IDEMPOTENCY_FIELD, "scope": "the acting principal: an agent's id, an operator's token",
    "retained_at_least_seconds": int(KEEP_AT_LEAST.total_seconds()),
    "replay": "the same key and request: the first request's effect, not a second one",
    "reuse": "the same key and another request: 409 Conflict, nothing done",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200

    def route(self) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                check_params(request)
                if self.body is not None:
                    check_json(await request.body())
                arg = await self._parse(request)
            except HubError as exc:
                return problem_for(exc)
            except ValidationError as exc:
                return validation_problem(exc)
            except ValueError as exc:
                return problem(400, "Malformed JSON", str(exc))
            try:
                result = await self.handler(request, arg)
            except ValidationError as exc:
                return validation_problem(exc)
            except HubError as exc:
                return problem_for(exc)
            if isinstance(result, Response):
                return result
            return JSONResponse(result.model_dump(mode="json"), status_code=self.status)

        return Route(self.path, endpoint, methods=[self.method])

    async def _parse(self, request: Request) -> BaseModel | None:
        if self.body is not None:
            # JSON-mode validation: strict models accept what JSON can express (an enum's value, not its instance).
            try:
                return self.body.model_validate_json(await request.body())
            except ValidationError as exc:
                bad_json = [e.get("ctx", {}).get("error", e["msg"]) for e in exc.errors()
                            if e["type"] == "json_invalid"]
                if bad_json:
                    raise ValueError(f"the body is not valid JSON: {bad_json[0]}") from exc
                raise
        if self.query is not None:
            return parse_query(self.query, request.query_params)
        return None


def check_params(request: Request) -> None:
    """Refuse path ids and query parameters (names and values) holding text PostgreSQL cannot store, naming them:
    they reach queries as they are (`agenthub.text`)."""
    for name, value in request.path_params.items():
        require_storable(name, value)
    for name, value in request.query_params.multi_items():
        require_storable("query parameter name", name)
        require_storable(name, value)


def parse_query(model: type[M], query: QueryParams, skip: frozenset[str] = frozenset()) -> M:
    """Validate query parameters into `model`: list fields take repeated and comma-separated values."""
    params: dict[str, Any] = {}
    for key in query:
        if key in skip:
            continue
        values = query.getlist(key)
        field = model.model_fields.get(key)
        is_list = field is not None and "list" in str(field.annotation)
        params[key] = [v for raw in values for v in raw.split(",") if v] if is_list else values[-1]
    return model.model_validate(params)


def openapi(endpoints: list[Endpoint], *, title: str, version: str, extra_paths: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the endpoint table (plus hand-described paths such as the SSE stream)."""
    paths: dict[str, Any] = dict(extra_paths)
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for ep in endpoints:
        op: dict[str, Any] = {"summary": ep.summary, "responses": {
            str(ep.status): {"description": "OK", "content": {"application/json": {
                "schema": ref(ep.response) if ep.response else {}}}},
            "default": {"description": "Problem", "content": {"application/problem+json": {}}},
        }}
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(ep.body)}}}
            if IDEMPOTENCY_FIELD in ep.body.model_fields:
                op["description"] = f"Idempotent by `{IDEMPOTENCY_FIELD}` in the body. {CONTRACT}"
                op["x-idempotency"] = _IDEMPOTENCY
                op["responses"]["409"] = {
                    "description": "Conflict: the request does not fit the state of what it names, or its "
                    "idempotency key was used for a different request", "content": {"application/problem+json": {}}}
        if ep.query is not None:
            op["parameters"] = [
                {"name": name, "in": "query", "required": f.is_required(), "schema": {}}
                for name, f in ep.query.model_fields.items()
            ]
        params = [seg[1:-1] for seg in ep.path.split("/") if seg.startswith("{")]
        if params:
            op.setdefault("parameters", []).extend(
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params)
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}
