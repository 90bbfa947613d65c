"""The hub's NATS connections: JSON publish with failure accounting, subject naming, and the shape of a component
that listens to the other replicas.

Discoveries travel on a second connection of their own, opened with `no_echo`: NATS does not send a replica its
own discoveries back (its feed has them in-process already), so each costs one message out and none in.

Subjects are `{prefix}{name}`; the prefix is empty by default and lets several hubs (or test runs) share one
NATS server without seeing each other's traffic.
"""

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
import nats
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from agenthub.errors import ServiceUnavailable
from agenthub.nats_auth import NatsLogin

logger = logging.getLogger(__name__)

_LAST_TICK_SECONDS = 5.0
M = TypeVar("M", bound=BaseModel)


class Bus:
    """A hub process's NATS connections: `nc` for everything but discoveries, which have `discoveries` (no echo)."""

    def __init__(self, nc: NatsClient, discoveries: NatsClient, prefix: str, on_publish_failure: Callable[[], None],
                 *, login: NatsLogin | None = None) -> None:
        self.nc = nc
        self.discoveries = discoveries
        self.prefix = prefix
        self.login = login or NatsLogin()  # what this connection signed in with
        self._on_publish_failure = on_publish_failure

    def subject(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def publish(self, subject: str, payload: BaseModel) -> bool:
        """Publish a model as JSON on a full subject (already prefixed); False (and counted) if NATS refused it."""
        return await self._publish(self.nc, subject, payload.model_dump_json().encode())

    async def publish_discovery(self, subject: str, data: bytes) -> bool:
        """Publish a discovery's JSON on its full subject, on the discovery connection."""
        return await self._publish(self.discoveries, subject, data)

    async def _publish(self, nc: NatsClient, subject: str, data: bytes) -> bool:
        try:
            await nc.publish(subject, data)
        except Exception:  # one failed publish must not fail the request whose data is already stored
            logger.exception("NATS publish on %s failed", subject)
            self._on_publish_failure()
            return False
        return True

    async def subscribe_discoveries(self, handler: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """Hear the discoveries other replicas publish (this one's own do not come back)."""
        return await self.discoveries.subscribe(self.subject("discoveries.>"), cb=handler, pending_msgs_limit=65536)

    async def subscribe(self, name: str, handler: Callable[[Msg], Awaitable[None]]) -> Subscription:
        return await self.nc.subscribe(self.subject(name), cb=handler, pending_msgs_limit=65536)

    @property
    def connections(self) -> tuple[NatsClient, NatsClient]:
        return self.nc, self.discoveries

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)


class BusListener(ABC, Generic[M]):
    """A component of one replica that hears one hub-to-hub subject (messages of model `M`; malformed ones are
    logged and dropped) and does `tick` every `interval` seconds. An async context manager, entered once, owning
    its task group; on exit it stops listening and ticks once more (shielded and bounded), so what it owed others
    is sent."""

    def __init__(self, bus: Bus, name: str, payload: type[M], interval: float) -> None:
        self._bus = bus
        self._name = name
        self._payload = payload
        self._interval = interval
        self._sub: Subscription | None = None
        self._tg: TaskGroup | None = None

    @abstractmethod
    async def on_payload(self, payload: M) -> None:
        """One well-formed message from another replica."""

    @abstractmethod
    async def tick(self) -> None:
        """The periodic work (and the last, on exit)."""

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            raise RuntimeError(f"{type(self).__name__} can be entered only once")
        self._tg = anyio.create_task_group()
        self._sub = await self._bus.subscribe(self._name, self._on_message)
        await self._tg.__aenter__()
        await self._tg.start(self._ticking)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
                        ) -> None:
        assert self._tg is not None and self._sub is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(et, e, tb)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_LAST_TICK_SECONDS):
            await self._sub.unsubscribe()
            await self.tick()

    async def _on_message(self, msg: Msg) -> None:
        try:
            payload = self._payload.model_validate_json(msg.data)
        except ValidationError:
            logger.warning("ignored a malformed message on %s", msg.subject)
            return
        await self.on_payload(payload)

    async def _ticking(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            await self.tick()


@asynccontextmanager
async def connect_bus(url: str, prefix: str, on_publish_failure: Callable[[], None], *,
                      login: NatsLogin | None = None) -> AsyncIterator[Bus]:
    """Connect twice (the discovery connection without echo), signing in with `login`, failing fast if unreachable
    or refused at start, reconnecting forever afterwards, and drain both on exit."""
    login = login or NatsLogin()

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS: %s", exc)

    closing = False

    async def on_disconnected() -> None:
        if not closing:  # draining on exit disconnects too; that is no outage
            logger.warning("NATS disconnected; reconnecting")

    async def on_reconnected() -> None:
        logger.info("NATS reconnected")

    options = {"connect_timeout": 5, "max_reconnect_attempts": 1, "reconnect_time_wait": 0.5, "error_cb": on_error,
               "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected, **login.connect_options()}
    async with AsyncExitStack() as stack:
        nc = await _connect(stack, url, name="agenthub", **options)
        discoveries = await _connect(stack, url, name="agenthub-discoveries", no_echo=True, **options)
        try:
            yield Bus(nc, discoveries, prefix, on_publish_failure, login=login)
        finally:
            closing = True


async def _connect(stack: AsyncExitStack, url: str, **options: Any) -> NatsClient:
    """A connection that fails fast if unreachable or refused at start, reconnects forever afterwards, and drains
    when `stack` closes."""
    try:
        nc = await nats.connect(url, **options)
    except Exception as exc:  # nats-py raises a zoo of types (NoServersError, OSError, TimeoutError ...)
        raise ServiceUnavailable(f"cannot connect to NATS at {url}: {exc}") from exc
    nc.options["max_reconnect_attempts"] = -1
    stack.push_async_callback(_drain, nc)
    return nc


async def _drain(nc: NatsClient) -> None:
    try:
        await nc.drain()
    except Exception:  # a connection that already dropped cannot drain; closing is all that is left
        logger.debug("NATS drain failed", exc_info=True)
        await nc.close()
