-- Each agent's resource limits from its spawn request (agent_pool.models.ResourceLimits); unset fields take the
-- hub's defaults when its process starts.
ALTER TABLE agents ADD COLUMN limits jsonb NOT NULL DEFAULT '{}';
