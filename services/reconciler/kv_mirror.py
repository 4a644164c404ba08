"""What the reconciler leader writes to KV: a mirror of each bucket, so unchanged values are
never rewritten, and a bounded number of writes in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter

from services.reconciler.lease import Leadership
from shared.follow import read_values

WRITES_IN_FLIGHT = 64
KV_WRITES = Counter("kgslb_reconciler_kv_writes_total", "KV writes", ["bucket", "op"])


class LostLeadership(Exception):
    """The lease ran out while writing: stop, another replica may lead now."""


class KvMirror:
    """A KV bucket and what we know it holds, so unchanged values are never rewritten."""

    def __init__(
        self, js: JetStreamContext, kv: KeyValue, bucket: str, leading: Leadership
    ) -> None:
        self.js = js
        self.kv = kv
        self.bucket = bucket
        self.leading = leading
        self.values: dict[str, bytes] = {}

    async def load(self) -> None:
        """Read what the bucket holds now (edits and deletes by hand included)."""
        self.values = await read_values(self.js, self.bucket)

    def _check_leader(self) -> None:
        if not self.leading.is_leader(time.monotonic()):
            raise LostLeadership(self.bucket)

    async def put(self, key: str, value: bytes) -> bool:
        if self.values.get(key) == value:
            return False
        self._check_leader()
        await self.kv.put(key, value)
        self.values[key] = value
        KV_WRITES.labels(self.bucket, "put").inc()
        return True

    async def delete(self, key: str) -> bool:
        if key not in self.values:
            return False
        self._check_leader()
        await self.kv.delete(key)
        del self.values[key]
        KV_WRITES.labels(self.bucket, "delete").inc()
        return True

    async def converge(self, desired: dict[str, bytes]) -> int:
        """Make the bucket hold exactly `desired`; return the number of writes."""
        writes = await in_flight(self.put(key, value) for key, value in desired.items())
        stale = [k for k in self.values if k not in desired]
        return writes + await in_flight(self.delete(key) for key in stale)


async def in_flight(writes: Iterable[Coroutine[Any, Any, bool]]) -> int:
    """Run independent KV writes with up to WRITES_IN_FLIGHT awaiting their acks at once: one
    round trip per key made a 10,000-key change wait for 10,000 round trips in a row."""
    # A fixed pool of writers pulling from one iterator: 100,000 changed keys are 64 tasks,
    # not 100,000 queued in the event loop ahead of the lease renewal, and the coroutines of
    # writes never started are never created.
    pending = iter(writes)
    written = 0

    async def writer() -> None:
        nonlocal written
        for write in pending:
            changed = await write  # not `written += await ...`: that reads `written` first
            written += changed

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(WRITES_IN_FLIGHT):
                group.create_task(writer())
    except* LostLeadership as lost:
        raise lost.exceptions[0] from None
    finally:
        for write in pending:
            write.close()  # after a failure: created by the iterator, never to run
    return written
