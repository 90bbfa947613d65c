-- Tasks and their sealed-bid auctions. One live bid per agent and task (a new bid replaces it; `seq` orders
-- arrivals for tie-breaks). Every state change is a row in task_events.
CREATE TABLE tasks (
    id text PRIMARY KEY,
    requester_id text NOT NULL,
    description text NOT NULL,
    required_capabilities text[] NOT NULL DEFAULT '{}',
    priority integer NOT NULL CHECK (priority BETWEEN 1 AND 10),
    parameters jsonb NOT NULL DEFAULT '{}',
    budget bigint NOT NULL CHECK (budget > 0),
    state text NOT NULL CHECK (state IN ('bidding', 'assigned', 'running', 'completed', 'failed', 'cancelled',
                                         'expired')),
    bidding_closes_at timestamptz NOT NULL,
    escrow_id text NOT NULL,
    winner text,
    price bigint CHECK (price > 0),
    welfare double precision,
    estimated_seconds double precision,
    result jsonb,
    assigned_at timestamptz,
    completed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_due_idx ON tasks (bidding_closes_at) WHERE state = 'bidding';
CREATE INDEX tasks_state_idx ON tasks (state, updated_at);
CREATE INDEX tasks_winner_idx ON tasks (winner) WHERE winner IS NOT NULL;

CREATE TABLE bids (
    task_id text NOT NULL REFERENCES tasks (id),
    agent_id text NOT NULL,
    price bigint NOT NULL CHECK (price > 0),
    estimated_seconds double precision NOT NULL CHECK (estimated_seconds > 0),
    seq bigserial NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, agent_id)
);

CREATE TABLE task_events (
    id bigserial PRIMARY KEY,
    task_id text NOT NULL REFERENCES tasks (id),
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    from_state text,
    to_state text,
    detail text NOT NULL DEFAULT ''
);
CREATE INDEX task_events_task_idx ON task_events (task_id, id);
