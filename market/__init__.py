"""The market: tasks, sealed-bid VCG auctions, the double-entry escrow ledger, and reputation.

    service.Market        the operations with their permission checks, and the auction closer
    tasks.TaskStore       tasks, bids and task events in PostgreSQL
    clearing.clear        auction clearing (pure): reputation-scaled bids, maximum welfare, VCG payments
    reputation            reputation from an agent's record (pure), decaying with a half-life
    ledger, escrow        accounts, transfers and escrows in PostgreSQL; idempotency keys (idempotency)
"""
