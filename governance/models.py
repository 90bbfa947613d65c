"""The JSON of budgets (`governance.budgets`): what REST, MCP and the CLI take and give.

A subject is an account id of the ledger's scheme, `agent:{agent_id}` or `requester:{id}`. Amounts are integers
in each metric's unit: tokens, micro-USD, calls, seconds, credits.
"""

from datetime import datetime
from typing import Annotated, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agenthub.ids import AGENT_ID_PATTERN
from agenthub.text import Storable

Metric = Literal["llm_tokens", "llm_cost_micro_usd", "tool_calls", "work_seconds", "credits"]
METRICS: tuple[Metric, ...] = get_args(Metric)
SUBJECT_PATTERN = r"^(agent|requester):[A-Za-z0-9_-]{1,64}$"
MAX_AMOUNT = 10**15  # a bound on every amount and limit (a quadrillion micro-USD is a billion dollars)

Subject = Annotated[str, StringConstraints(pattern=SUBJECT_PATTERN)]
Amount = Annotated[int, Field(ge=0, le=MAX_AMOUNT)]
ReservationId = Annotated[str, StringConstraints(max_length=20)]  # rsv_ + 16 hex
AgentIdField = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]


class Strict(Storable):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Limit(Strict):
    """A metric's limits: past `soft` an operator is asked (the work goes on), at `hard` new work is refused.
    Both null: no limit on that metric."""

    soft: Amount | None = None
    hard: Amount | None = None

    @model_validator(mode="after")
    def _soft_below_hard(self) -> Self:
        if self.soft is not None and self.hard is not None and self.soft > self.hard:
            raise ValueError(f"soft ({self.soft}) must not be above hard ({self.hard})")
        return self


class BudgetInfo(BaseModel):
    subject: str
    limits: dict[Metric, Limit]
    spent: dict[Metric, int]
    reserved: dict[Metric, int]
    exhausted: list[Metric] = Field(description="At or past the hard limit, or denied past the soft one: new "
                                    "dispatch is refused until an operator sets the limits again.")
    approval_threshold: int | None = Field(description="Requesters: a task whose budget is above this waits for "
                                           "an operator's approval.")
    updated_at: datetime | None


class BudgetList(BaseModel):
    budgets: list[BudgetInfo]


class SetBudgetBody(Strict):
    """Limits for the metrics named (others stay as they are; {soft: null, hard: null} removes a metric's limits).
    Setting a metric's limits also lifts an operator's earlier denial past its soft limit. `approval_threshold`
    changes only when present (null removes it)."""

    limits: Annotated[dict[Metric, Limit], Field(max_length=len(METRICS))] = Field(default_factory=dict)
    approval_threshold: Amount | None = None


class SetBudgetInput(SetBudgetBody):
    subject: Subject


class BudgetsQuery(Storable):
    limit: Annotated[int, Field(ge=1, le=1000)] = 200


class SpendQuery(Storable):
    metric: Metric
    since: datetime | None = Field(default=None, description="From this time (default: the last 24 hours).")


class SpendPoint(BaseModel):
    at: datetime = Field(description="The minute the spend falls in.")
    amount: int
    total: int = Field(description="Everything spent on the metric up to the end of this minute.")


class SpendSeries(BaseModel):
    subject: str
    metric: Metric
    points: list[SpendPoint]


class UsageBody(Strict):
    """Usage an agent reports: each listed reservation is settled with the reported amount of its metric; amounts
    not covered by a reservation are recorded as spend directly."""

    reservation_id: ReservationId | None = None
    reservation_ids: Annotated[list[ReservationId], Field(max_length=len(METRICS))] = Field(default_factory=list)
    llm_tokens: Amount | None = None
    llm_cost_micro_usd: Amount | None = None
    tool_calls: Amount | None = None
    work_seconds: Amount | None = None

    def amounts(self) -> dict[Metric, int]:
        return {m: v for m in METRICS if (v := getattr(self, m, None)) is not None}

    def reservations(self) -> list[str]:
        ids = [*([self.reservation_id] if self.reservation_id else []), *self.reservation_ids]
        return list(dict.fromkeys(ids))


class ReportUsageInput(UsageBody):
    agent_id: AgentIdField


class ReserveUsageInput(Strict):
    agent_id: AgentIdField
    metric: Metric
    amount: Amount = Field(description="The most the work can spend.")


class Reservation(BaseModel):
    reservation_id: str | None = Field(description="Settle it with report_usage; null: no limit applies, report "
                                       "the usage without it.")


class UsageReported(BaseModel):
    subject: str
    settled: list[str]
    recorded: dict[Metric, int]
