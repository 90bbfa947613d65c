"""Pydantic models at the edges of the market: tool and HTTP inputs, what callers read back, NATS payloads.

Inputs are strict and reject unexpected fields and text PostgreSQL cannot store (`agenthub.text`). Credits are
integers. Every money-moving request carries an idempotency key (1..255 characters): a retry with the same key and
body returns the first answer (`market.idempotency.CONTRACT`, the field's description in every schema).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agenthub.ids import AGENT_ID_PATTERN
from agenthub.text import Storable
from market.idempotency import CONTRACT, MAX_KEY_LENGTH

AgentIdField = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
Capability = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH), Field(description=CONTRACT)]
Credits = Annotated[int, Field(gt=0, le=10**12)]
TaskState = Literal["awaiting_approval", "bidding", "assigned", "running", "completed", "failed", "cancelled",
                   "expired"]
TASK_STATES: tuple[str, ...] = ("awaiting_approval", "bidding", "assigned", "running", "completed", "failed",
                                "cancelled", "expired")
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Strict(Storable):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class AcceptanceCheck(Strict):
    # How a result is checked before the escrow pays, fixed at submission (a comment: tool schemas stay short).

    json_schema: Annotated[dict[str, Any], Field(max_length=100)] | None = Field(
        default=None, description="JSON Schema (2020-12) the result must satisfy.")
    evaluator: Sha256 | None = Field(
        default=None, description="SHA-256 of an uploaded WASM evaluator: {task, result} on stdin, exit 0 passes.")
    on_fail: Literal["refund", "dispute"] = "refund"

    @model_validator(mode="after")
    def _something_to_check(self) -> "AcceptanceCheck":
        if self.json_schema is None and self.evaluator is None:
            raise ValueError("an acceptance check needs a json_schema, an evaluator, or both")
        return self


class CheckOutcome(BaseModel):
    """What the acceptance check found when the winner reported the task completed."""

    passed: bool
    checked_at: datetime
    schema_errors: list[str] | None = Field(default=None, description="Why the result fails the schema (≤ 10).")
    evaluator: dict[str, Any] | None = Field(default=None, description="The evaluator's run: outcome, exit_code, "
                                             "error, log, output.")

    def summary(self) -> str:
        """One line on why the check failed (or that it passed)."""
        if self.passed:
            return "passed"
        reasons = [f"schema: {'; '.join(self.schema_errors)}"] if self.schema_errors else []
        if self.evaluator is not None and self.evaluator["exit_code"] != 0:
            reasons.append(f"evaluator: {self.evaluator['outcome']} (exit code {self.evaluator['exit_code']})"
                           + (f": {self.evaluator['error']}" if self.evaluator["error"] else ""))
        return ", ".join(reasons) or "evaluator: did not finish"


class SubmitTaskInput(Strict):
    requester_id: AgentIdField = Field(description="Who pays: your agent id (operators: any account).")
    description: Annotated[str, StringConstraints(min_length=1, max_length=16_000)]
    required_capabilities: Annotated[list[Capability], Field(max_length=16)] = Field(default_factory=list)
    priority: Annotated[int, Field(ge=1, le=10)] = 5
    parameters: Annotated[dict[str, Any], Field(max_length=50)] = Field(default_factory=dict)
    budget: Credits = Field(description="The most you pay, held in escrow until the task ends.")
    bidding_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    bond_percent: Annotated[int, Field(ge=0, le=100)] = Field(
        default=0, description="Each bidder's bond, % of its bid: yours if the winner never delivers.")
    acceptance: AcceptanceCheck | None = Field(
        default=None, description="Run on the winner's result: a pass pays at once, a fail refunds or disputes.")
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
    state: Annotated[list[TaskState], Field(max_length=8)] | None = None
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
    bond_percent: int = 0
    acceptance: AcceptanceCheck | None = None
    check: CheckOutcome | None = Field(default=None, description="The acceptance check's outcome, once run.")
    approval_id: str | None = Field(default=None, description="The approval the task waited for, if it did.")
    created_at: datetime
    updated_at: datetime
    events: list[TaskEvent] = Field(default_factory=list)


class AuditBid(BaseModel):
    agent_id: str
    price: int
    estimated_seconds: float
    reputation: float | None = Field(description="The reputation the bid was scaled by when the auction cleared.")
    placed_seq: int = Field(description="Arrival order among all bids (ties go to the earlier bid).")


class AuditAuction(BaseModel):
    task_id: str
    budget: int
    bids: list[AuditBid]


class Replay(BaseModel):
    winner: str | None
    price: int | None
    matches: bool = Field(description="The replay gives the recorded winner and price.")


class TaskAudit(BaseModel):
    """An auction's clearing, replayable: `market.clearing.clear` over `auctions` gives this task's award."""

    task_id: str
    state: TaskState
    clearing_batch: str
    cleared_at: datetime
    winner: str | None
    price: int | None
    auctions: list[AuditAuction] = Field(description="The clearing's whole input: this task's auction and the "
                                         "others cleared with it (each agent wins at most one task per clearing).")
    replay: Replay


class TaskList(BaseModel):
    tasks: list[TaskInfo]


class BidPlaced(BaseModel):
    task_id: str
    agent_id: str
    price: int
    replaced: bool
    bidding_closes_at: datetime
    bond: int = Field(default=0, description="Credits held from your account as your bond on this task.")


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
