-- The hub's activity log: agent events, task events, bids and transfers as one gap-free sequence, read by the
-- hub-wide event stream (`/events/stream`). A row is written inside the transaction of the change it records;
-- its `seq` is assigned at commit by a deferred trigger that takes the next value of a one-row counter. The
-- counter is thus always the last lock a transaction takes (no deadlock with the locks taken before it), and
-- holding it until commit makes sequences commit in order: everything up to the counter's value is committed.
CREATE TABLE activity_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last bigint NOT NULL
);
INSERT INTO activity_counter (last) VALUES (0);

CREATE TABLE activity (
    id bigserial PRIMARY KEY,
    seq bigint UNIQUE,                 -- null until the writing transaction commits
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL CHECK (kind IN ('agent', 'task', 'bid', 'transfer')),
    data jsonb NOT NULL
);

CREATE FUNCTION activity_sequence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    next bigint;
BEGIN
    UPDATE activity_counter SET last = last + 1 RETURNING last INTO next;
    UPDATE activity SET seq = next WHERE id = NEW.id;
    RETURN NULL;
END $$;

-- The dashboard's discoveries-per-minute chart reads the last minutes.
CREATE INDEX discoveries_created_idx ON discoveries (created_at);

-- Named to sort after every other deferred trigger (they fire in name order): the counter is taken last.
CREATE CONSTRAINT TRIGGER zz_activity_sequence AFTER INSERT ON activity
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION activity_sequence();
