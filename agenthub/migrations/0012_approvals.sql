-- Human approvals (governance/approvals.py): a durable request for an operator's decision, resolved exactly once.
-- A pending row becomes approved, denied (an operator's decision) or expired (the sweep applies its default
-- decision) by one `UPDATE ... WHERE state = 'pending' RETURNING`: whoever's update returns the row decided it.
CREATE TABLE approvals (
    id text PRIMARY KEY,                             -- apr_ + 16 hex
    kind text NOT NULL CHECK (kind IN ('budget', 'task', 'agent')),
    subject text NOT NULL,                           -- the account it is about: agent:x, requester:y
    reason text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    requested_by text NOT NULL,                      -- an agent id, or 'hub'
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
    decision text CHECK (decision IN ('approve', 'deny')),
    default_decision text NOT NULL CHECK (default_decision IN ('approve', 'deny')),
    decided_by text,                                 -- an operator's token id, or 'expiry'
    note text,
    dedupe_key text,                                 -- at most one PENDING approval per key (below)
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    decided_at timestamptz,
    CHECK ((state = 'pending') = (decision IS NULL) AND (state = 'pending') = (decided_at IS NULL)),
    CHECK (state IN ('pending', 'expired') OR (state = 'approved') = (decision = 'approve'))
);

-- The expiry sweep: pending approvals by when they expire.
CREATE INDEX approvals_pending_expiry_idx ON approvals (expires_at) WHERE state = 'pending';
-- Listing (newest first), and what an agent may read: the approvals about it or that it requested.
CREATE INDEX approvals_created_idx ON approvals (created_at DESC, id DESC);
CREATE INDEX approvals_subject_idx ON approvals (subject, created_at DESC);
CREATE INDEX approvals_requested_by_idx ON approvals (requested_by, created_at DESC);
-- A soft budget limit crossed again and again raises one request while it is pending, not one per call.
CREATE UNIQUE INDEX approvals_pending_dedupe_idx ON approvals (dedupe_key)
    WHERE state = 'pending' AND dedupe_key IS NOT NULL;

-- The hub-wide stream carries approval events (requested, decided, expired), and budget events (0013).
ALTER TABLE activity DROP CONSTRAINT activity_kind_check;
ALTER TABLE activity ADD CONSTRAINT activity_kind_check
    CHECK (kind IN ('agent', 'task', 'bid', 'transfer', 'approval', 'budget'));
