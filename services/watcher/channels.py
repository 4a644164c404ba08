"""The watcher's handlers declared with FastStream (the others stay on nats-py: see
docs/architecture.md, section "FastStream")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from faststream.nats import NatsRouter

from shared import subjects
from shared.broker import RESYNC_DESCRIPTION, ResyncRequestMessage, envelope_decoder
from shared.models import ResyncRequest

SERVICE = "watcher"


def router(on_resync: Callable[[ResyncRequest], Awaitable[None]]) -> NatsRouter:
    """`on_resync` gets every resync request the reconciler sends."""
    routes = NatsRouter()

    @routes.subscriber(
        subjects.RESYNC_SUBJECT,
        title="watcher:receive:resync",
        description=RESYNC_DESCRIPTION,
        decoder=envelope_decoder(ResyncRequest, SERVICE),
    )
    async def watcher_receives_resync(message: ResyncRequestMessage) -> None:
        await on_resync(message.data)

    return routes
