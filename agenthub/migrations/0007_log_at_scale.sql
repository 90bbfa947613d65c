-- The discovery log at scale: reads stay index-driven whatever the filter, the figures status and resource lists
-- show are kept as discoveries are written (in the same statement, by triggers), and a prefix of the log can be
-- pruned by the retention policy.

-- `related_to` becomes a plain link: it may name a discovery that retention pruned or an import did not bring.
-- Shares still refuse an id that is not stored (checked when they are written).
ALTER TABLE discoveries DROP CONSTRAINT discoveries_related_to_fkey;

-- Role filters compare lowercase; agent and type filters already have (column, sequence) indexes.
CREATE INDEX discoveries_role_idx ON discoveries (lower(agent_role), sequence);

-- Every sequence up to `pruned` is gone: a cursor below it can no longer be served.
ALTER TABLE discovery_counter ADD COLUMN pruned bigint NOT NULL DEFAULT 0;

CREATE TABLE discovery_type_counts (
    discovery_type text PRIMARY KEY,
    n bigint NOT NULL CHECK (n >= 0)
);

CREATE TABLE discovery_agents (
    agent_id text PRIMARY KEY,
    n bigint NOT NULL CHECK (n >= 0),
    last_at timestamptz NOT NULL
);
CREATE INDEX discovery_agents_last_idx ON discovery_agents (last_at DESC);

-- Discoveries per minute and type for the dashboard's chart; only the last hour is counted and kept.
CREATE TABLE discovery_minutes (
    minute timestamptz NOT NULL,
    discovery_type text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (minute, discovery_type)
);

INSERT INTO discovery_type_counts SELECT discovery_type, count(*) FROM discoveries GROUP BY 1;
INSERT INTO discovery_agents SELECT agent_id, count(*), max(created_at) FROM discoveries GROUP BY 1;
INSERT INTO discovery_minutes
SELECT date_trunc('minute', created_at), discovery_type, count(*) FROM discoveries
WHERE created_at > now() - interval '1 hour' GROUP BY 1, 2;

-- Writers of the log (shares, imports, retention) all lock the counter row first, so these upserts never race.
CREATE FUNCTION discoveries_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO discovery_type_counts AS c
    SELECT discovery_type, count(*) FROM inserted GROUP BY 1
    ON CONFLICT (discovery_type) DO UPDATE SET n = c.n + EXCLUDED.n;
    INSERT INTO discovery_agents AS a
    SELECT agent_id, count(*), max(created_at) FROM inserted GROUP BY 1
    ON CONFLICT (agent_id) DO UPDATE SET n = a.n + EXCLUDED.n, last_at = greatest(a.last_at, EXCLUDED.last_at);
    INSERT INTO discovery_minutes AS m
    SELECT date_trunc('minute', created_at), discovery_type, count(*) FROM inserted
    WHERE created_at > now() - interval '1 hour' GROUP BY 1, 2
    ON CONFLICT (minute, discovery_type) DO UPDATE SET n = m.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION discoveries_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE discovery_type_counts c SET n = c.n - d.n
    FROM (SELECT discovery_type, count(*) AS n FROM deleted GROUP BY 1) d WHERE c.discovery_type = d.discovery_type;
    UPDATE discovery_agents a SET n = a.n - d.n
    FROM (SELECT agent_id, count(*) AS n FROM deleted GROUP BY 1) d WHERE a.agent_id = d.agent_id;
    DELETE FROM discovery_agents WHERE n = 0 AND agent_id IN (SELECT agent_id FROM deleted);
    RETURN NULL;
END
$$;

CREATE TRIGGER discoveries_count_inserted AFTER INSERT ON discoveries REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION discoveries_count_inserted();
CREATE TRIGGER discoveries_count_deleted AFTER DELETE ON discoveries REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION discoveries_count_deleted();
