"""Pydantic models at the edges of collaboration: tool and HTTP inputs, outputs and NATS payloads.

Inputs are strict (no type coercion from strings), reject unexpected fields and text PostgreSQL cannot store
(`agenthub.text.Storable`). Discovery and context types
are accepted in any case and stored lowercase.
"""

import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from agenthub.ids import AGENT_ID_PATTERN
from agenthub.text import Storable

MAX_CONTENT_CHARS = 16_000
MAX_LIST_ITEMS = 50

DiscoveryType = Literal["pattern", "anomaly", "connection", "solution", "question", "insight"]
DISCOVERY_TYPES: tuple[str, ...] = get_args(DiscoveryType)
ContextType = Literal["background", "working_memory", "patterns", "questions", "partial_solutions", "warnings"]
CONTEXT_TYPES: tuple[str, ...] = get_args(ContextType)


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


AgentIdField = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
RoleField = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=64)]
DiscoveryTypeField = Annotated[DiscoveryType, BeforeValidator(_lower)]
ContextTypeField = Annotated[ContextType, BeforeValidator(_lower)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Content = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONTENT_CHARS), AfterValidator(_not_blank)]


_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def validation_errors(exc: ValidationError) -> list[tuple[str, str, str]]:
    """(field path, message, error type) per error, without pydantic's internal validator names in the path."""
    out = []
    for e in exc.errors(include_url=False, include_input=False):
        parts = [str(p) for p in e["loc"] if isinstance(p, int) or (_FIELD.match(p) and p not in _TYPE_TAGS)]
        out.append((".".join(parts), e["msg"], e["type"]))
    return out


class Strict(Storable):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Output(BaseModel):
    model_config = ConfigDict(frozen=True)


# -- discoveries ---------------------------------------------------------------------------------------------------


class ShareDiscoveryInput(Strict):
    agent_id: AgentIdField = Field(description="Your agent id.")
    agent_role: RoleField = Field(description="Your role, e.g. Analyzer.")
    discovery_type: DiscoveryTypeField
    content: Content
    confidence: Unit = Field(description="How sure you are.")
    related_to: ShortText | None = Field(default=None, description="Id of the discovery this one answers.")
    tags: Annotated[list[ShortText], Field(max_length=20)] = Field(default_factory=list)


class Discovery(Output):
    """A stored discovery; also the NATS payload on `discoveries.{agent_id}.{type}`."""

    discovery_id: str
    sequence: int
    agent_id: str
    agent_role: str
    discovery_type: DiscoveryType
    content: str
    confidence: float
    related_to: str | None
    tags: list[str]
    timestamp: datetime

    @property
    def uri(self) -> str:
        return discovery_uri(self.agent_id, self.discovery_id)


class SharedDiscovery(Output):
    discovery_id: str
    uri: str
    sequence: int
    nats_subject: str
    timestamp: datetime


def discovery_uri(agent_id: str, discovery_id: str) -> str:
    return f"discovery://agents/{agent_id}/discoveries/{discovery_id}"


def collection_uri(agent_id: str) -> str:
    return f"discovery://agents/{agent_id}/discoveries"


# -- subscriptions -------------------------------------------------------------------------------------------------


class FilterFields(Strict):
    discovery_types: Annotated[list[DiscoveryTypeField], Field(max_length=6)] | None = None
    agent_roles: Annotated[list[RoleField], Field(max_length=MAX_LIST_ITEMS)] | None = None
    agent_ids: Annotated[list[AgentIdField], Field(max_length=MAX_LIST_ITEMS)] | None = None
    min_confidence: Unit = 0.0


class SubscribeInput(FilterFields):
    subscriber_agent_id: AgentIdField
    start: Literal["now", "beginning"] | Annotated[int, Field(ge=0)] = Field(
        default="now", description="'now' (only new discoveries), 'beginning', or the sequence to start after."
    )


class Subscribed(Output):
    subscription_id: str
    cursor: int = Field(description="Pass to poll_discoveries; the subscription also remembers it.")
    sse_endpoint: str = Field(description="The same subscription as Server-Sent Events, for UIs.")
    resource_uri: str = Field(description="MCP resource to subscribe to for update notifications: the followed "
                              "agent's collection, or the collection template when the filter follows several.")


class PollInput(Strict):
    subscription_id: ShortText
    cursor: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The cursor the last poll returned. Omitted: after the last poll the hub "
        "answered, even if you never got that answer."
    )
    wait_seconds: Annotated[float, Field(ge=0, le=30)] = Field(
        default=0, description="How long to wait when nothing is new."
    )
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class PollResult(Output):
    discoveries: list[Discovery]
    cursor: int
    next: str = Field(description="What to pass next time, and why.")

    @classmethod
    def of(cls, discoveries: list[Discovery], cursor: int) -> "PollResult":
        return cls(discoveries=discoveries, cursor=cursor,
                   next=f"Pass cursor={cursor} in your next poll: without a cursor a poll starts after the last one "
                        "the hub answered, so discoveries in an answer you did not receive would be skipped.")


class UnsubscribeInput(Strict):
    subscription_id: ShortText


class Unsubscribed(Output):
    subscription_id: str
    removed: bool


# -- context ---------------------------------------------------------------------------------------------------------

ContextContent = Content | Annotated[dict[str, Any], Field(max_length=MAX_LIST_ITEMS)]


class ShareContextInput(Strict):
    from_agent: AgentIdField
    to_agent: AgentIdField | None = Field(default=None, description="Omit to broadcast to every agent.")
    context_type: ContextTypeField
    content: ContextContent
    relevance: Unit
    ttl_seconds: Annotated[int, Field(ge=1, le=7 * 86400)] = 300


class ContextItem(Output):
    context_id: str
    from_agent: str
    to_agent: str | None
    context_type: ContextType
    content: str | dict[str, Any]
    relevance: float
    created_at: datetime
    expires_at: datetime


class SharedContext(Output):
    context_id: str
    nats_subject: str
    expires_at: datetime


class GetContextInput(Strict):
    agent_id: AgentIdField
    context_types: Annotated[list[ContextTypeField], Field(max_length=6)] | None = None
    min_relevance: Unit = 0.0


class ContextList(Output):
    items: list[ContextItem]


# -- export and import (JSON Lines) ------------------------------------------------------------------------------


class DiscoveryLine(Strict):
    """One discovery in an export file: what it is, who shared it and when; `sequence` is its position in the hub
    it came from (an import gives it a new one)."""

    kind: Literal["discovery"]
    discovery_id: AgentIdField  # minted ids use the same safe alphabet
    sequence: Annotated[int, Field(ge=1)] | None = None
    agent_id: AgentIdField
    agent_role: RoleField
    discovery_type: DiscoveryTypeField
    content: Content
    confidence: Unit
    related_to: ShortText | None = None
    tags: Annotated[list[ShortText], Field(max_length=20)] = Field(default_factory=list)
    timestamp: AwareDatetime


class ContextLine(Strict):
    """One context item in an export file; an import skips it once it has expired."""

    kind: Literal["context"]
    context_id: AgentIdField
    from_agent: AgentIdField
    to_agent: AgentIdField | None = None
    context_type: ContextTypeField
    content: ContextContent
    relevance: Unit
    created_at: AwareDatetime
    expires_at: AwareDatetime


ArchiveLine = Annotated[DiscoveryLine | ContextLine, Field(discriminator="kind")]


class EmptyInput(Strict):
    pass


class CollaborationStatus(Output):
    discoveries_by_type: dict[str, int]
    discoveries_total: int = Field(description="Discoveries stored (retention may have deleted older ones).")
    newest_sequence: int
    oldest_cursor: int = Field(description="The oldest position still readable: discoveries up to it were deleted "
                               "by the retention policy (0 when nothing was).")
    subscriptions: int
    sse_clients: int


class RoutedQuestion(Output):
    """What the live orchestrator sends an agent (as `questions` context on `context.direct.{id}`) for a
    `question` discovery it should answer."""

    discovery_id: str
    question: str
    from_agent: str
    depth: int
    tags: list[str]
