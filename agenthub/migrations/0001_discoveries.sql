-- The discovery log: a gap-free global sequence (taken from a one-row counter whose row lock orders commits),
-- subscriptions with their filters and server-side cursors, shared context, and bearer tokens.
CREATE TABLE discovery_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last bigint NOT NULL
);
INSERT INTO discovery_counter (last) VALUES (0);

CREATE TABLE discoveries (
    sequence bigint PRIMARY KEY,
    id text NOT NULL UNIQUE,
    agent_id text NOT NULL,
    agent_role text NOT NULL,
    discovery_type text NOT NULL,
    content text NOT NULL,
    confidence double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    related_to text REFERENCES discoveries (id),
    tags text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX discoveries_agent_idx ON discoveries (agent_id, sequence);
CREATE INDEX discoveries_type_idx ON discoveries (discovery_type, sequence);

CREATE TABLE subscriptions (
    id text PRIMARY KEY,
    subscriber_agent_id text NOT NULL,
    discovery_types text[],
    agent_roles text[],
    agent_ids text[],
    min_confidence double precision NOT NULL DEFAULT 0,
    cursor bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_agent_idx ON subscriptions (subscriber_agent_id);

CREATE TABLE contexts (
    id text PRIMARY KEY,
    from_agent text NOT NULL,
    to_agent text,
    context_type text NOT NULL,
    content jsonb NOT NULL,
    relevance double precision NOT NULL CHECK (relevance BETWEEN 0 AND 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX contexts_to_idx ON contexts (to_agent, expires_at);

CREATE TABLE tokens (
    id text PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('operator', 'agent', 'viewer')),
    agent_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    CHECK ((role = 'agent') = (agent_id IS NOT NULL))
);
