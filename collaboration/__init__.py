"""Discovery log, subscriptions and cursors, the live feed over NATS, and shared context."""

from collaboration.feed import DiscoveryFeed, FeedEvent
from collaboration.filters import DiscoveryFilter
from collaboration.service import Collaboration

__all__ = ["Collaboration", "DiscoveryFeed", "DiscoveryFilter", "FeedEvent"]
