"""The NATS login of each agent process: issued with the process, revoked when it is replaced or stopped.

With a nats-server run by agenthub the pool registers a user per process (`agenthub.nats_auth.agent_user`: only
that agent's own subjects) and removes it when the process is replaced or stopped, which also closes whatever
connection still uses it. With an external NATS, where the hub cannot create users, every process gets the login
the settings give for agents (`AGENTHUB_NATS__AGENTS__...`), or none.

A restart must not wait for the server to reload its users (a reload is 10 ms on a quiet machine and 30-90 ms on
a busy one). So each agent has a spare user loaded beside the current one: a user of its own subjects whose
password only the hub holds, until `issue` hands it to the next process at once. `settle` then, once that process
is up, removes the users of the processes it replaced (dead: their connections are gone) and loads the next
spare, in one reload. Every process still has a user of its own, and a replaced one's user goes with the first
reload after its replacement came up.
"""

import logging
import secrets
from dataclasses import dataclass, field

from agenthub.nats_auth import NatsLogin, NatsUser, NatsUsers, agent_user

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class _Users:
    """One agent's users on the server."""

    current: str | None = None  # the user of its current process
    spare: NatsUser | None = None  # loaded on the server, for its next process
    stale: list[str] = field(default_factory=list)  # users of processes it replaced, still loaded


class AgentCredentials:
    def __init__(self, *, prefix: str, users: NatsUsers | None, shared: NatsLogin | None) -> None:
        self._prefix = prefix
        self._users = users
        self._shared = shared or NatsLogin()
        self._agents: dict[str, _Users] = {}

    async def issue(self, agent_id: str, instance: str) -> NatsLogin:
        """A login for the agent's process `instance`: its spare, at once, when one is loaded (`settle` then
        retires the previous process's login), else a user loaded now with a spare beside it."""
        if self._users is None:
            return self._shared
        agent = self._agents.setdefault(agent_id, _Users())
        if agent.current is not None:
            agent.stale.append(agent.current)
        spare = agent.spare
        user = spare or self._new_user(agent_id)
        agent.current, agent.spare = user.name, None
        if spare is None:  # the first process, or a spare not loaded yet: nothing to hand out without a reload
            await self._settle(agent_id, agent, add=(user,))
        logger.info("agent %s: NATS user %s issued to process %s", agent_id, user.name, instance)
        return user.login()

    async def settle(self, agent_id: str) -> None:
        """Remove the users of the agent's replaced processes and load a spare for its next one (one reload); a
        no-op when there is nothing to do."""
        agent = self._agents.get(agent_id)
        if self._users is not None and agent is not None and (agent.stale or agent.spare is None):
            await self._settle(agent_id, agent)

    async def _settle(self, agent_id: str, agent: _Users, add: tuple[NatsUser, ...] = ()) -> None:
        assert self._users is not None
        spare, stale = self._new_user(agent_id), tuple(agent.stale)
        agent.stale.clear()
        try:
            await self._users.update(add=(*add, spare), remove=stale)
        except BaseException:
            agent.stale.extend(stale)  # still loaded: the next settle or the revocation removes them
            raise
        revoked = self._agents.get(agent_id) is not agent
        if not revoked and agent.spare is None:
            agent.spare = spare
            return
        # Revoked meanwhile (what was just added must not stay behind), or another settle loaded a spare first.
        await self._users.update(remove=(spare.name, *(user.name for user in add if revoked)))

    def _new_user(self, agent_id: str) -> NatsUser:
        return agent_user(self._prefix, agent_id, secrets.token_hex(6))

    async def revoke(self, agent_id: str) -> None:
        """The agent's process is gone for good (stopped, failed): its login, and its spare, stop working."""
        agent = self._agents.pop(agent_id, None)
        if agent is None or self._users is None:
            return
        names = [*agent.stale, *([agent.current] if agent.current else []),
                 *([agent.spare.name] if agent.spare else [])]
        await self._users.update(remove=tuple(names))
        logger.info("agent %s: NATS users %s revoked", agent_id, ", ".join(names))
