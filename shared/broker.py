"""FastStream on the service's own NATS connection: the handlers a service declares on a
`NatsRouter` run on a `ServiceBroker`, and `kgslb asyncapi` reads the same declarations.

One connection per process: `ServiceBroker` does not connect by itself, it takes the nats-py
client `shared.runtime` connected (with its reconnect, fail-fast and drain handling) and
leaves it open when it stops. Messages keep the kgslb envelope (`shared.wire`): the decoder
turns a message into its `<Kind>Message` model, and parks what does not decode as a dead
letter (as the nats-py handlers do) instead of letting FastStream log and drop it.

Which paths stay on nats-py, and why: docs/architecture.md, section "FastStream".
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from faststream.exceptions import SkipMessage
from faststream.message import StreamMessage
from faststream.nats import NatsBroker
from nats.aio.client import Client
from pydantic import BaseModel, Field

from shared import bus, wire
from shared.models import DnsQueryLog, MemberHealth, ResyncRequest

SERVER = "nats://nats.kgslb-system.svc:4222"
VERSION_DESCRIPTION = "envelope version; a consumer refuses others"
KIND_DESCRIPTION = "names the model of `data`"


class ServiceBroker(NatsBroker):
    """A NatsBroker that runs on an existing nats-py client instead of a connection of its
    own: `start()` attaches, `stop()` ends the subscriptions and leaves the client open."""

    def __init__(self, nc: Client) -> None:
        super().__init__(SERVER, logger=None)
        self._shared = nc

    async def _connect(self) -> Client:
        self.config.connect(self._shared)
        return self._shared

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        self._connection = None  # NatsBroker.stop drains its connection: not ours to drain
        await super().stop(exc_type, exc_val, exc_tb)


# The envelopes of the models that travel through FastStream handlers: real classes, so
# that handlers can be annotated with them (kgslb.asyncapi uses the same ones).


class ResyncRequestMessage(BaseModel):
    """A ResyncRequest in the kgslb envelope."""

    schema_version: Literal[1] = Field(description=VERSION_DESCRIPTION)
    kind: Literal["ResyncRequest"] = Field(description=KIND_DESCRIPTION)
    data: ResyncRequest


class MemberHealthMessage(BaseModel):
    """A MemberHealth in the kgslb envelope (the live verdicts stay on nats-py; this is what
    bench/faststream_overhead.py measures them with)."""

    schema_version: Literal[1] = Field(description=VERSION_DESCRIPTION)
    kind: Literal["MemberHealth"] = Field(description=KIND_DESCRIPTION)
    data: MemberHealth


class DnsQueryLogMessage(BaseModel):
    """A DnsQueryLog in the kgslb envelope."""

    schema_version: Literal[1] = Field(description=VERSION_DESCRIPTION)
    kind: Literal["DnsQueryLog"] = Field(description=KIND_DESCRIPTION)
    data: DnsQueryLog


ENVELOPES: dict[type[wire.WireModel], type[BaseModel]] = {
    ResyncRequest: ResyncRequestMessage,
    MemberHealth: MemberHealthMessage,
    DnsQueryLog: DnsQueryLogMessage,
}


def envelope_decoder(
    model: type[wire.WireModel], service: str
) -> Callable[[StreamMessage[Any]], Any]:
    """A FastStream decoder: the message's `<Kind>Message`, checked by `shared.wire` (version,
    kind, fields); a message that fails is parked as a dead letter and skipped."""
    message_type = ENVELOPES[model]

    async def decode(message: StreamMessage[Any]) -> Any:
        try:
            data = wire.decode(message.body, model)
        except wire.WireError as exc:
            raw = message.raw_message
            await bus.dead_letter(raw._client, service, raw.subject, message.body, str(exc))
            raise SkipMessage from exc
        return message_type.model_construct(
            schema_version=wire.SCHEMA_VERSION, kind=model.KIND, data=data
        )

    return decode


# What travels on the channels declared with FastStream (the other channels are described
# in kgslb.asyncapi, next to the nats-py code that serves them).

RESYNC_DESCRIPTION = (
    "Core NATS, not stored: JetStream lost its state (streams and buckets created anew, "
    "empty) and the reconciler asks every watcher to publish everything it holds again "
    "(objects, sync markers, the home watcher's policies), forgetting what it remembers "
    "having published. Watchers that notice the loss themselves do the same unasked. "
    "Declared with FastStream (services/watcher/channels.py, services/reconciler/channels.py)."
)
DNSLOG_DESCRIPTION = (
    "Throttled DNS query logs for analysis (`kgslb logs`): stream KGSLB_DNSLOG, kept for a "
    "day. Declared with FastStream (services/dns/channels.py)."
)
