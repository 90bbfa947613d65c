-- WASM binaries: every uploaded version of an agent's module (the bytes live in the binary store, by SHA-256),
-- and which version the agent runs now.
CREATE TABLE agent_binaries (
    agent_id text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version integer NOT NULL CHECK (version >= 1),
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint NOT NULL CHECK (size_bytes > 0),
    imports text[] NOT NULL,
    memory_min_bytes bigint NOT NULL,
    uploaded_by text NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, version)
);

ALTER TABLE agents ADD COLUMN binary_version integer;
ALTER TABLE agents ADD CONSTRAINT agents_binary_fk FOREIGN KEY (id, binary_version)
    REFERENCES agent_binaries (agent_id, version);
