"""The health service's messages declared with FastStream (the KV writes and followers stay on
nats-py: see docs/architecture.md, section "FastStream")."""

from __future__ import annotations

from faststream.nats import NatsRouter
from faststream.nats.publisher.usecase import LogicPublisher

from shared import subjects
from shared.broker import HEALTH_LIVE_DESCRIPTION, MemberHealthMessage


def router() -> tuple[NatsRouter, LogicPublisher]:
    """The router and its publisher of live verdicts (`subject=` names the member)."""
    routes = NatsRouter()
    live = routes.publisher(
        f"{subjects.HEALTH_LIVE_PREFIX}.{{fqdn}}.{{ip}}.{{site}}",
        title="health:send:health-live",
        description=HEALTH_LIVE_DESCRIPTION,
        schema=MemberHealthMessage,
    )
    return routes, live
