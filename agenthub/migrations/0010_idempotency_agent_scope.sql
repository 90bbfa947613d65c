-- Idempotency keys belong to the acting principal, not to its token: an agent's keys move from the scope of the
-- token that made them (its id) to `agent:{agent_id}`, so a retry made with the same key after this upgrade (or
-- after the agent's restart with a new token) finds the first answer instead of acting again. Where one agent used
-- the same key with several tokens (the bug this fixes), the newest row moves and the others stay, unreachable,
-- until pruned. Operators' keys stay under their token's id, which is still their scope.
WITH moved AS (
    SELECT DISTINCT ON (t.agent_id, k.key) k.scope, k.key, 'agent:' || t.agent_id AS agent_scope
    FROM idempotency_keys k JOIN tokens t ON t.id = k.scope AND t.role = 'agent'
    WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys a WHERE a.scope = 'agent:' || t.agent_id AND a.key = k.key)
    ORDER BY t.agent_id, k.key, k.created_at DESC
)
UPDATE idempotency_keys k SET scope = m.agent_scope FROM moved m WHERE k.scope = m.scope AND k.key = m.key;
