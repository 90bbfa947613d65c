-- The agent pool: one row per agent with its current state, and every state change and error as an event row.
-- `owner` is the replica whose supervisor runs the agent's process; `desired` is what the operator asked for
-- ('running' or 'stopped'), which decides what a restarting hub does with the agent.
CREATE TABLE agents (
    id text PRIMARY KEY,
    role text NOT NULL,
    capabilities text[] NOT NULL DEFAULT '{}',
    executor text NOT NULL,
    executor_config jsonb NOT NULL,
    restart_policy jsonb NOT NULL,
    heartbeat_seconds double precision NOT NULL,
    state text NOT NULL CHECK (state IN ('created', 'starting', 'running', 'busy', 'idle', 'stopping', 'stopped',
                                         'error', 'failed')),
    desired text NOT NULL CHECK (desired IN ('running', 'stopped')),
    owner text NOT NULL,
    pid integer,
    token_id text REFERENCES tokens (id),
    restarts integer NOT NULL DEFAULT 0,
    last_heartbeat timestamptz,
    breaker_state text NOT NULL DEFAULT 'closed',
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_owner_idx ON agents (owner);

CREATE TABLE agent_events (
    id bigserial PRIMARY KEY,
    agent_id text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,            -- transition, error, alert, heartbeat_lost, restart
    from_state text,
    to_state text,
    detail text NOT NULL DEFAULT ''
);
CREATE INDEX agent_events_agent_idx ON agent_events (agent_id, id);
