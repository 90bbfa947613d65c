"""REST for human approvals (`governance.approvals`), the twins of the approval MCP tools and CLI commands."""

from starlette.requests import Request

from governance.approvals import (
    ApprovalInfo,
    ApprovalList,
    ApprovalsQuery,
    DecisionBody,
    ListApprovalsInput,
    RequestApprovalInput,
    WaitQuery,
)
from web_ui.endpoints import Endpoint
from web_ui.state import hub_of, principal_of


async def list_approvals(request: Request, query: ApprovalsQuery) -> ApprovalList:
    req = ListApprovalsInput(state=query.state, limit=query.limit)
    return await hub_of(request).approvals.listed(principal_of(request), req)


async def get_approval(request: Request, query: WaitQuery) -> ApprovalInfo:
    return await hub_of(request).approvals.wait(principal_of(request), request.path_params["approval_id"],
                                                query.wait_seconds)


async def request_approval(request: Request, body: RequestApprovalInput) -> ApprovalInfo:
    return await hub_of(request).approvals.request_agent(principal_of(request), body)


async def decide_approval(request: Request, body: DecisionBody) -> ApprovalInfo:
    return await hub_of(request).approvals.decide(principal_of(request), request.path_params["approval_id"],
                                                  body.decision, body.note)


_APPROVAL = "/api/v1/approvals/{approval_id}"
ENDPOINTS = [
    Endpoint(method="GET", path="/api/v1/approvals", summary="Approvals, newest first (agents: their own)",
             handler=list_approvals, query=ApprovalsQuery, response=ApprovalList),
    Endpoint(method="GET", path=_APPROVAL, summary="One approval; `wait_seconds` waits for its decision (twin of "
             "get_approval)", handler=get_approval, query=WaitQuery, response=ApprovalInfo),
    Endpoint(method="POST", path="/api/v1/approvals", summary="Ask an operator (an agent, for itself; twin of "
             "request_approval)", handler=request_approval, body=RequestApprovalInput, response=ApprovalInfo,
             status=201),
    Endpoint(method="POST", path=f"{_APPROVAL}/decision", summary="Approve or deny, once (operator)",
             handler=decide_approval, body=DecisionBody, response=ApprovalInfo, errors=(409,)),
]
