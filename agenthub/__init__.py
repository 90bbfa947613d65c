"""The foundation every agenthub package uses: settings, errors, ids, database, NATS, embedded services, auth,
metrics.

The names below are imported on first use, not with the package: agent processes import a few of its
modules and must start fast."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Bus": "agenthub.bus",
    "HubError": "agenthub.errors",
    "HubMetrics": "agenthub.metrics",
    "LOCAL_OPERATOR": "agenthub.auth",
    "Principal": "agenthub.auth",
    "Role": "agenthub.auth",
    "Settings": "agenthub.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
