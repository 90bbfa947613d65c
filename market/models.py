"""Pydantic models at the edges of the market: tool and HTTP inputs, what callers read back, NATS payloads.

Inputs are strict and reject unexpected fields and text PostgreSQL cannot store (`agenthub.text`). Credits are
integers. Every money-moving request carries an idempotency key (1..255 characters): a retry with the same key and
body returns the first answer (`market.idempotency.CONTRACT`, the field's description in every schema).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agenthub.ids import AGENT_ID_PATTERN
from agenthub.text import Storable
from market.idempotency import CONTRACT, MAX_KEY_LENGTH

AgentIdField = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
Capability = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH), Field(description=CONTRACT)]
Credits = Annotated[int, Field(gt=0, le=10**12)]
TaskState = Literal["bidding", "assigned", "running", "completed", "failed", "cancelled", "expired"]
TASK_STATES: tuple[str, ...] = ("bidding", "assigned", "running", "completed", "failed", "cancelled", "expired")


class Strict(Storable):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SubmitTaskInput(Strict):
    requester_id: AgentIdField = Field(description="Who pays: your agent id (operators: any account).")
    description: Annotated[str, StringConstraints(min_length=1, max_length=16_000)]
    required_capabilities: Annotated[list[Capability], Field(max_length=16)] = Field(default_factory=list)
    priority: Annotated[int, Field(ge=1, le=10)] = 5
    parameters: Annotated[dict[str, Any], Field(max_length=50)] = Field(default_factory=dict)
    budget: Credits = Field(description="The most you pay, held in escrow until the task ends.")
    bidding_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    idempotency_key: IdempotencyKey


class PlaceBidInput(Strict):
    task_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    agent_id: AgentIdField
    price: Credits = Field(description="What you ask; the auction may pay more (its critical price).")
    estimated_seconds: Annotated[float, Field(gt=0, le=7 * 86_400)]


class TaskRef(Strict):
    task_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ReportTaskInput(Strict):
    task_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    agent_id: AgentIdField
    status: Literal["progress", "completed", "failed"]
    result: Annotated[dict[str, Any], Field(max_length=100)] | None = None
    message: Annotated[str, StringConstraints(max_length=4000)] | None = None


class SettleInput(Strict):
    task_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    idempotency_key: IdempotencyKey


class DisputeInput(SettleInput):
    by: AgentIdField
    evidence: Annotated[str, StringConstraints(min_length=1, max_length=16_000)]


class ResolveInput(SettleInput):
    outcome: Literal["release", "refund", "split"]
    agent_share_percent: Annotated[int, Field(ge=0, le=100)] = 50


AccountIdField = Annotated[str, StringConstraints(min_length=1, max_length=80)]


class DepositInput(Strict):
    account_id: AccountIdField = Field(description="`requester:{id}` or `agent:{id}`.")
    amount: Credits
    idempotency_key: IdempotencyKey


class ListTasksInput(Strict):
    state: Annotated[list[TaskState], Field(max_length=7)] | None = None
    requester_id: AgentIdField | None = None
    agent_id: AgentIdField | None = None
    capability: Capability | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class BidInfo(BaseModel):
    agent_id: str
    price: int
    estimated_seconds: float
    reputation: float
    placed_at: datetime


class TaskEvent(BaseModel):
    at: datetime
    kind: str
    from_state: str | None
    to_state: str | None
    detail: str


class TaskInfo(BaseModel):
    task_id: str
    requester_id: str
    description: str
    required_capabilities: list[str]
    priority: int
    parameters: dict[str, Any]
    budget: int
    state: TaskState
    bidding_closes_at: datetime
    bid_count: int
    bids: list[BidInfo] | None = Field(default=None, description="Sealed (null) until the auction closes.")
    winner: str | None
    price: int | None
    welfare: float | None
    result: dict[str, Any] | None
    escrow_id: str
    escrow_state: str | None = None
    created_at: datetime
    updated_at: datetime
    events: list[TaskEvent] = Field(default_factory=list)


class TaskList(BaseModel):
    tasks: list[TaskInfo]


class BidPlaced(BaseModel):
    task_id: str
    agent_id: str
    price: int
    replaced: bool
    bidding_closes_at: datetime


class TaskAnnouncement(BaseModel):
    """`tasks.{task_id}.auction`: an auction opened (bidders with the capabilities may bid until it closes)."""

    task_id: str
    description: str
    required_capabilities: list[str]
    priority: int
    budget: int
    bidding_closes_at: datetime


class TaskUpdate(BaseModel):
    """`tasks.{task_id}.assignment`, `.progress` and `.result`."""

    task_id: str
    state: str
    agent_id: str | None
    price: int | None = None
    detail: str = ""
    result: dict[str, Any] | None = None


class AccountInfo(BaseModel):
    account_id: str
    balance: int
    reputation: float | None = Field(default=None, description="For agents: the score that scales their bids.")


class LedgerEntry(BaseModel):
    transfer_id: int
    at: datetime
    kind: str
    amount: int = Field(description="This account's side: positive in, negative out.")
    memo: str
    escrow_id: str | None


class LedgerPage(BaseModel):
    account_id: str
    entries: list[LedgerEntry]
    next_before: int | None = Field(description="Pass as `before` for older entries; null at the end.")


class DepositBody(Strict):
    amount: Credits
    idempotency_key: IdempotencyKey


class KeyBody(Strict):
    idempotency_key: IdempotencyKey


class DisputeBody(Strict):
    by: AgentIdField
    evidence: Annotated[str, StringConstraints(min_length=1, max_length=16_000)]
    idempotency_key: IdempotencyKey


class ResolveBody(Strict):
    outcome: Literal["release", "refund", "split"]
    agent_share_percent: Annotated[int, Field(ge=0, le=100)] = 50
    idempotency_key: IdempotencyKey


class BidBody(Strict):
    agent_id: AgentIdField
    price: Credits
    estimated_seconds: Annotated[float, Field(gt=0, le=7 * 86_400)]


class ReportBody(Strict):
    agent_id: AgentIdField
    status: Literal["progress", "completed", "failed"]
    result: Annotated[dict[str, Any], Field(max_length=100)] | None = None
    message: Annotated[str, StringConstraints(max_length=4000)] | None = None


class LedgerQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    before: Annotated[int, Field(ge=1)] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class TasksQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    state: list[TaskState] | None = None
    requester_id: str | None = None
    agent_id: str | None = None
    capability: str | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
