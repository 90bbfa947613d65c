"""A small table of JSON endpoints, and `/openapi.json`.

Each `Endpoint` declares its body, query and response models once, which gives both the Starlette route (parsing,
validation, error translation) and its operation in the document; a route written by hand (the operations paths,
the SSE streams) is described by a `Described` (`web_ui.ops`). Every operation has a unique `operationId` (its
handler's name unless it says otherwise) and, beside its success, the statuses it can answer with problem JSON
(`web_ui.problems.Problem`): those of the guard in front of every route, those its inputs bring, and its own. An
operation whose body has an `idempotency_key` says so in the document: its description, a 409 response and
`x-idempotency`."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agenthub.errors import HubError
from agenthub.text import check_json, require_storable
from market.idempotency import CONTRACT, KEEP_AT_LEAST
from web_ui.problems import Problem, problem, problem_for, validation_problem

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
    operation_id: str | None = None  # default: the handler's name (give one where that does not say what it does)
    errors: tuple[int, ...] = ()  # problem statuses of its own, beyond the guard's and its inputs' (`statuses`)
    raw_body: str | None = None  # the media type of a body the handler reads as it is (not JSON)
    media_type: str = "application/json"  # of the success answer; any other than JSON has no schema here
    headers: dict[str, str] = field(default_factory=dict)  # of the success answer: name, description

    def statuses(self) -> set[int]:
        """The problem statuses it can answer: the guard's (`GUARDED`), 400 for any parameter holding text that
        cannot be stored, 413 for a body, 409 for one with an idempotency key, 422 for a body, query or path that
        fails validation, 404 for a path naming nothing, and its own."""
        found = {*GUARDED, 400, *self.errors}
        if self.body is not None or self.raw_body is not None:
            found.add(413)
        if self.body is not None and IDEMPOTENCY_FIELD in self.body.model_fields:
            found.add(409)
        if self.body is not None or self.query is not None or "{" in self.path:
            found.add(422)
        if "{" in self.path:
            found.add(404)
        return found

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




@dataclass(frozen=True, slots=True, kw_only=True)
class Described:
    """A route written by hand (not an `Endpoint`) as `/openapi.json` describes it."""

    method: str
    path: str
    summary: str
    operation_id: str
    description: str | None = None
    media_type: str = "application/json"
    response: type[BaseModel] | None = None  # the schema of a JSON answer
    answers: dict[int, str] = field(default_factory=lambda: {200: "OK"})  # statuses answered with that body
    query: type[BaseModel] | None = None
    parameters: tuple[dict[str, Any], ...] = ()  # more, as OpenAPI parameter objects
    errors: tuple[int, ...] = ()  # problem statuses beyond the guard's
    public: bool = False  # answered without a token (the guard's PUBLIC_PATHS)
    query_token: bool = False  # takes the token as `?access_token=` too (the guard's QUERY_TOKEN_PATHS)

    def statuses(self) -> set[int]:
        return {*GUARDED, *self.errors}


# What the guard in front of every route can answer (`web_ui.guard`): a token missing (where one is needed),
# unknown or revoked; a Host or Origin not allowed; a token over its request rate; a token PostgreSQL cannot check.
GUARDED = (401, 403, 429, 503)
_ERRORS = {
    400: "Invalid input: a malformed body, or a value the hub does not accept or cannot store (a NUL)",
    401: "Unauthenticated: no bearer token where one is needed, or one that is unknown, expired or revoked",
    403: "Forbidden: a Host or Origin the hub does not allow, or a token whose role or agent id does not allow this",
    404: "Not found: what the request names does not exist",
    409: "Conflict: the request does not fit the state of what it names",
    410: "Gone: the position is older than the retained log; `oldest_cursor` is the oldest one still available",
    413: "Body too large",
    422: "Validation failed: `errors` names each field at fault",
    429: "Too many requests (wait `retry_after` seconds), connections, or things held at once (free one first)",
    503: "Service unavailable: PostgreSQL or NATS cannot be reached, or the hub is shutting down; retry after "
         "`retry_after` seconds",
}
_IDEMPOTENT_CONFLICT = ("Conflict: the request does not fit the state of what it names, or its idempotency key was "
                        "used for a different request")
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying, rounded up (when waiting helps)",
                                "schema": {"type": "integer"}}}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}}},
    429: _RETRY_AFTER, 503: _RETRY_AFTER,
}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_REF = "#/components/schemas/{model}"
_MODULE = "application/wasm"  # a body of this type may be as large as a module (the guard's upload limit)
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "A token from `agenthub token create` or "
               "POST /api/v1/tokens; the operator's first is in the data directory's `operator-token`"},
    "accessToken": {"type": "apiKey", "in": "query", "name": "access_token",
                    "description": "The same token as a query parameter, for EventSource, which cannot send headers"},
}


def openapi(endpoints: Sequence[Endpoint], described: Sequence[Described], *, title: str, version: str,
            max_body: int, max_upload: int) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the endpoint table and the routes written by hand. `max_body` and `max_upload`
    are the guard's body limits (a WASM module's the larger). Raises ValueError for two operations with one
    `operationId`, or two schemas with one name."""
    schemas: dict[str, Any] = {}

    def collect(schema: dict[str, Any], name: str) -> dict[str, str]:
        for key, value in {**schema.pop("$defs", {}), name: schema}.items():
            if schemas.setdefault(key, value) != value:
                raise ValueError(f"two different schemas are named {key!r}")
        return {"$ref": _REF.format(model=name)}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return collect(model.model_json_schema(ref_template=_REF), model.__name__)

    def query(model: type[BaseModel]) -> list[dict[str, Any]]:
        schema = model.model_json_schema(ref_template=_REF)
        for key, value in schema.pop("$defs", {}).items():
            collect(value, key)
        required = set(schema.get("required", ()))
        return [{"name": name, "in": "query", "required": name in required, "schema": prop,
                 **({"description": prop["description"]} if "description" in prop else {})}
                for name, prop in schema["properties"].items()]

    collect(TypeAdapter(Problem).json_schema(ref_template=_REF), "Problem")
    paths: dict[str, Any] = {}
    ids: set[str] = set()

    def add(method: str, path: str, op: dict[str, Any], statuses: set[int]) -> None:
        op_id = op["operationId"]
        if op_id in ids:
            raise ValueError(f"two operations have the operationId {op_id!r}")
        ids.add(op_id)
        limit = max_upload if _MODULE in op.get("requestBody", {}).get("content", {}) else max_body
        for status in statuses:
            response = op["responses"].setdefault(str(status), {"description": _ERRORS[status], "content": {}})
            if status == 413:
                response["description"] += f": over {limit} bytes"
            response["content"].update(_PROBLEM)
            if status in _ERROR_HEADERS:
                response["headers"] = _ERROR_HEADERS[status]
        op["responses"] = {**dict(sorted(op["responses"].items())),
                           "default": {"description": "An unexpected error", "content": _PROBLEM}}
        params = [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
        if params:
            op.setdefault("parameters", []).extend(
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params)
        paths.setdefault(path, {})[method.lower()] = op

    for ep in endpoints:
        ok: dict[str, Any] = {"description": "Created" if ep.status == 201 else "OK", "content": {
            ep.media_type: {"schema": ref(ep.response)} if ep.response else {}}}
        if ep.headers:
            ok["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                             for name, text in ep.headers.items()}
        op: dict[str, Any] = {"operationId": ep.operation_id or ep.handler.__name__, "summary": ep.summary,
                              "responses": {str(ep.status): ok}}
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(ep.body)}}}
            if IDEMPOTENCY_FIELD in ep.body.model_fields:
                op["description"] = f"Idempotent by `{IDEMPOTENCY_FIELD}` in the body. {CONTRACT}"
                op["x-idempotency"] = _IDEMPOTENCY
                op["responses"]["409"] = {"description": _IDEMPOTENT_CONFLICT, "content": {}}
        elif ep.raw_body is not None:
            op["requestBody"] = {"required": True, "content": {ep.raw_body: {}}}
        if ep.query is not None:
            op["parameters"] = query(ep.query)
        add(ep.method, ep.path, op, ep.statuses())
    for d in described:
        body = {"schema": ref(d.response)} if d.response else {}
        op = {"operationId": d.operation_id, "summary": d.summary, "responses": {
            str(status): {"description": text, "content": {d.media_type: body}} for status, text in d.answers.items()}}
        if d.description:
            op["description"] = d.description
        parameters = [*(query(d.query) if d.query else ()), *d.parameters]
        if parameters:
            op["parameters"] = parameters
        if d.public:
            op["security"] = []
        elif d.query_token:
            op["security"] = [{"bearer": []}, {"accessToken": []}]
        add(d.method, d.path, op, d.statuses())
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas, "securitySchemes": _SECURITY_SCHEMES}, "security": [{"bearer": []}]}
