"""The foundation every agenthub package uses: settings, errors, ids, database, NATS, embedded services, auth,
metrics."""

from agenthub.auth import LOCAL_OPERATOR, Principal, Role
from agenthub.bus import Bus
from agenthub.errors import HubError
from agenthub.metrics import HubMetrics
from agenthub.settings import Settings

__all__ = ["LOCAL_OPERATOR", "Bus", "HubError", "HubMetrics", "Principal", "Role", "Settings"]
