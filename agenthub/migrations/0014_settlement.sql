-- Accountable settlement (issue 16): bid bonds, acceptance checks, tasks waiting for a person's approval, and
-- what each auction cleared from, so that any clearing can be replayed.

-- Bonds: a bidder's stake on a task, held in the task's bond account `bond:{task_id}` from the bidder's account
-- while it is `held`; returned to the bidder when it loses or delivers, slashed to the requester (less the fee)
-- when the winner never delivers. One per bidder and task (a new bid adjusts it). Like escrows, no foreign key to
-- accounts or tasks: accounts are locked in id order by the money-moving transactions.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('mint', 'platform', 'agent', 'requester', 'escrow', 'bond'));

ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('deposit', 'hold', 'award', 'release', 'refund', 'split', 'bond', 'bond_return', 'slash'));

CREATE TABLE bonds (
    task_id text NOT NULL,
    agent_id text NOT NULL,
    escrow_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    state text NOT NULL CHECK (state IN ('held', 'returned', 'slashed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    CHECK ((state = 'held') = (settled_at IS NULL)),
    PRIMARY KEY (task_id, agent_id)
);

-- Tasks: a budget above the requester's approval threshold waits in `awaiting_approval` (escrow held, no auction)
-- until a person approves (the auction opens for `bidding_seconds`) or denies (cancelled, refunded).
ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('awaiting_approval', 'bidding', 'assigned', 'running', 'completed', 'failed', 'cancelled',
                     'expired'));
ALTER TABLE tasks
    ADD COLUMN bidding_seconds double precision,
    ADD COLUMN approval_id text,
    ADD COLUMN bond_percent integer NOT NULL DEFAULT 0 CHECK (bond_percent BETWEEN 0 AND 100),
    -- {"json_schema": {...} | null, "evaluator": "<sha256>" | null, "on_fail": "refund" | "dispute"}: fixed at
    -- submission; null for a task without a check.
    ADD COLUMN acceptance jsonb,
    -- {"passed": bool, "checked_at", "schema": {...} | null, "evaluator": {...} | null}: the check's outcome.
    ADD COLUMN check_outcome jsonb,
    ADD COLUMN clearing_batch text,  -- the tasks cleared together share it: a replay re-runs their clearing
    ADD COLUMN cleared_at timestamptz,
    -- The requester's credits reservation (governance.budgets) for the budget: settled with what the task cost once
    -- its escrow ended (null: the requester has no credits limit).
    ADD COLUMN credit_reservation text;
CREATE INDEX tasks_credit_reservation_idx ON tasks (updated_at) WHERE credit_reservation IS NOT NULL;
CREATE INDEX tasks_clearing_batch_idx ON tasks (clearing_batch) WHERE clearing_batch IS NOT NULL;

-- The reputation each bid was scaled by when its auction cleared (null until then, and for bids never cleared).
ALTER TABLE bids ADD COLUMN reputation double precision CHECK (reputation > 0 AND reputation <= 1);

-- Evaluators: WASM modules a requester uploaded to check results (bytes in the binary store, by SHA-256).
CREATE TABLE evaluators (
    sha256 text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint NOT NULL CHECK (size_bytes > 0),
    imports text[] NOT NULL,
    uploaded_by text NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now()
);
