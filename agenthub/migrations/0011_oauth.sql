-- OAuth 2.1 (the MCP authorization spec): the hub is its own authorization server. Registered clients, pending
-- consent requests, authorization codes and refresh tokens live here; access tokens are rows of `tokens` (so
-- revocation, rate limits and session binding treat them like any token) bound to the resource they were issued
-- for and to the grant ("family") they came from. Every secret is kept as a SHA-256 hash.
ALTER TABLE tokens ADD COLUMN resource text, ADD COLUMN oauth_client_id text, ADD COLUMN oauth_family text;
CREATE INDEX tokens_oauth_family_idx ON tokens (oauth_family) WHERE oauth_family IS NOT NULL;

CREATE TABLE oauth_clients (
    client_id text PRIMARY KEY,
    metadata jsonb NOT NULL,  -- the registration as the client sent it (RFC 7591), without any secret
    created_at timestamptz NOT NULL DEFAULT now()
);

-- An authorization request waiting for an operator's consent on the dashboard.
CREATE TABLE oauth_requests (
    id text PRIMARY KEY,
    client_id text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    params jsonb NOT NULL,  -- redirect_uri, state, code_challenge, scopes, resource
    expires_at timestamptz NOT NULL
);

CREATE TABLE oauth_codes (
    code_hash bytea PRIMARY KEY,
    client_id text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    family text NOT NULL,
    params jsonb NOT NULL,
    role text NOT NULL CHECK (role IN ('operator', 'agent', 'viewer')),
    agent_id text,
    expires_at timestamptz NOT NULL,
    used_at timestamptz,
    CHECK ((role = 'agent') = (agent_id IS NOT NULL))
);

CREATE TABLE oauth_refresh_tokens (
    token_hash bytea PRIMARY KEY,
    client_id text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    family text NOT NULL,
    role text NOT NULL CHECK (role IN ('operator', 'agent', 'viewer')),
    agent_id text,
    resource text NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz,  -- rotated: presenting it again revokes the whole family
    revoked_at timestamptz,
    CHECK ((role = 'agent') = (agent_id IS NOT NULL))
);
CREATE INDEX oauth_refresh_tokens_family_idx ON oauth_refresh_tokens (family);
