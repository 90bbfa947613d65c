"""REST `/api/v1/agents`: spawn, list, inspect, stop and restart agents (twins of the operator MCP tools)."""

from pydantic import ConfigDict
from starlette.requests import Request

from agent_pool.models import AgentInfo, AgentList, AgentRef, ListAgentsInput, SpawnAgentInput, StateName
from agenthub.text import Storable
from web_ui.endpoints import Endpoint
from web_ui.state import HubState, hub_of, principal_of


class AgentsQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    state: list[StateName] | None = None
    role: str | None = None
    capability: str | None = None


def _ref(request: Request) -> AgentRef:
    return AgentRef.model_validate({"agent_id": request.path_params["agent_id"]})


async def spawn(request: Request, body: SpawnAgentInput) -> AgentInfo:
    return await hub_of(request).agents.spawn(principal_of(request), body)


async def with_reputation(hub: HubState, agents: list[AgentInfo]) -> list[AgentInfo]:
    """The agents with the market's reputation filled in (the pool itself knows nothing of the market)."""
    scores = await hub.market.reputations([a.agent_id for a in agents]) if agents else {}
    for agent in agents:
        agent.reputation = scores[agent.agent_id]
    return agents


async def listed(hub: HubState, query: ListAgentsInput) -> AgentList:
    return AgentList(agents=await with_reputation(hub, (await hub.agents.list_agents(query)).agents))


async def list_agents(request: Request, query: AgentsQuery) -> AgentList:
    principal_of(request)
    return await listed(hub_of(request), ListAgentsInput.model_validate(query.model_dump()))


async def get_agent(request: Request, _: None) -> AgentInfo:
    principal_of(request)
    hub = hub_of(request)
    return (await with_reputation(hub, [await hub.agents.get(_ref(request).agent_id)]))[0]


async def stop(request: Request, _: None) -> AgentInfo:
    return await hub_of(request).agents.stop(principal_of(request), _ref(request))


async def restart(request: Request, _: None) -> AgentInfo:
    return await hub_of(request).agents.restart(principal_of(request), _ref(request))


ENDPOINTS = [
    Endpoint(method="POST", path="/api/v1/agents", summary="Spawn an agent process (twin of spawn_agent)",
             handler=spawn, body=SpawnAgentInput, response=AgentInfo, status=201, operation_id="spawn_agent",
             errors=(409,)),
    Endpoint(method="GET", path="/api/v1/agents", summary="Agents, filtered by state, role or capability (twin of "
             "list_agents)", handler=list_agents, query=AgentsQuery, response=AgentList),
    Endpoint(method="GET", path="/api/v1/agents/{agent_id}", summary="One agent with its recent events and metrics",
             handler=get_agent, response=AgentInfo),
    Endpoint(method="DELETE", path="/api/v1/agents/{agent_id}", summary="Stop an agent gracefully (twin of "
             "stop_agent)", handler=stop, response=AgentInfo, operation_id="stop_agent", errors=(409,)),
    Endpoint(method="POST", path="/api/v1/agents/{agent_id}/restart", summary="Restart an agent's process",
             handler=restart, response=AgentInfo, operation_id="restart_agent", errors=(409,)),
]
