"""Bid bonds: what a bidder stakes on a task that asks for one, so that winning and not delivering costs it.

A task may ask a bond of `bond_percent` of each bid's price (rounded up, at least one credit). The bond moves from
the bidder's account into the task's bond account `bond:{task_id}` in the bid's own transaction, so a bidder
that cannot cover it cannot bid (`InsufficientFunds`, and the bid is not stored); a new bid adjusts it. When the
auction clears, the losers' bonds go back; the winner's goes back when it delivers (reports the task completed),
and to the requester, less the platform's fee, when it fails, times out or never reports. A cancelled task
returns every bond it holds.

    held ──return──▶ returned
      └───slash───▶ slashed (the requester gets amount − fee, the platform the fee)

The functions run in the caller's transaction, which has locked the task's row first (`market.tasks`): that
serialises every change to a task's bonds. They lock accounts through `market.ledger.post_transfer` (in id order).
`market.ledger.Ledger.verify` checks that each bond account holds exactly the bonds still held.
"""

from agenthub.database import Connection
from agenthub.errors import Conflict
from market.ledger import PLATFORM, AccountId, TransferKind, agent_account, bond_account, post_transfer


def bond_for(price: int, percent: int) -> int:
    """The bond on a bid of `price` when the task asks `percent`: rounded up, so at least one credit; 0 without."""
    return -(-price * percent // 100) if percent else 0


async def post(conn: Connection, *, task_id: str, escrow_id: str, agent_id: str, amount: int) -> int:
    """Hold `amount` as the agent's bond on the task, adjusting a bond it already holds there. Returns the change.

    Raises:
        InsufficientFunds: the agent's account cannot cover the bond (or its increase).
        Conflict: the agent's bond on this task was already returned or slashed.
    """
    row = await conn.fetchrow("SELECT amount, state FROM bonds WHERE task_id = $1 AND agent_id = $2 FOR UPDATE",
                              task_id, agent_id)
    if row is not None and row["state"] != "held":
        raise Conflict(f"the bond of {agent_id!r} on task {task_id} was already {row['state']}")
    change = amount - (row["amount"] if row is not None else 0)
    bidder, stake = agent_account(agent_id), bond_account(task_id)
    if change > 0:
        await post_transfer(conn, TransferKind.BOND, [(bidder, -change), (stake, change)], escrow_id=escrow_id,
                            memo=f"bond of {agent_id} on task {task_id}")
    elif change < 0:
        await post_transfer(conn, TransferKind.BOND_RETURN, [(stake, change), (bidder, -change)], escrow_id=escrow_id,
                            memo=f"bond of {agent_id} on task {task_id} lowered with its bid")
    await conn.execute(
        "INSERT INTO bonds (task_id, agent_id, escrow_id, amount, state) VALUES ($1, $2, $3, $4, 'held')"
        " ON CONFLICT (task_id, agent_id) DO UPDATE SET amount = EXCLUDED.amount", task_id, agent_id, escrow_id,
        amount)
    return change


async def give_back(conn: Connection, task_id: str, *, only: str | None = None, keep: str | None = None,
                    why: str) -> int:
    """Return the task's held bonds to their bidders (all, `only` that agent's, or all but `keep`'s), in one
    transfer. Returns the credits returned."""
    rows = await conn.fetch(
        "UPDATE bonds SET state = 'returned', settled_at = now() WHERE task_id = $1 AND state = 'held'"
        " AND ($2::text IS NULL OR agent_id = $2) AND ($3::text IS NULL OR agent_id <> $3)"
        " RETURNING agent_id, amount, escrow_id", task_id, only, keep)
    total: int = sum(r["amount"] for r in rows)
    if total:
        legs: list[tuple[AccountId, int]] = [(bond_account(task_id), -total)]
        legs += [(agent_account(r["agent_id"]), r["amount"]) for r in rows]
        await post_transfer(conn, TransferKind.BOND_RETURN, legs, escrow_id=rows[0]["escrow_id"],
                            memo=f"bonds on task {task_id} returned: {why}")
    return total


async def slash(conn: Connection, task_id: str, agent_id: str, *, to: AccountId, fee_percent: int, why: str) -> int:
    """Pay the agent's held bond on the task to `to` (the requester), less `fee_percent` to the platform. Returns
    the bond (0 when the agent holds none there)."""
    row = await conn.fetchrow(
        "UPDATE bonds SET state = 'slashed', settled_at = now() WHERE task_id = $1 AND agent_id = $2"
        " AND state = 'held' RETURNING amount, escrow_id", task_id, agent_id)
    if row is None:
        return 0
    amount: int = row["amount"]
    fee = amount * fee_percent // 100
    await post_transfer(conn, TransferKind.SLASH, [(bond_account(task_id), -amount), (to, amount - fee),
                                                   (PLATFORM, fee)], escrow_id=row["escrow_id"],
                        memo=f"bond of {agent_id} on task {task_id} slashed: {why}")
    return amount
