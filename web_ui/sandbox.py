"""REST for WASM agents: upload a module as an agent's next binary version, list and fetch versions, roll back,
(operators) try a version on an input with `/api/v1/sandbox/run`, and upload evaluators, the modules that check
task results (`/api/v1/evaluators`)."""

from starlette.requests import Request
from starlette.responses import Response

from sandbox.service import (
    BinaryVersion,
    BinaryVersions,
    EvaluatorInfo,
    RollbackBody,
    SandboxRunInput,
    SandboxRunResult,
    VersionQuery,
)
from web_ui.endpoints import Endpoint
from web_ui.state import hub_of, principal_of


async def upload(request: Request, _: None) -> BinaryVersion:
    """The body is the module itself (`application/wasm`), up to the sandbox's module size limit."""
    return await hub_of(request).sandbox.upload(principal_of(request), request.path_params["agent_id"],
                                                await request.body())


async def current(request: Request, query: VersionQuery) -> BinaryVersion:
    principal_of(request)
    return await hub_of(request).sandbox.get(request.path_params["agent_id"], query.version)


async def versions(request: Request, _: None) -> BinaryVersions:
    principal_of(request)
    return await hub_of(request).sandbox.versions(request.path_params["agent_id"])


async def module(request: Request, query: VersionQuery) -> Response:
    record, wasm = await hub_of(request).sandbox.module(principal_of(request), request.path_params["agent_id"],
                                                        query.version)
    return Response(wasm, media_type="application/wasm", headers={
        "ETag": f'"{record.sha256}"', "X-Binary-Version": str(record.version)})


async def rollback(request: Request, body: RollbackBody) -> BinaryVersion:
    return await hub_of(request).sandbox.rollback(principal_of(request), request.path_params["agent_id"],
                                                  body.version)


async def upload_evaluator(request: Request, _: None) -> EvaluatorInfo:
    """The body is the module (`application/wasm`); name its SHA-256 in a task's `acceptance.evaluator`."""
    return await hub_of(request).sandbox.upload_evaluator(principal_of(request), await request.body())


async def run(request: Request, body: SandboxRunInput) -> SandboxRunResult:
    return await hub_of(request).sandbox.run(principal_of(request), body)


_BINARY = "/api/v1/agents/{agent_id}/binary"
ENDPOINTS = [
    Endpoint(method="POST", path=_BINARY, summary="Upload a WASM module (the raw body, application/wasm) as the "
             "agent's next binary version; it is compiled and checked under limits first", handler=upload,
             raw_body="application/wasm", response=BinaryVersion, status=201, operation_id="upload_binary",
             errors=(409,)),
    Endpoint(method="GET", path=_BINARY, summary="The agent's current binary version (or ?version=N)",
             handler=current, query=VersionQuery, response=BinaryVersion, operation_id="get_binary"),
    Endpoint(method="GET", path=_BINARY + "/versions", summary="Every binary version of the agent, newest first",
             handler=versions, response=BinaryVersions, operation_id="list_binary_versions"),
    Endpoint(method="GET", path=_BINARY + "/module", summary="The module's bytes (application/wasm) of the current "
             "version (or ?version=N); operators and the agent itself", handler=module, query=VersionQuery,
             media_type="application/wasm", operation_id="download_module",
             headers={"ETag": "The module's SHA-256, quoted", "X-Binary-Version": "The version served"}),
    Endpoint(method="POST", path=_BINARY + "/rollback", summary="Make an earlier binary version current again",
             handler=rollback, body=RollbackBody, response=BinaryVersion, operation_id="rollback_binary"),
    Endpoint(method="POST", path="/api/v1/sandbox/run", summary="Run an agent's binary on an input under the hub's "
             "trial-run limits (operators)", handler=run, body=SandboxRunInput, response=SandboxRunResult,
             operation_id="run_sandbox", errors=(404,)),
    Endpoint(method="POST", path="/api/v1/evaluators", summary="Upload a WASM evaluator (the raw body, "
             "application/wasm) that checks task results: run with {task, result} on stdin, exit 0 passes",
             handler=upload_evaluator, raw_body="application/wasm", response=EvaluatorInfo, status=201,
             operation_id="upload_evaluator"),
]
