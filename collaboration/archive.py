"""The discovery log (and live context) as JSON Lines: export from any cursor, import into any hub. This is how
teams back a hub up and move it, and how the scale benchmark loads its data.

One JSON object per line, told apart by `kind`:

    {"kind": "discovery", "discovery_id", "sequence", "agent_id", "agent_role", "discovery_type", "content",
     "confidence", "related_to", "tags", "timestamp"}
    {"kind": "context", "context_id", "from_agent", "to_agent", "context_type", "content", "relevance",
     "created_at", "expires_at"}

An import keeps each discovery's id, agent, type, content, confidence, links and time; the sequences are the
importing hub's own, in file order. Ids already stored are skipped, so an interrupted import is finished by
running it again, without duplicates. Imported discoveries reach live subscribers like shared ones: the last one
of each chunk is announced on NATS, and every replica's feed reads the rest from the log, page by page.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from agenthub.bus import Bus
from agenthub.errors import InvalidInput
from collaboration.context import ContextManager
from collaboration.discoveries import DiscoveryLog, discovery_subject
from collaboration.filters import DiscoveryFilter
from collaboration.models import ArchiveLine, ContextLine, Discovery, DiscoveryLine, validation_errors

MAX_IMPORT_LINES = 5000  # per request; the CLI sends a file in chunks
_EXPORT_PAGE = 1000
_LINE: TypeAdapter[DiscoveryLine | ContextLine] = TypeAdapter(ArchiveLine)


def discovery_line(d: Discovery) -> bytes:
    return DiscoveryLine(kind="discovery", discovery_id=d.discovery_id, sequence=d.sequence, agent_id=d.agent_id,
                         agent_role=d.agent_role, discovery_type=d.discovery_type, content=d.content,
                         confidence=d.confidence, related_to=d.related_to, tags=d.tags,
                         timestamp=d.timestamp).model_dump_json().encode() + b"\n"


def parse_lines(body: bytes) -> list[DiscoveryLine | ContextLine]:
    """Every non-blank line of a chunk, validated; InvalidInput names the first bad line and why."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) > MAX_IMPORT_LINES:
        raise InvalidInput(f"at most {MAX_IMPORT_LINES} lines per import request, got {len(lines)}")
    parsed = []
    for number, line in enumerate(lines, start=1):
        try:
            item = _LINE.validate_json(line)
        except ValidationError as exc:
            reasons = "; ".join(f"{loc or 'line'}: {msg}" for loc, msg, _ in validation_errors(exc))
            raise InvalidInput(f"line {number} of the chunk is not a discovery or context line: {reasons}") from exc
        parsed.append(item)
    return parsed


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportSummary:
    discoveries_imported: int
    discoveries_skipped: int
    context_imported: int
    context_skipped: int
    newest_sequence: int | None  # the last discovery imported, if any


class Archive:
    def __init__(self, log: DiscoveryLog, contexts: ContextManager, bus: Bus) -> None:
        self._log = log
        self._contexts = contexts
        self._bus = bus

    async def export(self, after: int, *, context: bool) -> AsyncIterator[bytes]:
        """The log after `after` as lines, a page at a time (bounded memory whatever its size); then, with
        `context`, every unexpired context item. Raises CursorExpired/CursorInFuture before the first line."""
        everything = DiscoveryFilter()
        cursor = after
        while True:
            items, cursor = await self._log.read(everything, cursor, _EXPORT_PAGE)
            if items:
                yield b"".join(discovery_line(d) for d in items)
            if len(items) < _EXPORT_PAGE:
                break
        if context:
            async for chunk in self._contexts.export():
                yield chunk

    async def import_lines(self, lines: list[DiscoveryLine | ContextLine]) -> ImportSummary:
        discoveries = list({d.discovery_id: d for d in lines if isinstance(d, DiscoveryLine)}.values())
        contexts = [c for c in lines if isinstance(c, ContextLine)]
        result = await self._log.import_many(discoveries) if discoveries else None
        context_imported = await self._contexts.import_many(contexts) if contexts else 0
        if result is not None and result.newest is not None:
            # Wakes every replica's feed, which reads the whole chunk from the log: this one's too, as it is sent
            # on the hub's main connection, whose messages the discovery connection hears.
            newest = result.newest
            await self._bus.publish(discovery_subject(self._bus, newest.agent_id, newest.discovery_type), newest)
        return ImportSummary(
            discoveries_imported=result.imported if result else 0,
            discoveries_skipped=len([d for d in lines if isinstance(d, DiscoveryLine)])
            - (result.imported if result else 0),
            context_imported=context_imported, context_skipped=len(contexts) - context_imported,
            newest_sequence=result.newest.sequence if result and result.newest else None,
        )
