"""Which discoveries a subscriber wants: one frozen filter, matched in Python (live fan-out) and in SQL (replay
and polls) with the same meaning. Roles compare case-insensitively."""

from dataclasses import dataclass
from typing import Any

from collaboration.models import Discovery, FilterFields


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryFilter:
    types: frozenset[str] | None = None
    roles: frozenset[str] | None = None
    agent_ids: frozenset[str] | None = None
    min_confidence: float = 0.0

    @classmethod
    def of(cls, fields: FilterFields) -> "DiscoveryFilter":
        return cls(
            types=frozenset(fields.discovery_types) if fields.discovery_types is not None else None,
            roles=frozenset(r.lower() for r in fields.agent_roles) if fields.agent_roles is not None else None,
            agent_ids=frozenset(fields.agent_ids) if fields.agent_ids is not None else None,
            min_confidence=fields.min_confidence,
        )

    def matches(self, d: Discovery) -> bool:
        return (
            (self.types is None or d.discovery_type in self.types)
            and (self.roles is None or d.agent_role.lower() in self.roles)
            and (self.agent_ids is None or d.agent_id in self.agent_ids)
            and d.confidence >= self.min_confidence
        )

    def sql_args(self) -> tuple[Any, ...]:
        """Arguments for `SQL_CONDITION`, in its placeholder order starting at $3."""

        def arr(values: frozenset[str] | None) -> list[str] | None:
            return sorted(values) if values is not None else None

        return arr(self.types), arr(self.roles), arr(self.agent_ids), self.min_confidence


# $1 and $2 bound the sequence range; $3..$6 come from DiscoveryFilter.sql_args().
SQL_CONDITION = (
    "sequence > $1 AND sequence <= $2"
    " AND ($3::text[] IS NULL OR discovery_type = ANY($3))"
    " AND ($4::text[] IS NULL OR lower(agent_role) = ANY($4))"
    " AND ($5::text[] IS NULL OR agent_id = ANY($5))"
    " AND confidence >= $6"
)
