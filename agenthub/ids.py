"""Typed identifiers and their constructors.

Agent ids are chosen by people and become NATS subject tokens, so they are restricted to a safe alphabet
(letters, digits, `_` and `-`, 1..64 characters); every other id is minted here.
"""

import re
import secrets
from typing import NewType

AgentId = NewType("AgentId", str)
DiscoveryId = NewType("DiscoveryId", str)
SubscriptionId = NewType("SubscriptionId", str)
ContextId = NewType("ContextId", str)
TokenId = NewType("TokenId", str)

AGENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)


def is_valid_agent_id(value: str) -> bool:
    """True when `value` can be used as an agent id (and so as one NATS subject token)."""
    return bool(_AGENT_ID_RE.fullmatch(value))  # `match` with `$` would accept a trailing newline


def _new(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def new_discovery_id() -> DiscoveryId:
    return DiscoveryId(_new("disc"))


def new_subscription_id() -> SubscriptionId:
    return SubscriptionId(_new("sub"))


def new_context_id() -> ContextId:
    return ContextId(_new("ctx"))


def new_token_id() -> TokenId:
    return TokenId(_new("tok"))
