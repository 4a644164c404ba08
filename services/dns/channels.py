"""The DNS service's messages declared with FastStream: the query logs. The KV followers and
the live health verdicts stay on nats-py: see docs/architecture.md, section "FastStream"."""

from __future__ import annotations

from faststream.nats import NatsRouter
from faststream.nats.publisher.usecase import LogicPublisher

from shared import subjects
from shared.broker import DNSLOG_DESCRIPTION, DnsQueryLogMessage


def router() -> tuple[NatsRouter, LogicPublisher]:
    """The router and its publisher of query logs (`subject=` names the zone)."""
    routes = NatsRouter()
    logs = routes.publisher(
        f"{subjects.DNSLOG_PREFIX}.{{zone}}",
        title="dns:send:dnslog",
        description=DNSLOG_DESCRIPTION,
        schema=DnsQueryLogMessage,
    )
    return routes, logs
