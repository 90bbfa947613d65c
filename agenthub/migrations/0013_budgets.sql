-- Budgets and spend (governance.budgets). One meter per subject and metric: its limits (soft, hard; NULL = none), what
-- was spent and what is reserved, and whether an operator denied going on past the soft limit. A subject without
-- a limit can still have a meter: spend is recorded for everyone, limits only where an operator set them.
CREATE TABLE budget_subjects (
    subject text PRIMARY KEY CHECK (subject ~ '^(agent|requester):[A-Za-z0-9_-]{1,64}$'),
    approval_threshold bigint CHECK (approval_threshold >= 0),  -- requesters: a task budget above it waits
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE budget_meters (
    subject text NOT NULL REFERENCES budget_subjects (subject) ON DELETE CASCADE,
    metric text NOT NULL CHECK (metric IN ('llm_tokens', 'llm_cost_micro_usd', 'tool_calls', 'work_seconds',
                                           'credits')),
    soft bigint CHECK (soft >= 0),
    hard bigint CHECK (hard >= 0),
    spent bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    denied boolean NOT NULL DEFAULT false,  -- the soft limit's approval was denied: exhausted until limits are set
    PRIMARY KEY (subject, metric),
    CHECK (soft IS NULL OR hard IS NULL OR soft <= hard)
);
-- The per-replica cache of subjects with limits reads this.
CREATE INDEX budget_meters_limited ON budget_meters (subject) WHERE soft IS NOT NULL OR hard IS NOT NULL OR denied;

CREATE TABLE budget_reservations (
    id text PRIMARY KEY CHECK (id ~ '^rsv_[0-9a-f]{16}$'),
    subject text NOT NULL,
    metric text NOT NULL,
    amount bigint NOT NULL CHECK (amount >= 0),
    actual bigint CHECK (actual >= 0),
    ref text NOT NULL CHECK (length(ref) <= 200),
    state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'settled', 'expired')),
    at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    FOREIGN KEY (subject, metric) REFERENCES budget_meters (subject, metric) ON DELETE CASCADE,
    CHECK ((state = 'open') = (actual IS NULL))
);
CREATE INDEX budget_reservations_open ON budget_reservations (at) WHERE state = 'open';
CREATE INDEX budget_reservations_settled ON budget_reservations (settled_at) WHERE state <> 'open';

-- Spend over time in one-minute buckets (upserted): a month of a busy agent's metric is at most 43,200 rows, and
-- buckets older than the configured retention are deleted.
CREATE TABLE budget_spend (
    subject text NOT NULL,
    metric text NOT NULL,
    minute timestamptz NOT NULL,
    amount bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (subject, metric, minute),
    FOREIGN KEY (subject, metric) REFERENCES budget_meters (subject, metric) ON DELETE CASCADE
);
CREATE INDEX budget_spend_minute ON budget_spend (minute);

-- Budget events (limits set, soft limit passed, exhausted, denied) on the hub-wide stream; the same set as
-- 0012_approvals.sql leaves, so either order of the two gives one constraint.
ALTER TABLE activity DROP CONSTRAINT activity_kind_check;
ALTER TABLE activity ADD CONSTRAINT activity_kind_check
    CHECK (kind IN ('agent', 'task', 'bid', 'transfer', 'approval', 'budget'));
