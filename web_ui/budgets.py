"""REST for budgets (`governance.budgets`): every subject's limits and spend (operators and viewers), one subject's
(an agent: its own), setting limits (operators), spend over time for a plot, and usage reports (the twin of the
`report_usage` MCP tool)."""

from starlette.requests import Request

from agenthub.errors import InvalidInput
from governance.budgets import parse_subject
from governance.models import (
    BudgetInfo,
    BudgetList,
    BudgetsQuery,
    ReportUsageInput,
    SetBudgetBody,
    SetBudgetInput,
    SpendQuery,
    SpendSeries,
    UsageBody,
    UsageReported,
)
from web_ui.endpoints import Endpoint
from web_ui.state import hub_of, principal_of


async def list_budgets(request: Request, query: BudgetsQuery) -> BudgetList:
    return await hub_of(request).budgets.list_budgets(principal_of(request), limit=query.limit)


async def get_budget(request: Request, _: None) -> BudgetInfo:
    return await hub_of(request).budgets.get(principal_of(request), request.path_params["subject"])


async def set_budget(request: Request, body: SetBudgetBody) -> BudgetInfo:
    subject = parse_subject(request.path_params["subject"])
    fields = body.model_dump(include=body.model_fields_set)  # an absent approval_threshold stays as it is
    req = SetBudgetInput.model_validate({**fields, "limits": body.limits, "subject": subject})
    return await hub_of(request).budgets.set_limits(principal_of(request), req)


async def budget_spend(request: Request, query: SpendQuery) -> SpendSeries:
    return await hub_of(request).budgets.spend(principal_of(request), request.path_params["subject"], query.metric,
                                               query.since)


async def report_budget_usage(request: Request, body: UsageBody) -> UsageReported:
    subject = parse_subject(request.path_params["subject"])
    kind, _, agent_id = subject.partition(":")
    if kind != "agent":
        raise InvalidInput(f"usage is reported for agents ('agent:<id>'), not {subject!r}")
    req = ReportUsageInput.model_validate({**body.model_dump(), "agent_id": agent_id})
    return await hub_of(request).budgets.report_usage(principal_of(request), req)


_SUBJECT = "/api/v1/budgets/{subject}"
ENDPOINTS = [
    Endpoint(method="GET", path="/api/v1/budgets", summary="Every subject with limits or spend (operators, viewers)",
             handler=list_budgets, query=BudgetsQuery, response=BudgetList),
    Endpoint(method="GET", path=_SUBJECT, summary="One subject's limits, spend and reservations (an agent: its own)",
             handler=get_budget, response=BudgetInfo),
    Endpoint(method="PUT", path=_SUBJECT, summary="Set a subject's limits and approval threshold (operator)",
             handler=set_budget, body=SetBudgetBody, response=BudgetInfo),
    Endpoint(method="GET", path=f"{_SUBJECT}/spend", summary="Spend per minute with its running total, for a plot",
             handler=budget_spend, query=SpendQuery, response=SpendSeries),
    Endpoint(method="POST", path=f"{_SUBJECT}/usage", summary="Report an agent's usage (twin of report_usage)",
             handler=report_budget_usage, body=UsageBody, response=UsageReported),
]
