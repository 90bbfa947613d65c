-- Tokens with a lifecycle: an optional expiry (a token past it is refused like a revoked one), when each was last
-- used (written at most once a minute per token, never per request), and listing newest first.
ALTER TABLE tokens ADD COLUMN expires_at timestamptz, ADD COLUMN last_used_at timestamptz;
CREATE INDEX tokens_created_idx ON tokens (created_at DESC, id);
