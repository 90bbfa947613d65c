"""All configuration, in one pydantic-settings model built at the entry point and passed down.

Environment variables use the prefix `AGENTHUB_` and `__` for nesting (`AGENTHUB_SSE__MAX_CLIENTS=500`);
the two external service URLs also have flat names, `AGENTHUB_NATS_URL` and `AGENTHUB_DATABASE_URL`.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.models import MIB, CompileLimits, RunLimits


class LimitSettings(BaseModel):
    """Request size limits; the limits on each field (content length, list sizes) are part of the tool schemas."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=1 << 20, ge=1024)


class McpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Stateless tool calls answered by the hub itself rather than through the SDK's dispatch (mcp_server.direct).
    direct_tool_calls: bool = True


class SSESettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_clients: int = Field(default=2000, ge=1)
    ring_size: int = Field(default=1024, ge=1)  # latest events kept in memory for streams; older ones come from the log
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    send_timeout_seconds: float = Field(default=5.0, gt=0)
    activity_poll_seconds: float = Field(default=0.25, gt=0)  # how often the hub-wide stream reads the activity log
    metrics_seconds: float = Field(default=5.0, gt=0)  # the interval of `metrics_update` on the hub-wide stream


class DatabaseSettings(BaseModel):
    """How long the hub waits on PostgreSQL before it answers 503 (with `Retry-After`) instead of hanging."""

    model_config = ConfigDict(extra="forbid")

    # Opening a connection, or waiting for a free one from the pool (or for a timed-out one to be given back).
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # A statement taking longer than this fails: with the above, bounds how long a request waits on a frozen server.
    # Long work (imports, retention, clearing) is done in statements well under it.
    statement_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)


class RetentionSettings(BaseModel):
    """How much of the discovery log a long-lived hub keeps (off by default: everything is kept)."""

    model_config = ConfigDict(extra="forbid")

    max_age_seconds: float | None = Field(default=None, gt=0)  # delete discoveries older than this
    max_discoveries: int | None = Field(default=None, ge=1)  # keep only the newest this many
    interval_seconds: float = Field(default=60.0, gt=0)  # how often the policy is applied
    batch: int = Field(default=5000, ge=1, le=100_000)  # deleted per transaction (shares wait for each one)


class RateLimitSettings(BaseModel):
    """Per token: requests a second with bursts (a token bucket). Per agent, for its own token: discoveries shared
    and questions asked (token buckets), subscriptions held and SSE streams open at once (operators, who may act as
    any agent, are bound by their token's request rate only). Replicas share what they use over NATS every
    `sync_seconds`, so N replicas allow about the configured rate, not N times it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    requests_per_second: float = Field(default=100.0, gt=0)  # every HTTP request a token makes (REST, MCP, SSE)
    request_burst: int = Field(default=1000, ge=1)  # a dashboard's page load or a fan-out of streams at once
    discoveries_per_second: float = Field(default=10.0, gt=0)
    discovery_burst: int = Field(default=200, ge=1)
    questions_per_minute: float = Field(default=60.0, gt=0)  # discoveries of type `question` (they are routed)
    question_burst: int = Field(default=20, ge=1)
    max_subscriptions: int = Field(default=100, ge=1)  # held by one agent at once (unsubscribe to free one)
    max_streams: int = Field(default=16, ge=1)  # SSE streams an agent's token holds open at once, on all replicas
    sync_seconds: float = Field(default=0.1, gt=0, le=5)  # how often a replica tells the others what it used


class AgentSettings(BaseModel):
    """The agent pool, its supervision and the live orchestrator."""

    model_config = ConfigDict(extra="forbid")

    heartbeat_seconds: float = Field(default=10.0, ge=0.1, le=300)  # default interval; a spawn request may set its own
    missed_beats: int = Field(default=3, ge=1, le=100)  # this many intervals without a heartbeat is a failure
    startup_seconds: float = Field(default=30.0, gt=0)  # a process that has not announced itself by then is restarted
    max_agents: int = Field(default=100, ge=1)
    # Fork agent processes from a process that has imported the agent's libraries once (restarts in tens of ms
    # instead of the half second `import mcp` takes); off: every agent process starts from scratch.
    fork_server: bool = True
    # Agent processes starting at once, each until it announces itself, so that a burst (a hub restart that brings
    # back every agent) cannot starve the hub and its own processes past `startup_seconds`. Started from scratch,
    # a process imports for seconds of CPU: one per core. Forked, it costs a fifth of a second: four per core.
    max_cold_starts: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_fork_starts: int = Field(default_factory=lambda: 4 * (os.cpu_count() or 1), ge=1)
    breaker_fail_max: int = Field(default=3, ge=1)  # consecutive failures (crashes, lost heartbeats) that open it
    breaker_reset_seconds: float = Field(default=30.0, gt=0)
    max_question_depth: int = Field(default=4, ge=0)  # orchestrator loop guard: related_to chain depth
    questions_per_agent_per_minute: int = Field(default=30, ge=1)
    # Each agent process's resource limits, unless its spawn request sets its own (agent_pool.confinement).
    memory_bytes: int = Field(default=16 << 30, ge=256 << 20)  # address space: a wasm run reserves about 6 GiB
    cpu_seconds: int = Field(default=3600, ge=1)  # CPU time of one process; past it, killed and restarted
    open_files: int = Field(default=1024, ge=64)
    processes: int = Field(default=256, ge=16)  # processes and threads, with a uid per agent (the hub as root)
    # When the hub runs as root, agent processes run as uid (and gid) uid_base + n, n < uid_count, one per agent;
    # uids that have an account are skipped. The range must not be used by anything else on the machine.
    uid_base: int = Field(default=1_000_000_000, ge=1000)
    uid_count: int = Field(default=65_536, ge=1)


class MarketSettings(BaseModel):
    """Tasks, auctions, escrow and reputation."""

    model_config = ConfigDict(extra="forbid")

    fee_percent: int = Field(default=10, ge=0, le=100)  # the platform's share of each payment
    accept_after_seconds: float = Field(default=3600.0, gt=0)  # a completed task is accepted automatically after
    work_timeout_seconds: float = Field(default=3600.0, gt=0)  # an awarded task unfinished after this has failed
    close_interval_seconds: float = Field(default=0.25, gt=0)  # how often due auctions are cleared (a batch)
    reputation_half_life_seconds: float = Field(default=30 * 24 * 3600.0, gt=0)
    # An acceptance check's JSON Schema runs in a child process stopped after this long (the check then fails).
    schema_check_seconds: float = Field(default=5.0, gt=0, le=300)
    # Idempotency keys are kept this long, then forgotten (a retry after that acts again); never less than a day,
    # which the API promises its callers.
    idempotency_retention_seconds: float = Field(default=24 * 3600.0, ge=24 * 3600.0)


class ApprovalSettings(BaseModel):
    """Human approvals (governance.approvals): how long one waits for an operator, and what if nobody answers."""

    model_config = ConfigDict(extra="forbid")

    expires_seconds: float = Field(default=3600.0, gt=0)  # unless the request sets its own
    default_decision: Literal["approve", "deny"] = "deny"  # applied at expiry, unless the request sets its own
    max_wait_seconds: float = Field(default=60.0, gt=0, le=300)  # the longest long-poll for a decision
    sweep_seconds: float = Field(default=1.0, gt=0)  # how often expired approvals get their default


class SandboxSettings(BaseModel):
    """WASM modules: what an upload may cost to compile, and the limits of operators' trial runs."""

    model_config = ConfigDict(extra="forbid")

    max_module_bytes: int = Field(default=50 * MIB, ge=1024)
    compile_cpu_seconds: int = Field(default=10, ge=1, le=600)
    compile_memory_bytes: int = Field(default=1024 * MIB, ge=256 * MIB)  # the compiler process's address space
    concurrency: int = Field(default=2, ge=1, le=64)  # modules running at once in the hub (trial runs)
    limits: RunLimits = Field(default_factory=RunLimits)

    def compile_limits(self) -> CompileLimits:
        """Uploads are checked against the trial-run memory cap: a module that starts bigger could never run."""
        return CompileLimits(max_module_bytes=self.max_module_bytes, cpu_seconds=self.compile_cpu_seconds,
                             memory_bytes=self.compile_memory_bytes, memory_cap_bytes=self.limits.memory_bytes)


class OAuthSettings(BaseModel):
    """OAuth 2.1 sign-in for remote MCP clients (the hub is its own authorization server; `auth` must be on)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    access_token_seconds: int = Field(default=3600, ge=60, le=24 * 3600)
    refresh_token_seconds: int = Field(default=30 * 24 * 3600, ge=3600, le=365 * 24 * 3600)
    code_seconds: int = Field(default=60, ge=10, le=600)  # an authorization code is exchanged within this
    consent_seconds: int = Field(default=600, ge=60, le=3600)  # an operator answers the consent page within this
    # The public endpoints (/register, /authorize, /token, /revoke) have no token to charge: each client address may
    # make this many requests a minute, in bursts of `request_burst`.
    requests_per_minute: float = Field(default=60.0, gt=0)
    request_burst: int = Field(default=30, ge=1)
    # Clients whose client_id is an https URL are described by the document there (web_ui.client_metadata). The
    # hub fetches only public addresses unless `client_metadata_private_addresses`; `client_metadata_ca_file`
    # adds a CA to trust for those fetches (an internal client's host).
    client_metadata_documents: bool = True
    client_metadata_private_addresses: bool = False
    client_metadata_ca_file: Path | None = None


class NatsCredentials(BaseModel):
    """How a connection signs in to an external NATS (`AGENTHUB_NATS_URL`); unset fields are not sent."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None  # a `.creds` file: user JWT and nkey seed
    nkey_seed_file: Path | None = None  # a file holding a user nkey seed


class NatsSettings(NatsCredentials):
    """The hub's own NATS login (the fields inherited), TLS, and where agent processes get theirs.

    With the embedded NATS (no `AGENTHUB_NATS_URL`) none of this is needed: the hub registers a user for itself
    and one per agent process with the server. `authority_dir` points at the directory of a nats-server started
    by agenthub (`EmbeddedNats`) on this machine, for a hub that uses one it did not start; `agents` is the login
    agent processes use with an external NATS where the hub cannot create users."""

    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    authority_dir: Path | None = None
    agents: NatsCredentials | None = None


class LlmPrice(BaseModel):
    """What a model's tokens cost, in micro-USD per million tokens (so $3 per million input tokens is 3_000_000)."""

    model_config = ConfigDict(extra="forbid")

    input: int = Field(ge=0)
    output: int = Field(ge=0)


def _default_prices() -> dict[str, LlmPrice]:
    # Anthropic's list prices per million tokens; `default` prices a model the table does not name.
    return {"claude-opus-4-1": LlmPrice(input=15_000_000, output=75_000_000),
            "claude-sonnet-4-5": LlmPrice(input=3_000_000, output=15_000_000),
            "claude-haiku-4-5": LlmPrice(input=1_000_000, output=5_000_000),
            "default": LlmPrice(input=3_000_000, output=15_000_000)}


class BudgetSettings(BaseModel):
    """Budgets and spend caps (governance.budgets)."""

    model_config = ConfigDict(extra="forbid")

    # An open reservation older than this (its agent crashed before settling) is settled at its reserved amount.
    reservation_expiry_seconds: float = Field(default=3600.0, gt=0)
    sweep_seconds: float = Field(default=5.0, gt=0)  # how often expired reservations and unflushed spend are handled
    # How long a replica believes its list of subjects with limits without reading it again (a change on any
    # replica reaches the others at once over NATS; this bounds a lost message).
    cache_seconds: float = Field(default=2.0, gt=0, le=60)
    # What the claude executor reserves for an API call's input tokens when it cannot estimate them.
    default_llm_reservation: int = Field(default=4096, ge=0)
    llm_prices: dict[str, LlmPrice] = Field(default_factory=_default_prices)
    spend_retention_days: float = Field(default=400.0, gt=0)  # per-minute spend buckets and settled reservations
    max_series_points: int = Field(default=10_080, ge=1, le=100_000)  # a week of minutes per spend query


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTHUB_", env_nested_delimiter="__", extra="ignore",
                                      populate_by_name=True)

    data_dir: Path = Path(".agenthub")
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    public_url: str | None = None
    nats_url: str | None = None
    database_url: str | None = None
    nats_subject_prefix: str = ""
    nats: NatsSettings = Field(default_factory=NatsSettings)
    replica_id: str | None = None  # default: a name kept in the data directory
    auth: bool = True
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)
    db_pool_size: int = Field(default=10, ge=1)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    # Embedded NATS / PostgreSQL servers that die are restarted; more than this many restarts within a minute and
    # the hub stops trying (/ready says so) and an operator restarts it.
    service_restarts_per_minute: int = Field(default=10, ge=1, le=1000)
    # A resolved token is believed this long without asking PostgreSQL again; revocations reach every replica at
    # once over NATS, and this bounds how long one whose message was lost stays usable.
    token_cache_seconds: float = Field(default=2.0, gt=0, le=60)
    # How often the live feed checks the log for discoveries NATS did not bring (a lost or late publish).
    feed_sync_seconds: float = Field(default=1.0, gt=0)
    log_level: str = "info"
    limits: LimitSettings = Field(default_factory=LimitSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    sse: SSESettings = Field(default_factory=SSESettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    market: MarketSettings = Field(default_factory=MarketSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    # For `claude` agents; read from ANTHROPIC_API_KEY (the Anthropic SDK's own name) and passed to their processes.
    anthropic_api_key: str | None = Field(default=None, validation_alias="ANTHROPIC_API_KEY", repr=False)
