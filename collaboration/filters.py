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

    def stored(self) -> tuple[list[str] | None, list[str] | None, list[str] | None, float]:
        """The filter as a subscription row stores it: types, roles, agent ids (sorted lists or None), minimum."""

        def arr(values: frozenset[str] | None) -> list[str] | None:
            return sorted(values) if values is not None else None

        return arr(self.types), arr(self.roles), arr(self.agent_ids), self.min_confidence

    def read_query(self, columns: str) -> tuple[str, list[Any]]:
        """SQL for one page of matching discoveries after `$1` (at most `$2`), with the log's bounds.

        Every row carries `newest` and `oldest` (the counter's `last` and `pruned`) from the same snapshot as the
        page; when nothing matches there is one row whose discovery columns are NULL. A list filter drives the
        read through its (column, sequence) index, one ordered index range per value merged by sequence, so the
        cost follows the rows returned rather than the size of the log, under a custom or a generic plan alike
        (an optional `($n IS NULL OR ...)` condition made PostgreSQL's generic plan walk the whole log).
        """
        args: list[Any] = []

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args) + 2}"

        lists = [(expr, sorted(values)) for expr, values in (
            ("agent_id", self.agent_ids), ("lower(agent_role)", self.roles), ("discovery_type", self.types),
        ) if values is not None]
        driver = lists.pop(0) if lists else None
        conditions = "".join(f" AND {expr} = ANY({param(values)}::text[])" for expr, values in lists)
        if self.min_confidence > 0:
            conditions += f" AND confidence >= {param(self.min_confidence)}"
        if driver is None:
            inner = (f"SELECT {columns} FROM discoveries WHERE sequence > $1 AND sequence <= c.last{conditions}"
                     " ORDER BY sequence LIMIT $2")
        else:
            # One ordered range of the value's (value, sequence) index per value, written as row comparisons: with
            # `value = k.v AND sequence > $1` the planner, taking every value to be as common as the average, may
            # walk the primary key instead and filter, which for a rare value reads the whole log.
            expr, values = driver
            per_value = (f"SELECT {columns} FROM discoveries WHERE ({expr}, sequence) > (k.v, $1)"
                         f" AND ({expr}, sequence) <= (k.v, c.last){conditions} ORDER BY {expr}, sequence LIMIT $2")
            inner = (f"SELECT x.* FROM unnest({param(values)}::text[]) AS k(v)"
                     f" CROSS JOIN LATERAL ({per_value}) x ORDER BY x.sequence LIMIT $2")
        sql = (f"SELECT c.last AS newest, c.pruned AS oldest, d.* FROM discovery_counter c"
               f" LEFT JOIN LATERAL ({inner}) d ON true")
        return sql, args
