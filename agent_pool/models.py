"""Pydantic models at the edges of the agent pool: spawn requests and executor configurations, what operators
read back, and the NATS payloads agent processes and the hub exchange.

NATS subjects (all under the hub's subject prefix):
    agents.{id}.announce               worker → hub: the process is up and connected (Announce)
    agents.discovery.announce          hub → anyone: an agent's announce, once the hub has checked it
    agents.{id}.heartbeat              worker → hub: alive, idle or busy (Heartbeat)
    agents.{id}.metrics.performance    worker → hub: work done, errors, resource use (Performance)
    agents.{id}.events.error           worker → hub: an error and its category (ErrorEvent)
    agents.{id}.events.state           hub → anyone: a state transition (StateChanged)
    agents.discovery.query             request/reply: running agents with a capability or role (AgentQuery)
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agent_pool.confinement import Confinement
from agent_pool.states import AgentState
from agenthub.ids import AGENT_ID_PATTERN
from agenthub.settings import LlmPrice
from agenthub.text import Storable
from sandbox.models import CompileLimits, RunLimits

AgentIdField = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=16_000)]
Executor = Literal["scripted", "claude", "command", "wasm"]
RestartType = Literal["permanent", "transient", "temporary"]
ErrorCategory = Literal["transient", "fatal", "logical", "budget"]  # budget: a work item the hub refused


class Strict(Storable):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Message(BaseModel):
    """NATS payloads: lenient on input (they cross process boundaries as JSON), unknown fields ignored."""

    model_config = ConfigDict(frozen=True)


# -- executor configurations -----------------------------------------------------------------------------------------


class ScriptedConfig(Strict):
    """Deterministic built-in behaviours. `analyzer` shares what it finds in `text`, sentence by sentence;
    `responder` answers the questions routed to it, linking each answer to its question; `worker` bids on task
    auctions it has the capabilities for (asking `price_percent` of the budget, estimating `estimated_seconds`)
    and does the tasks it wins (taking `work_seconds`, ending as `outcome`)."""

    behaviour: Literal["analyzer", "responder", "worker"]
    text: Text | None = None
    confidence: Annotated[float, Field(ge=0, le=1)] = 0.8
    price_percent: Annotated[int, Field(ge=1, le=100)] = 60
    estimated_seconds: Annotated[float, Field(gt=0, le=86_400)] = 5.0
    work_seconds: Annotated[float, Field(ge=0, le=3600)] = 0.0
    outcome: Literal["completed", "failed"] = "completed"

    @model_validator(mode="after")
    def _analyzer_needs_text(self) -> "ScriptedConfig":
        if self.behaviour == "analyzer" and self.text is None:
            raise ValueError("the analyzer behaviour needs `text` to analyse")
        return self


class ClaudeConfig(Strict):
    """The Anthropic Messages API in a tool-use loop over the hub's MCP tools."""

    model: Name = "claude-sonnet-4-5"
    prompt: Text | None = Field(default=None, description="Work to do once at start; questions routed later too.")
    system: Text | None = None
    max_tokens: Annotated[int, Field(ge=1, le=64_000)] = 1024
    max_turns: Annotated[int, Field(ge=1, le=50)] = 8
    base_url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=500)] | None = None
    call_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 60.0


class CommandConfig(Strict):
    """Any CLI agent: the prompt goes on stdin, or replaces `{prompt}` in the arguments."""

    argv: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=4096)]],
                    Field(min_length=1, max_length=64)]
    prompt: Text | None = None
    prompt_via: Literal["stdin", "argument"] = "stdin"
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    max_output_bytes: Annotated[int, Field(ge=1, le=16 << 20)] = 1 << 20
    pass_anthropic_key: bool = Field(default=False, description="Give the command the hub's ANTHROPIC_API_KEY "
                                     "(a CLI agent such as Claude Code needs it); off: it does not get it.")


class WasmConfig(Strict):
    """The agent's current WASM binary (uploaded to `/api/v1/agents/{id}/binary`), run in a fresh sandbox with
    `limits` for each task it wins. It bids like the scripted worker, and only while it has a binary."""

    price_percent: Annotated[int, Field(ge=1, le=100)] = 60
    estimated_seconds: Annotated[float, Field(gt=0, le=86_400)] = 5.0
    limits: RunLimits = Field(default_factory=RunLimits)


EXECUTOR_CONFIGS: dict[str, type[Strict]] = {"scripted": ScriptedConfig, "claude": ClaudeConfig,
                                             "command": CommandConfig, "wasm": WasmConfig}


class RestartPolicy(Strict):
    """How the agent's supervisor treats its process (Erlang/OTP terms)."""

    restart: RestartType = Field(default="permanent", description="permanent: always restarted; transient: only "
                                 "after a crash; temporary: never")
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 5
    period_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    backoff_initial_seconds: Annotated[float, Field(ge=0, le=60)] = 0.5
    backoff_max_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0
    backoff_reset_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    shutdown_seconds: Annotated[float, Field(ge=0.1, le=120)] = 5.0


RESERVED_AGENT_ID = "discovery"


class ResourceLimits(Strict):
    """The agent process's resource limits (its commands inherit them); unset: the hub's defaults."""

    memory_bytes: Annotated[int, Field(ge=256 << 20, le=1 << 40)] | None = Field(
        default=None, description="Address space (RLIMIT_AS); a wasm agent reserves about 6 GiB per module run.")
    cpu_seconds: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = Field(
        default=None, description="CPU time of the process (RLIMIT_CPU); past it the process is killed and "
        "restarted by its policy.")
    open_files: Annotated[int, Field(ge=64, le=1 << 20)] | None = Field(default=None, description="RLIMIT_NOFILE.")
    processes: Annotated[int, Field(ge=16, le=1 << 16)] | None = Field(
        default=None, description="Processes and threads (RLIMIT_NPROC), when agents run as users of their own.")


class SpawnAgentInput(Strict):
    agent_id: AgentIdField | None = Field(default=None, description="Omit to get a generated id.")
    role: Name
    capabilities: Annotated[list[Name], Field(max_length=32)] = Field(default_factory=list)
    executor: Executor
    executor_config: dict[str, Any] = Field(default_factory=dict)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    limits: ResourceLimits = Field(default_factory=ResourceLimits)
    heartbeat_seconds: Annotated[float, Field(ge=0.1, le=300)] | None = Field(
        default=None, description="Heartbeat interval; three missed beats count as a failure. Default: the hub's.")

    @model_validator(mode="after")
    def _config_fits_executor(self) -> "SpawnAgentInput":
        EXECUTOR_CONFIGS[self.executor].model_validate(self.executor_config)
        if self.agent_id == RESERVED_AGENT_ID:
            raise ValueError(f"agent_id {RESERVED_AGENT_ID!r} is reserved (agents.discovery.* are the hubs' subjects)")
        return self

    def config(self) -> Strict:
        return EXECUTOR_CONFIGS[self.executor].model_validate(self.executor_config)


class AgentRef(Strict):
    agent_id: AgentIdField


StateName = Literal["created", "starting", "running", "busy", "idle", "stopping", "stopped", "error", "failed"]


class ListAgentsInput(Strict):
    state: Annotated[list[StateName], Field(max_length=9)] | None = None
    role: Name | None = None
    capability: Name | None = None


# -- what operators read ---------------------------------------------------------------------------------------------


class AgentEvent(BaseModel):
    at: datetime
    kind: str
    from_state: str | None
    to_state: str | None
    detail: str


class AgentInfo(BaseModel):
    agent_id: str
    role: str
    capabilities: list[str]
    executor: Executor
    executor_config: dict[str, Any]
    restart_policy: RestartPolicy
    limits: ResourceLimits = Field(default_factory=ResourceLimits)
    heartbeat_seconds: float
    state: AgentState
    desired: Literal["running", "stopped"]
    owner: str
    pid: int | None
    restarts: int
    last_heartbeat: datetime | None
    breaker_state: str
    last_error: str | None
    binary_version: int | None = Field(default=None, description="wasm agents: the current binary version.")
    created_at: datetime
    updated_at: datetime
    metrics: dict[str, Any] | None = None
    reputation: float | None = Field(default=None, description="The market's score that scales this agent's bids.")
    recent_events: list[AgentEvent] = Field(default_factory=list)


class AgentList(BaseModel):
    agents: list[AgentInfo]


# -- NATS payloads ---------------------------------------------------------------------------------------------------


class WorkerConfig(Message):
    """Everything an agent process needs, passed in its environment (its token separately)."""

    agent_id: str
    instance: str
    role: str
    capabilities: list[str]
    executor: Executor
    executor_config: dict[str, Any]
    hub_url: str
    nats_url: str
    subject_prefix: str
    heartbeat_seconds: float
    compile_limits: CompileLimits | None = None  # for wasm agents: the hub's limits on compiling a module
    confinement: Confinement | None = None  # applied by the process to itself before it runs the agent
    # What LLM tokens cost and what to reserve for input that cannot be estimated (agenthub.settings.BudgetSettings)
    llm_prices: dict[str, LlmPrice] = Field(default_factory=dict)
    default_llm_reservation: int = 4096


class Announce(Message):
    agent_id: str
    instance: str
    pid: int
    role: str
    capabilities: list[str]
    executor: str


class Heartbeat(Message):
    agent_id: str
    instance: str
    pid: int
    state: Literal["idle", "busy"]
    seq: int
    work_done: int


class Performance(Message):
    agent_id: str
    instance: str
    work_done: int
    errors: int
    busy_seconds: float
    uptime_seconds: float
    rss_bytes: int
    cpu_seconds: float


class ErrorEvent(Message):
    agent_id: str
    instance: str
    category: ErrorCategory
    message: str


class StateChanged(Message):
    agent_id: str
    from_state: str | None
    to_state: str
    detail: str
    at: datetime


class AgentQuery(Message):
    capability: str | None = None
    role: str | None = None


class AdvertisedAgent(Message):
    agent_id: str
    role: str
    capabilities: list[str]
    state: str


class AgentQueryReply(Message):
    agents: list[AdvertisedAgent]
