"""The market: tasks, sealed-bid VCG auctions, the double-entry escrow ledger, and reputation.

    service.Market        the operations with their permission checks, and the auction closer
    tasks.TaskStore       tasks, bids and task events in PostgreSQL
    clearing.clear        auction clearing (pure): reputation-scaled bids, maximum welfare, VCG payments
    reputation            reputation from an agent's record (pure), decaying with a half-life
    ledger, escrow        accounts, transfers and escrows in PostgreSQL; idempotency keys (idempotency)
    bonds                 bid bonds: held at the bid, returned to losers and deliverers, slashed from no-shows
    acceptance            the JSON Schema half of acceptance checks, in a warm child process
"""
