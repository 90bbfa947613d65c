"""What executors that earn by doing tasks share: listen to `tasks.*.auction`, bid on every auction whose
required capabilities the agent has (asking `price_percent` of the budget, rounded up), and do each task whose
`tasks.{id}.assignment` names this agent, one at a time through `Runtime.work`."""

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from agent_pool.runtime import Runtime, ToolFailed


async def serve_tasks(rt: Runtime, *, price_percent: int, estimated_seconds: float,
                      do: Callable[[str], Awaitable[None]],
                      can_bid: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Bid and work until cancelled. `can_bid` (if given) is asked before each bid: an agent not ready to work
    (a WASM agent without a binary) stays out of auctions."""
    async with rt.messages("tasks.*.auction") as offers, rt.messages("tasks.*.assignment") as assignments, \
            anyio.create_task_group() as tg:
        tg.start_soon(_bid_on, rt, offers, price_percent, estimated_seconds, can_bid)
        async for update in assignments:
            if update.get("agent_id") == rt.agent_id and update.get("state") == "assigned":
                await rt.work(lambda task_id=update["task_id"]: do(task_id))  # type: ignore[misc]


async def _bid_on(rt: Runtime, offers: Any, price_percent: int, estimated_seconds: float,
                  can_bid: Callable[[], Awaitable[bool]] | None) -> None:
    mine = {c.lower() for c in rt.config.capabilities}
    async for offer in offers:
        if not {c.lower() for c in offer.get("required_capabilities", [])} <= mine:
            continue
        if can_bid is not None and not await can_bid():
            continue
        price = max(1, math.ceil(int(offer["budget"]) * price_percent / 100))
        try:
            await rt.tool("place_bid", {"task_id": offer["task_id"], "agent_id": rt.agent_id, "price": price,
                                        "estimated_seconds": estimated_seconds})
        except ToolFailed as exc:  # the auction closed meanwhile, or the hub refused: the next one may do
            await rt.report_error("transient", str(exc))
