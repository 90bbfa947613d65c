"""REST for the market: accounts (deposit, balance, ledger) and tasks (submit, bid, report, settle), the twins of
the market MCP tools and CLI commands."""

from typing import Any

from starlette.requests import Request

from market.models import (
    AccountInfo,
    BidBody,
    BidPlaced,
    DepositBody,
    DepositInput,
    DisputeBody,
    DisputeInput,
    KeyBody,
    LedgerPage,
    LedgerQuery,
    ListTasksInput,
    PlaceBidInput,
    ReportBody,
    ReportTaskInput,
    ResolveBody,
    ResolveInput,
    SettleInput,
    SubmitTaskInput,
    TaskAudit,
    TaskInfo,
    TaskList,
    TaskRef,
    TasksQuery,
)
from web_ui.endpoints import Endpoint
from web_ui.state import hub_of, principal_of


def _path(request: Request, **body: Any) -> dict[str, Any]:
    return {**request.path_params, **body}


async def deposit(request: Request, body: DepositBody) -> AccountInfo:
    req = DepositInput.model_validate({"account_id": request.path_params["account_id"], **body.model_dump()})
    return await hub_of(request).market.deposit(principal_of(request), req)


async def account(request: Request, _: None) -> AccountInfo:
    return await hub_of(request).market.account(principal_of(request), request.path_params["account_id"])


async def ledger(request: Request, query: LedgerQuery) -> LedgerPage:
    return await hub_of(request).market.ledger_page(principal_of(request), request.path_params["account_id"],
                                                     before=query.before, limit=query.limit)


async def submit(request: Request, body: SubmitTaskInput) -> TaskInfo:
    return await hub_of(request).market.submit_task(principal_of(request), body)


async def list_tasks(request: Request, query: TasksQuery) -> TaskList:
    return await hub_of(request).market.list_tasks(principal_of(request),
                                                   ListTasksInput.model_validate(query.model_dump()))


async def get_task(request: Request, _: None) -> TaskInfo:
    return await hub_of(request).market.get_task(principal_of(request), TaskRef.model_validate(_path(request)))


async def audit(request: Request, _: None) -> TaskAudit:
    return await hub_of(request).market.audit(principal_of(request), TaskRef.model_validate(_path(request)))


async def bid(request: Request, body: BidBody) -> BidPlaced:
    req = PlaceBidInput.model_validate(_path(request, **body.model_dump()))
    return await hub_of(request).market.place_bid(principal_of(request), req)


async def report(request: Request, body: ReportBody) -> TaskInfo:
    req = ReportTaskInput.model_validate(_path(request, **body.model_dump()))
    return await hub_of(request).market.report_task(principal_of(request), req)


async def cancel(request: Request, body: KeyBody) -> TaskInfo:
    req = SettleInput.model_validate(_path(request, **body.model_dump()))
    return await hub_of(request).market.cancel_task(principal_of(request), req)


async def accept(request: Request, body: KeyBody) -> TaskInfo:
    req = SettleInput.model_validate(_path(request, **body.model_dump()))
    return await hub_of(request).market.accept(principal_of(request), req)


async def dispute(request: Request, body: DisputeBody) -> TaskInfo:
    req = DisputeInput.model_validate(_path(request, **body.model_dump()))
    return await hub_of(request).market.dispute(principal_of(request), req)


async def resolve(request: Request, body: ResolveBody) -> TaskInfo:
    req = ResolveInput.model_validate(_path(request, **body.model_dump()))
    return await hub_of(request).market.resolve(principal_of(request), req)


_TASK = "/api/v1/tasks/{task_id}"
ENDPOINTS = [
    Endpoint(method="POST", path="/api/v1/accounts/{account_id}/deposit", summary="Deposit credits (operator)",
             handler=deposit, body=DepositBody, response=AccountInfo, status=201),
    Endpoint(method="GET", path="/api/v1/accounts/{account_id}", summary="An account's balance (and reputation)",
             handler=account, response=AccountInfo, operation_id="get_account"),
    Endpoint(method="GET", path="/api/v1/accounts/{account_id}/ledger", summary="An account's postings, newest first",
             handler=ledger, query=LedgerQuery, response=LedgerPage, operation_id="get_ledger"),
    Endpoint(method="POST", path="/api/v1/tasks", summary="Submit a task: holds the budget, opens an auction (twin of "
             "submit_task)", handler=submit, body=SubmitTaskInput, response=TaskInfo, status=201,
             operation_id="submit_task"),
    Endpoint(method="GET", path="/api/v1/tasks", summary="Tasks, filtered", handler=list_tasks, query=TasksQuery,
             response=TaskList),
    Endpoint(method="GET", path=_TASK, summary="One task with its auction and events (twin of get_task)",
             handler=get_task, response=TaskInfo),
    Endpoint(method="GET", path=f"{_TASK}/audit", summary="A cleared auction's inputs (bids with the reputations "
             "they were scaled by, the tasks cleared with it) and their replay: the winner and price clearing them "
             "again gives", handler=audit, response=TaskAudit, operation_id="audit_task", errors=(409,)),
    Endpoint(method="POST", path=f"{_TASK}/bids", summary="Bid (twin of place_bid)", handler=bid, body=BidBody,
             response=BidPlaced, status=201, operation_id="place_bid", errors=(409,)),
    Endpoint(method="POST", path=f"{_TASK}/report", summary="Report progress, completion or failure (twin of "
             "report_task)", handler=report, body=ReportBody, response=TaskInfo,
             operation_id="report_task", errors=(409,)),
    Endpoint(method="POST", path=f"{_TASK}/cancel", summary="Cancel (the requester): refunds the escrow",
             handler=cancel, body=KeyBody, response=TaskInfo, operation_id="cancel_task"),
    Endpoint(method="POST", path=f"{_TASK}/accept", summary="Accept the result (the requester): pays the agent",
             handler=accept, body=KeyBody, response=TaskInfo, operation_id="accept_task"),
    Endpoint(method="POST", path=f"{_TASK}/dispute", summary="Dispute (the requester or the winner)",
             handler=dispute, body=DisputeBody, response=TaskInfo, operation_id="dispute_task"),
    Endpoint(method="POST", path=f"{_TASK}/resolve", summary="Resolve a dispute (operator, as arbiter)",
             handler=resolve, body=ResolveBody, response=TaskInfo, operation_id="resolve_dispute"),
]
