"""The hub's Prometheus metrics, one registry per hub instance (two hubs can live in one process)."""

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _PoolCollector(Collector):
    """Reads the database pool's size and idle count at scrape time."""

    def __init__(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        size, idle, max_size = self._read()
        g = GaugeMetricFamily("agenthub_db_pool_connections", "Database pool connections by state", labels=["state"])
        g.add_metric(["in_use"], size - idle)
        g.add_metric(["idle"], idle)
        g.add_metric(["max"], max_size)
        yield g


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tool_calls = Counter("agenthub_tool_calls", "MCP tool calls", ["tool", "outcome"], registry=r)
        self.tool_latency = Histogram("agenthub_tool_call_seconds", "MCP tool call latency", ["tool"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.direct_calls = Counter("agenthub_mcp_direct_calls", "Stateless MCP tool calls answered by the hub "
                                    "itself rather than through the SDK's dispatch (mcp_server.direct)", registry=r)
        self.discoveries = Counter("agenthub_discoveries", "Discoveries shared through this hub", ["type"], registry=r)
        self.sse_clients = Gauge("agenthub_sse_clients", "Connected SSE clients (read from the feed at scrape time)",
                                 registry=r)
        self.feed_sequence = Gauge("agenthub_feed_sequence", "The newest discovery this replica's live feed has "
                                   "delivered (the log's newest minus this is how far behind it is)", registry=r)
        self.sse_dropped = Counter("agenthub_sse_dropped_clients", "SSE clients dropped for not reading", registry=r)
        self.nats_publish_failures = Counter("agenthub_nats_publish_failures", "NATS publishes that failed",
                                             registry=r)
        self.bus_rejected = Counter("agenthub_bus_rejected", "NATS messages dropped because the database does not "
                                    "back them (forged, out_of_range, replayed, malformed, overflow)", ["kind"],
                                    registry=r)

        self.limits_refused = Counter("agenthub_limits_refused", "Requests refused by a rate limit or quota (requests, "
                                      "discoveries, questions, streams, subscriptions)", ["limit"], registry=r)
        self.questions_routed = Counter("agenthub_questions_routed", "Questions the orchestrator sent to agents",
                                        registry=r)
        self.questions_unrouted = Counter("agenthub_questions_unrouted", "Questions (or deliveries) not routed",
                                          ["reason"], registry=r)
        self.agent_failures = Counter("agenthub_agent_failures", "Agent process failures", ["reason"], registry=r)
        self.agent_errors = Counter("agenthub_agent_errors", "Errors agents reported", ["category"], registry=r)
        self.agent_alerts = Counter("agenthub_agent_alerts", "Agents stopped as failed, needing an operator",
                                    ["reason"], registry=r)
        self.service_restarts = Counter("agenthub_service_restarts", "Embedded NATS or PostgreSQL servers the hub "
                                        "restarted after they died", ["service"], registry=r)
        self.agent_restarts = Counter("agenthub_agent_restarts", "Agent processes started again", registry=r)
        self.open_breakers = Gauge("agenthub_open_breakers",
                                   "Agent circuit breakers that are open (read at scrape time)", registry=r)

        self.auctions_cleared = Counter("agenthub_auctions_cleared", "Task auctions cleared by this replica",
                                        registry=r)

        self.wasm_uploads = Counter("agenthub_wasm_uploads", "WASM module uploads", ["result"], registry=r)
        self.wasm_runs = Counter("agenthub_wasm_runs", "Trial runs of WASM modules in the hub", ["outcome"],
                                 registry=r)

        self.budget_spend = Counter("agenthub_budget_spend", "Spend recorded against budgets, by subject and metric "
                                    "(llm_tokens, llm_cost_micro_usd, tool_calls, work_seconds, credits)",
                                    ["subject", "metric"], registry=r)
        self.budget_refused = Counter("agenthub_budget_refused", "Reservations refused at a hard limit (or after "
                                      "a denied soft limit)", ["subject", "metric"], registry=r)
        self.approvals_pending = Gauge("agenthub_approvals_pending", "Approvals waiting for an operator (refreshed by "
                                       "the expiry sweep)", registry=r)
        self.approvals_requested = Counter("agenthub_approvals_requested", "Approvals requested, by kind (budget, "
                                           "task, agent)", ["kind"], registry=r)
        self.approval_decisions = Counter("agenthub_approval_decisions", "Approvals decided, by outcome (approved, "
                                          "denied, expired)", ["outcome"], registry=r)

    def watch_pool(self, read: Callable[[], tuple[int, int, int]]) -> None:
        self.registry.register(_PoolCollector(read))
