"""The agent pool: agents' registry and state machine, their processes under the supervision tree, heartbeats
and breakers, and the agent worker with its executors.

    pool.AgentPool          spawn / stop / restart / list, supervision, NATS listener, heartbeat watcher
    registry.AgentRegistry  the agents and agent_events tables
    states.AgentState       the state machine
    worker, runtime         the agent process (`python -m agent_pool.worker`) and its link to the hub
    executors               scripted, claude, command

This module imports nothing: every agent process imports the package, and its start-up time is the restart
time of every agent.
"""
