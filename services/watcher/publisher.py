"""Publish to JetStream in order, pipelined, and without losing a message.

Messages go out back to back (`publish_async`) and their acks are awaited afterwards, which is
many times faster than one round trip per message. Per subject the order is what counts
(the stream keeps the last message per subject): if an ack fails, everything from the first
unacknowledged message on is sent again, in order, so a retry can never put an older
message after a newer one. Duplicates are harmless to the reconciler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import Counter

from services.watcher.backoff import Backoff
from shared import wire

log = logging.getLogger(__name__)

WINDOW = 1000
"""Messages in flight at once; also the most a failed ack makes us resend."""
ACK_TIMEOUT_SECONDS = 5.0
COMPRESS_OVER_BYTES = 64 * 1024
"""Larger messages (sync markers of big clusters) travel gzip-compressed."""

PUBLISH_RETRIES = Counter(
    "kgslb_watcher_publish_retries_total",
    "Times a window of messages was resent after a failed or missing JetStream ack",
    ["cluster"],
)
OVERSIZED = Counter(
    "kgslb_watcher_oversized_messages_total",
    "Messages larger than the NATS max payload even compressed, left out",
    ["cluster", "kind"],
)


class OrderedPublisher:
    def __init__(
        self,
        js: JetStreamContext,
        cluster: str,
        max_payload: Callable[[], int],
        backoff: Backoff,
        on_published: Callable[[wire.WireModel, int], None],
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.js = js
        self.cluster = cluster
        self.max_payload = max_payload
        self.backoff = backoff
        self.on_published = on_published
        self.on_failure = on_failure
        """Told when a window is not acked (the stream may be missing: check at once)."""
        self.healthy = True
        """False while acks fail (NATS away or the stream missing)."""

    def encode(self, message: wire.WireModel) -> bytes | None:
        payload = wire.encode(message, compress_over_bytes=COMPRESS_OVER_BYTES)
        if len(payload) <= self.max_payload():
            return payload
        OVERSIZED.labels(self.cluster, message.KIND).inc()
        log.error(
            "%s of %d bytes exceeds the NATS max payload of %d bytes even compressed; "
            "raise max_payload in the nats-server config",
            message.KIND, len(payload), self.max_payload(),
            extra={"cluster": self.cluster, "kind": message.KIND},
        )  # fmt: skip
        return None

    async def publish(self, messages: Sequence[tuple[str, wire.WireModel]]) -> None:
        """Return once every message is stored in the stream, retrying for as long as it takes."""
        encoded = [
            (subject, message, payload)
            for subject, message in messages
            if (payload := self.encode(message)) is not None
        ]
        for start in range(0, len(encoded), WINDOW):
            await self._publish_window(encoded[start : start + WINDOW])

    async def _publish_window(self, window: list[tuple[str, wire.WireModel, bytes]]) -> None:
        pending = window
        while pending:
            acked = await self._send(pending)
            for _, message, payload in pending[:acked]:
                self.on_published(message, len(payload))
            pending = pending[acked:]
            if pending:
                self.healthy = False
                PUBLISH_RETRIES.labels(self.cluster).inc()
                if self.on_failure is not None:
                    self.on_failure()
                await asyncio.sleep(self.backoff.next_delay())
        if not self.healthy:
            log.info("publishing to JetStream again", extra={"cluster": self.cluster})
        self.healthy = True
        self.backoff.reset()

    async def _send(self, pending: list[tuple[str, wire.WireModel, bytes]]) -> int:
        """Send all, then count the acks in order up to the first failure."""
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for subject, _, payload in pending:
                futures.append(await self.js.publish_async(subject, payload))
        except Exception as exc:
            log.warning(
                "publish to %s failed: %s", pending[len(futures)][0], exc,
                extra={"cluster": self.cluster},
            )  # fmt: skip
        acked = 0
        try:
            # One deadline, moved on while acks come (in order): at most ACK_TIMEOUT_SECONDS
            # waiting for any one ack, as before, without a wait_for (a task and a timer) for
            # each of a cold start's 100,000 publishes.
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(ACK_TIMEOUT_SECONDS) as deadline:
                for future in futures:
                    if not future.done():
                        deadline.reschedule(loop.time() + ACK_TIMEOUT_SECONDS)
                    await future
                    acked += 1
        except Exception as exc:
            log.warning(
                "no JetStream ack for %s: %s; resending from there",
                pending[acked][0], exc or type(exc).__name__,
                extra={"cluster": self.cluster},
            )  # fmt: skip
        for future in futures[acked:]:
            # Frees the client's slot for in-flight async publishes.
            future.cancel()
        return acked
