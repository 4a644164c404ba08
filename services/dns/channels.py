"""The DNS service's handlers declared with FastStream (the KV followers stay on nats-py: see
docs/architecture.md, section "FastStream")."""

from __future__ import annotations

from collections.abc import Callable

from faststream import Context
from faststream.nats import NatsRouter
from faststream.nats.publisher.usecase import LogicPublisher

from shared import subjects
from shared.broker import (
    DNSLOG_DESCRIPTION,
    HEALTH_LIVE_DESCRIPTION,
    DnsQueryLogMessage,
    MemberHealthMessage,
    envelope_decoder,
)
from shared.models import MemberHealth

SERVICE = "dns"


def router(on_live: Callable[[str, MemberHealth], None]) -> tuple[NatsRouter, LogicPublisher]:
    """The router, with `on_live(subject, verdict)` for every live health verdict, and the
    publisher of query logs (`subject=` names the zone)."""
    routes = NatsRouter()

    @routes.subscriber(
        f"{subjects.HEALTH_LIVE_PREFIX}.>",
        title="dns:receive:health-live",
        description=HEALTH_LIVE_DESCRIPTION,
        decoder=envelope_decoder(MemberHealth, SERVICE),
    )
    async def dns_receives_health_live(
        message: MemberHealthMessage, subject: str = Context("message.raw_message.subject")
    ) -> None:
        on_live(subject, message.data)

    logs = routes.publisher(
        f"{subjects.DNSLOG_PREFIX}.{{zone}}",
        title="dns:send:dnslog",
        description=DNSLOG_DESCRIPTION,
        schema=DnsQueryLogMessage,
    )
    return routes, logs
