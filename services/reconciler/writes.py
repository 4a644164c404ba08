"""The reconciler leader's writes: a mirror of each KV bucket it writes, so unchanged values
are never rewritten, every write fenced by JetStream (fence.py), and a pool that keeps
WRITES_IN_FLIGHT of them awaiting their acks at once; and the same fence on the status
stream (`StreamFence`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from prometheus_client import Counter

from services.reconciler.fence import (
    Term,
    condition_in_flight,
    fence_headers,
    fence_subject,
    fenced_headers,
    kv_stream,
    refused_by_fence,
    retry_delays,
)
from services.reconciler.lease import Leadership
from shared import bus, wire
from shared.follow import read_values
from shared.models import Fence, utcnow

log = logging.getLogger(__name__)

WRITES_IN_FLIGHT = 64
"""Also the number of fence slots per bucket: each write in flight holds one."""
KEYS_PER_WRITER_TURN = 4
"""Keys each writer of `in_flight` goes through per turn of the event loop: at most
4 x WRITES_IN_FLIGHT = 256 keys between two turns, however many are unchanged."""
RETRY_DELAYS = retry_delays(attempts=12, first_seconds=0.002, most_seconds=0.5)
"""A write a replicated stream was too busy to check is sent again after these (about 2.5 s
in all): the other write on its slot is an older term's, refused within a commit."""

KV_WRITES = Counter("kgslb_reconciler_kv_writes_total", "KV writes", ["bucket", "op"])
FENCES = Counter(
    "kgslb_reconciler_fences_total",
    "Fences written on taking over (one per bucket or stream per term)",
    ["bucket"],
)
FENCED_WRITES = Counter(
    "kgslb_reconciler_fenced_writes_total",
    "Writes JetStream refused because a newer leader had fenced the bucket (this replica's "
    "term was over; it stood down)",
    ["bucket"],
)
BUSY_RETRIES = Counter(
    "kgslb_reconciler_kv_write_retries_total",
    "Writes sent again because a replicated stream refused them unchecked while another "
    "conditional write on their fence slot was in flight",
    ["bucket"],
)


class LostLeadership(Exception):
    """The lease ran out while writing: stop, another replica may lead now."""


class FencedOut(LostLeadership):
    """JetStream refused a write of ours: a newer leader fenced the bucket. Our lease is gone
    whatever our clock says."""


class KvMirror:
    """A KV bucket and what we know it holds, so unchanged values are never rewritten. Writes
    go out only within a term (`fence`), each conditional on a fence slot it holds alone."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        leading: Leadership,
        slots: int = WRITES_IN_FLIGHT,
    ) -> None:
        self.js = js
        self.bucket = bucket
        self.leading = leading
        self.slots = slots
        self.values: dict[str, bytes] = {}
        self.term: Term | None = None
        self._headers: tuple[tuple[dict[str, str], ...], tuple[dict[str, str], ...]] = ((), ())
        self._free: list[int] = []
        """Fence slots no write holds. Never empty while writes go through `in_flight` (at
        most `slots` at once); a write that finds it empty waits for `_freed`."""
        self._freed = asyncio.Event()
        self._puts = KV_WRITES.labels(bucket, "put")
        self._deletes = KV_WRITES.labels(bucket, "delete")

    async def load(self) -> None:
        """Read what the bucket holds now (edits and deletes by hand included)."""
        self.values = await read_values(self.js, self.bucket)

    async def fence(self) -> Term:
        """Start our term: from now on JetStream refuses the writes of every older term here.
        Call before `load`, so whatever an older term landed before the fence is read back."""
        revision = self._check_leader()
        self.term = None
        body = wire.encode(
            Fence(holder=self.leading.me, lease_revision=revision, fenced_at=utcnow())
        )
        results = await asyncio.gather(
            *(self._fence_slot(slot, body) for slot in range(self.slots)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise next((f for f in failures if isinstance(f, FencedOut)), failures[0])
        fences = [r for r in results if isinstance(r, int)]
        self.term = Term(self.bucket, self.leading.me, tuple(fences))
        self._headers = self.term.all_headers()
        self._free = list(range(self.slots))
        FENCES.labels(self.bucket).inc()
        last = max(fences)
        log.info(
            "fenced KV %s up to sequence %d", self.bucket, last,
            extra={"bucket": self.bucket, "fence_sequence": last, "lease_revision": revision},
        )  # fmt: skip
        return self.term

    async def _fence_slot(self, slot: int, body: bytes) -> int:
        subject = fence_subject(self.bucket, slot)
        for delay in [*RETRY_DELAYS, None]:
            try:
                last = (await self.js.get_last_msg(kv_stream(self.bucket), subject)).seq or 0
            except NotFoundError:
                last = 0
            try:
                ack = await self.js.publish(
                    subject, body, headers=fence_headers(self.leading.me, last)
                )
                return ack.seq
            except APIError as exc:
                if refused_by_fence(exc.err_code):
                    raise FencedOut(f"KV {self.bucket}: another replica fenced it first") from exc
                if delay is None or not condition_in_flight(exc.err_code):
                    raise
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _check_leader(self) -> int:
        return _believed_revision(self.leading, self.bucket)

    async def _write(self, key: str, value: bytes, *, delete: bool) -> None:
        while not self._free:
            self._freed.clear()
            await self._freed.wait()
        slot = self._free.pop()
        try:
            await self._write_in_slot(key, value, delete, slot)
        finally:
            self._free.append(slot)
            self._freed.set()

    async def _write_in_slot(self, key: str, value: bytes, delete: bool, slot: int) -> None:
        def attempt() -> tuple[str, dict[str, str]]:
            self._check_leader()
            if self.term is None:
                raise LostLeadership(f"KV {self.bucket}: no term (not fenced)")
            return self.term.subject(key), self._headers[1 if delete else 0][slot]

        def refused() -> FencedOut:
            fenced_at = self.term.fences[slot] if self.term is not None else 0
            self.term = None
            return FencedOut(
                f"KV {self.bucket}: JetStream refused our write of {key}: a newer leader "
                f"fenced the bucket after our fence (slot {slot} at sequence {fenced_at})"
            )

        await publish_fenced(self.js, value, self.bucket, attempt, refused)

    async def put(self, key: str, value: bytes) -> bool:
        if self.values.get(key) == value:
            return False
        await self._write(key, value, delete=False)
        self.values[key] = value
        self._puts.inc()
        return True

    async def delete(self, key: str) -> bool:
        if key not in self.values:
            return False
        await self._write(key, b"", delete=True)
        del self.values[key]
        self._deletes.inc()
        return True

    async def converge(self, desired: dict[str, bytes]) -> int:
        """Make the bucket hold exactly `desired`; return the number of writes."""
        writes = await in_flight(self.put(key, value) for key, value in desired.items())
        stale = [k for k in self.values if k not in desired]
        return writes + await in_flight(self.delete(key) for key in stale)


class StreamFence:
    """The fence on a plain stream the leader publishes to one message at a time
    (`KGSLB_STATUS`): one marker, `subject`; every publish of the term is conditional on it."""

    def __init__(
        self, js: JetStreamContext, stream: str, subject: str, leading: Leadership
    ) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.leading = leading
        self.sequence: int | None = None
        """Our marker's stream sequence; None: no term."""

    async def fence(self) -> int:
        """Start our term here (before reading what the stream holds)."""
        revision = _believed_revision(self.leading, self.stream)
        self.sequence = None
        body = wire.encode(
            Fence(holder=self.leading.me, lease_revision=revision, fenced_at=utcnow())
        )
        for delay in [*RETRY_DELAYS, None]:
            markers = await bus.read_last_per_subject(self.js, self.stream, self.subject)
            last = markers[-1].metadata.sequence.stream if markers else 0
            headers = fence_headers(self.leading.me, last, delete_marker=False)
            try:
                self.sequence = (await self.js.publish(self.subject, body, headers=headers)).seq
            except APIError as exc:
                if refused_by_fence(exc.err_code):
                    raise FencedOut(f"{self.stream}: another replica fenced it first") from exc
                if delay is None or not condition_in_flight(exc.err_code):
                    raise
                await asyncio.sleep(delay)
                continue
            FENCES.labels(self.stream).inc()
            return self.sequence
        raise AssertionError("unreachable")

    async def publish(self, subject: str, data: bytes) -> None:
        def attempt() -> tuple[str, dict[str, str]]:
            _believed_revision(self.leading, self.stream)
            if self.sequence is None:
                raise LostLeadership(f"{self.stream}: no term (not fenced)")
            return subject, fenced_headers(self.subject, self.sequence, self.leading.me)

        def refused() -> FencedOut:
            fenced_at, self.sequence = self.sequence, None
            return FencedOut(
                f"{self.stream}: JetStream refused our publish to {subject}: a newer leader "
                f"fenced it after our fence at sequence {fenced_at}"
            )

        await publish_fenced(self.js, data, self.stream, attempt, refused)


async def publish_fenced(
    js: JetStreamContext,
    data: bytes,
    where: str,
    attempt: Callable[[], tuple[str, dict[str, str]]],
    refused: Callable[[], FencedOut],
) -> None:
    """One write of the leader's term: `attempt()` checks the term still holds and gives the
    subject and the fence headers (it raises LostLeadership when the term is over); a write
    JetStream refuses by the fence ends the term (`refused()` says how); one a replicated
    stream was too busy to check is sent again after RETRY_DELAYS."""
    for delay in [*RETRY_DELAYS, None]:
        subject, headers = attempt()
        try:
            await js.publish(subject, data, headers=headers)
            return
        except APIError as exc:
            if refused_by_fence(exc.err_code):
                FENCED_WRITES.labels(where).inc()
                raise refused() from exc
            if delay is None or not condition_in_flight(exc.err_code):
                raise
        BUSY_RETRIES.labels(where).inc()
        await asyncio.sleep(delay)


def _believed_revision(leading: Leadership, where: str) -> int:
    """Our lease revision, while we believe we lead."""
    revision = leading.revision
    if revision is None or not leading.is_leader(time.monotonic()):
        raise LostLeadership(where)
    return revision


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
        for count, write in enumerate(pending, 1):
            changed = await write  # not `written += await ...`: that reads `written` first
            written += changed
            if count % KEYS_PER_WRITER_TURN == 0:
                # A key whose value is unchanged is skipped without suspending: a takeover
                # comparing 100,000 such keys would otherwise hold the loop (and the lease
                # renewal) from start to end.
                await asyncio.sleep(0)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(WRITES_IN_FLIGHT):
                group.create_task(writer())
    except ExceptionGroup as failed:
        # A lost lease or a refusal by the fence wins over anything that failed with it
        # (acks that timed out while the process was paused): it decides what happens next.
        fenced, lost = failed.subgroup(FencedOut), failed.subgroup(LostLeadership)
        first = fenced.exceptions[0] if fenced else lost.exceptions[0] if lost else None
        if first is None:
            raise
        raise first from None
    finally:
        for write in pending:
            write.close()  # after a failure: created by the iterator, never to run
    return written
