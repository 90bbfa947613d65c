"""The NATS login of each agent process: issued with the process, revoked when it is replaced or stopped.

With a nats-server run by agenthub the pool registers a user per process (`agenthub.nats_auth.agent_user`: only
that agent's own subjects) and removes it when the process is replaced or stopped, which also closes whatever
connection still uses it. With an external NATS, where the hub cannot create users, every process gets the login
the settings give for agents (`AGENTHUB_NATS__AGENTS__...`), or none.
"""

import logging

from agenthub.nats_auth import NatsLogin, NatsUsers, agent_user

logger = logging.getLogger(__name__)


class AgentCredentials:
    def __init__(self, *, prefix: str, users: NatsUsers | None, shared: NatsLogin | None) -> None:
        self._prefix = prefix
        self._users = users
        self._shared = shared or NatsLogin()
        self._issued: dict[str, str] = {}  # agent id -> the user name of its current process

    async def issue(self, agent_id: str, instance: str) -> NatsLogin:
        """A login for the agent's process `instance`; the previous process's login stops working."""
        if self._users is None:
            return self._shared
        user = agent_user(self._prefix, agent_id, instance)
        previous = self._issued.get(agent_id)
        await self._users.update(add=(user,), remove=(previous,) if previous else ())
        self._issued[agent_id] = user.name
        logger.info("agent %s: NATS user %s issued", agent_id, user.name)
        return user.login()

    async def revoke(self, agent_id: str) -> None:
        """The agent's process is gone for good (stopped, failed): its login stops working."""
        name = self._issued.pop(agent_id, None)
        if name is not None and self._users is not None:
            await self._users.update(remove=(name,))
            logger.info("agent %s: NATS user %s revoked", agent_id, name)
