"""The reconciler's messages declared with FastStream (the events consumer, the KV writes and
the status stream stay on nats-py: see docs/architecture.md, section "FastStream")."""

from __future__ import annotations

from faststream.nats import NatsRouter
from faststream.nats.publisher.usecase import LogicPublisher
from nats.aio.client import Client

from shared import subjects, wire
from shared.broker import RESYNC_DESCRIPTION, ResyncRequestMessage, ServiceBroker
from shared.models import ResyncRequest, utcnow


def router() -> tuple[NatsRouter, LogicPublisher]:
    """The router and its publisher of resync requests."""
    routes = NatsRouter()
    resync = routes.publisher(
        subjects.RESYNC_SUBJECT,
        title="reconciler:send:resync",
        description=RESYNC_DESCRIPTION,
        schema=ResyncRequestMessage,
    )
    return routes, resync


class Channels:
    """The reconciler's FastStream broker, on the service's connection; publishers only, so
    nothing to subscribe or stop."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.broker = ServiceBroker(nc)
        routes, self._resync = router()
        self.broker.include_router(routes)

    async def request_resync(self, replica: str, reason: str) -> ResyncRequest:
        """Ask every watcher to publish everything again, and wait until NATS has it."""
        request = ResyncRequest(requested_by=replica, reason=reason, at=utcnow())
        await self.broker.connect()
        await self._resync.publish(wire.encode(request))
        await self._nc.flush(timeout=5)
        return request
