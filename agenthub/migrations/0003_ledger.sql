-- The credit ledger (market/ledger.py), escrows (market/escrow.py) and idempotency keys (market/idempotency.py).
--
-- Double entry: a transfer is two or more postings that sum to zero. `accounts.balance` is the running sum of the
-- account's postings, written in the same transaction as the postings; `postings.balance_after` records it after
-- each posting. Only the mint goes negative. The journal (transfers, postings) is append-only: corrections are
-- new transfers. The database enforces what it can on its own, beside the application's checks: non-negative
-- balances, balanced transfers (a deferred constraint trigger, checked at commit), append-only journal rows, and
-- at most one hold, award and settlement per escrow (partial unique indexes).

CREATE TABLE accounts (
    id text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('mint', 'platform', 'agent', 'requester', 'escrow')),
    balance bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'mint' OR balance >= 0),
    CHECK (CASE WHEN kind IN ('mint', 'platform') THEN id = kind ELSE starts_with(id, kind || ':') END)
);
INSERT INTO accounts (id, kind) VALUES ('mint', 'mint'), ('platform', 'platform');

CREATE TABLE idempotency_keys (
    scope text NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,
    response jsonb,                -- null only inside the transaction that claimed the key
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Escrows do not reference `accounts` by foreign key: the key check would share-lock the payee's account row
-- outside the sorted order in which money-moving transactions lock accounts. Their accounts exist by
-- construction (every posting references its account).
CREATE TABLE escrows (
    id text PRIMARY KEY,
    task_id text NOT NULL UNIQUE,
    payer text NOT NULL,
    payee text,
    budget bigint NOT NULL CHECK (budget > 0),
    amount bigint NOT NULL CHECK (amount > 0 AND amount <= budget),
    state text NOT NULL CHECK (state IN ('held', 'disputed', 'released', 'refunded', 'split')),
    disputed_by text,
    dispute_evidence text,
    resolution text CHECK (resolution IN ('release', 'refund', 'split')),
    resolved_by text,
    payee_share_percent integer CHECK (payee_share_percent BETWEEN 0 AND 100),
    fee_percent integer CHECK (fee_percent BETWEEN 0 AND 100),
    paid_to_payee bigint NOT NULL DEFAULT 0 CHECK (paid_to_payee >= 0),
    fee bigint NOT NULL DEFAULT 0 CHECK (fee >= 0),
    refunded bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    awarded_at timestamptz,
    disputed_at timestamptz,
    settled_at timestamptz,
    CHECK ((payee IS NULL) = (awarded_at IS NULL)),
    CHECK ((disputed_by IS NULL) = (disputed_at IS NULL)),
    CHECK ((state IN ('released', 'refunded', 'split')) = (settled_at IS NOT NULL)),
    CHECK (state <> 'released' OR payee IS NOT NULL),
    -- Once settled, everything budgeted went somewhere: payee, platform, or back to the payer.
    CHECK (settled_at IS NULL OR paid_to_payee + fee + refunded = budget)
);
CREATE INDEX escrows_payer_idx ON escrows (payer, created_at);
CREATE INDEX escrows_payee_idx ON escrows (payee, created_at);

CREATE TABLE transfers (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('deposit', 'hold', 'award', 'release', 'refund', 'split')),
    memo text NOT NULL DEFAULT '',
    escrow_id text REFERENCES escrows (id),
    idempotency_scope text,        -- the request that made it; not a foreign key, so old keys can be pruned
    idempotency_key text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'deposit') = (escrow_id IS NULL))
);
CREATE UNIQUE INDEX transfers_one_hold_per_escrow ON transfers (escrow_id) WHERE kind = 'hold';
CREATE UNIQUE INDEX transfers_one_award_per_escrow ON transfers (escrow_id) WHERE kind = 'award';
CREATE UNIQUE INDEX transfers_one_settlement_per_escrow ON transfers (escrow_id)
    WHERE kind IN ('release', 'refund', 'split');

CREATE TABLE postings (
    id bigserial PRIMARY KEY,
    transfer_id bigint NOT NULL REFERENCES transfers (id),
    account_id text NOT NULL REFERENCES accounts (id),
    amount bigint NOT NULL CHECK (amount <> 0),
    balance_after bigint NOT NULL,
    UNIQUE (transfer_id, account_id)
);
CREATE INDEX postings_account_idx ON postings (account_id, id);

-- Balanced transfers: checked at commit, once every posting of the transaction is written.
CREATE FUNCTION ledger_check_transfer_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    total numeric;
BEGIN
    SELECT count(*), coalesce(sum(amount), 0) INTO n, total FROM postings WHERE transfer_id = NEW.id;
    IF n < 2 OR total <> 0 THEN
        RAISE EXCEPTION 'transfer % has % postings summing to %; it needs two or more summing to 0', NEW.id, n, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION ledger_check_posting_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT coalesce(sum(amount), 0) INTO total FROM postings WHERE transfer_id = NEW.transfer_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'postings of transfer % sum to %, not 0', NEW.transfer_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER transfers_balanced AFTER INSERT ON transfers
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_transfer_balanced();
-- A posting added to an older transfer is caught too (the transfer's own trigger ran at that transfer's commit).
CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_posting_balanced();

-- Append-only journal.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
