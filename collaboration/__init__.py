"""Discovery log, subscriptions and cursors, the live feed over NATS, shared context, and the live orchestrator.

The names below are imported on first use, not with the package: agent processes import a few of its
modules and must start fast."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Collaboration": "collaboration.service",
    "DiscoveryFeed": "collaboration.feed",
    "DiscoveryFilter": "collaboration.filters",
    "FeedEvent": "collaboration.feed",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
