"""Follow a NATS KV bucket: its current values, then every put and delete, for as long as the
process runs, through NATS reconnects, interrupted watches and a bucket that is missing for a
while. `read_values` lists a bucket once. The one way kgslb follows or lists a bucket; neither
ever delivers the reconciler leader's fence (`subjects.FENCE_KEY`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from shared import subjects

log = logging.getLogger(__name__)

RECONNECT_POLL_SECONDS = 0.5
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 5.0
"""The default bound of the backoff between attempts to watch a bucket again."""
READ_IDLE_SECONDS = 10.0
"""`read_values` gives up when NATS delivers nothing for this long."""
STOP_WATCH_SECONDS = 1.0
STORE_CHECK_SECONDS = 5.0
"""How often a running watch looks whether its bucket was deleted and created anew."""
YIELD_EVERY_CHANGES = 64
"""Changes applied between turns of the event loop while a backlog drains (a DNS change costs
~50-100 us: the loop waits a few milliseconds at most)."""
DEFER_AT_MOST_SECONDS = 1.0
"""A follower that defers to others (`defer_to`) applies a part of its own backlog at least
this often, however long theirs lasts."""
STALE_AFTER_SECONDS = 30.0
"""After a lost store: how long after the new bucket's first value the keys it never held
again are still kept, before they are delivered as deleted."""

WATCH_RESTARTS = Counter(
    "kgslb_kv_watch_restarts_total",
    "Watches of a KV bucket started over (reconnect: NATS reconnected; error: an attempt "
    "failed, the bucket missing included)",
    ["bucket", "reason"],
)
STORE_LOSSES = Counter(
    "kgslb_kv_store_losses_total",
    "Times a followed bucket was found created anew (its JetStream store lost): revisions "
    "forgotten, followed again from the start, what was delivered kept meanwhile",
    ["bucket"],
)
SKIPPED_CHANGES = Counter(
    "kgslb_kv_skipped_changes_total",
    "KV changes the service could not apply (a value that does not decode): logged, skipped",
    ["bucket"],
)


@dataclass(frozen=True, slots=True)
class Change:
    """One key of a bucket as it is now."""

    bucket: str
    key: str
    value: bytes | None
    """None: the key was deleted or purged. An empty value counts as deleted."""
    revision: int


Apply = Callable[[Change], None]


class BucketReadTimeout(TimeoutError):
    """NATS stopped delivering while a bucket was being read."""


class _WatchEnded(Exception):
    """The watch stopped delivering without a reconnect: start over after a backoff."""


def _reason(exc: Exception) -> str:
    if isinstance(exc, BucketNotFoundError):
        # nats-py's text for it is "code=None err_code=None description='None'".
        return "the bucket does not exist (JetStream store lost, or not created yet)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class BucketFollower:
    """Deliver every key of one bucket to `apply`, then every change, until cancelled.

    After a NATS reconnect the watch starts over at once: a restarted nats-server forgot the
    watch's consumer, and the watch would stall (for good when the store was lost). Entries delivered already are
    skipped by revision, so `apply` sees only what changed meanwhile. Any failure (the bucket
    missing, JetStream not ready yet) is retried with a backoff of up to `max_retry_seconds`,
    logged once per outage; `apply` keeps what it was given. An `apply` that raises is
    logged and counted and its change skipped: one bad value never stalls the bucket.

    A bucket deleted and created anew (a lost JetStream store: NATS back empty, and a
    service created the bucket again) is told by its creation time, looked at on every
    start of the watch and every `STORE_CHECK_SECONDS`: the revisions delivered are forgotten
    (the new bucket counts from 1 again) and the bucket is followed from its start, while
    what `apply` was given stays until the new bucket says otherwise: `rebuilding` is true
    until the first value of the new bucket arrives, and `on_loss` runs once per loss. A key
    the new bucket still does not hold `stale_after_seconds` after that first value (a name
    deleted while the store was away: nobody deletes it from a bucket that never had it) is
    delivered as deleted then.
    """

    def __init__(
        self,
        nc: Client,
        bucket: str,
        apply: Apply,
        keys: str = ">",
        max_retry_seconds: float = MAX_RETRY_SECONDS,
        on_loss: Callable[[], None] | None = None,
        store_check_seconds: float = STORE_CHECK_SECONDS,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
        on_missing: Callable[[], None] | None = None,
        on_created: Callable[[datetime], None] | None = None,
        defer_to: Sequence[BucketFollower] = (),
    ) -> None:
        if max_retry_seconds < FIRST_RETRY_SECONDS:
            raise ValueError(
                f"follower of KV {bucket}: max_retry_seconds {max_retry_seconds} is below "
                f"the first retry's {FIRST_RETRY_SECONDS} s"
            )
        self.bucket = bucket
        self.keys = keys
        self.max_retry_seconds = max_retry_seconds
        self._nc = nc
        self._js = nc.jetstream()
        self._apply = apply
        self._revisions: dict[str, int] = {}
        """Key -> revision last delivered, deletes included."""
        self._caught_up = asyncio.Event()
        self._failures = 0
        self._outage_started = 0.0
        self._on_loss = on_loss
        self.store_check_seconds = store_check_seconds
        self._created: datetime | None = None
        """Creation time of the bucket's stream when last opened."""
        self._seen_missing = False
        self.missing = False
        """The bucket did not exist at the last attempt to follow it."""
        self.rebuilding = False
        """The bucket was lost while it held values: true until the new one delivers one."""
        self.stale_after_seconds = stale_after_seconds
        self._on_missing = on_missing
        """Told when the bucket is not found (a `bus.StateKeeper.notice`: check at once)."""
        self._on_created = on_created
        """Told the bucket's creation time at every open, before its values are delivered
        (after `on_loss` when the bucket was created anew)."""
        self._present: set[str] = set()
        """Keys whose last delivered change holds a value."""
        self._stale: set[str] = set()
        """Keys held before a loss that the new bucket has not delivered again."""
        self._rebuilt_at: float | None = None
        self.defer_to = tuple(defer_to)
        """Once caught up, this follower lets these apply their backlog first (up to
        `DEFER_AT_MOST_SECONDS` at a time): a DNS applies names before member verdicts that
        change no answer (the ones that do arrive live, apart from the KV)."""
        self._watcher: KeyValue.KeyWatcher | None = None
        self._early_marker_at: float | None = None
        """When nats-py's end-of-values marker came before the values (`_deliver_all`)."""

    @property
    def backlog(self) -> int:
        """Changes received from NATS and not applied yet (0 while not watching)."""
        watcher = self._watcher
        if watcher is None:
            return 0
        subscription = watcher._sub
        pending = subscription.pending_msgs if subscription is not None else 0
        return watcher._updates.qsize() + pending

    @property
    def caught_up(self) -> bool:
        """Every value the bucket held when following began has been delivered. Stays true
        through later outages: what was delivered is still the newest known."""
        return self._caught_up.is_set()

    async def wait_caught_up(self) -> None:
        await self._caught_up.wait()

    async def run(self) -> None:
        """Follow until cancelled; never returns, never raises."""
        while True:
            try:
                await self._watch_until_reconnect()
            except Exception as exc:
                WATCH_RESTARTS.labels(self.bucket, "error").inc()
                await self._back_off(exc)
            else:
                WATCH_RESTARTS.labels(self.bucket, "reconnect").inc()
                log.info("nats reconnected: restarting the watch of %s", self.bucket)

    async def _watch_until_reconnect(self) -> None:
        # Counted before the watch exists, so a reconnect while it is set up is not missed.
        reconnects = self._nc.stats["reconnects"]
        watcher = self._watcher = await self._open()
        delivering = asyncio.create_task(self._deliver_all(watcher))
        reconnected = asyncio.create_task(self._reconnected_since(reconnects))
        replaced = asyncio.create_task(self._replaced())
        try:
            done, _ = await asyncio.wait(
                {delivering, reconnected, replaced}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._watcher = None
            for task in (delivering, reconnected, replaced):
                task.cancel()
            await asyncio.gather(delivering, reconnected, replaced, return_exceptions=True)
            # Unsubscribing may fail or hang with NATS away; the consumer is ephemeral.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_WATCH_SECONDS):
                    await watcher.stop()  # type: ignore[no-untyped-call]
        if delivering in done and reconnected not in done:
            delivering.result()
            raise _WatchEnded("the watch ended by itself")

    async def _open(self) -> KeyValue.KeyWatcher:
        """The bucket is looked up anew at every start: after a NATS restart on an empty
        store it is gone, and this is where `BucketNotFoundError` surfaces; or it is there
        but new, created again after the loss."""
        try:
            kv = await self._js.key_value(self.bucket)
        except BucketNotFoundError:
            self.missing = True
            self._seen_missing = True
            if self._on_missing is not None:
                self._on_missing()
            raise
        created = await self._creation_time()
        self.missing = False
        if self._was_replaced(created):
            self._store_lost()
        self._created = created
        self._seen_missing = False
        if created is not None and self._on_created is not None:
            self._on_created(created)
        return await kv.watch(self.keys)

    async def _creation_time(self) -> datetime | None:
        info = await self._js.stream_info(f"KV_{self.bucket}")
        return info.created

    def _was_replaced(self, created: datetime | None) -> bool:
        if self._created is not None and created is not None:
            return created != self._created
        return self._seen_missing and bool(self._revisions)

    async def _replaced(self) -> None:
        """Return once the bucket is gone or was created anew under the running watch."""
        while True:
            await asyncio.sleep(min(self.store_check_seconds, self.stale_after_seconds))
            self._drop_stale()
            try:
                created = await self._creation_time()
            except NotFoundError:
                self.missing = True
                self._seen_missing = True
                return
            except Exception:  # NATS away: the reconnect restarts the watch
                continue
            if self._was_replaced(created):
                return
            await self._marker_overdue()

    async def _marker_overdue(self) -> None:
        """After an early end-of-values marker, the entry sent last normally says when the
        values are in. Should it never come (nats-py leaves out a message it cannot read),
        the consumer's own count decides, a check period later: nothing left to send."""
        watcher, since = self._watcher, self._early_marker_at
        if self.caught_up or since is None or watcher is None:
            return
        if asyncio.get_running_loop().time() - since < self.store_check_seconds:
            return  # entries received may still be waiting to be handed over
        subscription = watcher._sub
        with contextlib.suppress(Exception):
            if subscription is not None and not (await subscription.consumer_info()).num_pending:
                log.warning("KV %s: the watch's last value never came; caught up by the "
                            "consumer's count", self.bucket)  # fmt: skip
                self._now_caught_up()

    def _store_lost(self) -> None:
        STORE_LOSSES.labels(self.bucket).inc()
        self.rebuilding = bool(self._revisions)
        log.warning(
            "KV %s was created anew (its JetStream store was lost): following it from the "
            "start; the %d keys delivered before stay until it says otherwise",
            self.bucket, len(self._revisions),
            extra={"bucket": self.bucket, "keys": len(self._revisions)},
        )  # fmt: skip
        self._revisions.clear()
        self._stale |= self._present
        self._rebuilt_at = None
        if self._on_loss is not None:
            try:
                self._on_loss()
            except Exception:
                log.exception("handling the loss of KV %s failed", self.bucket)

    async def _reconnected_since(self, reconnects: int) -> None:
        while self._nc.stats["reconnects"] == reconnects:
            await asyncio.sleep(RECONNECT_POLL_SECONDS)

    async def _deliver_all(self, watcher: KeyValue.KeyWatcher) -> None:
        delivered = 0
        async for entry in watcher:
            if entry is None:
                # nats-py's end-of-values marker. Right after the watch began it is decided
                # from the consumer's pending count, 0 once the server has sent everything:
                # on a busy machine it can come before entries the client already received,
                # and a DNS would call itself loaded with half its table. Then the entry
                # sent last (nothing pending after it) says it instead.
                if delivered or await _nothing_sent(watcher):
                    self._now_caught_up()
                elif self._early_marker_at is None:
                    self._early_marker_at = asyncio.get_running_loop().time()
                continue
            self._deliver(entry)
            delivered += 1
            if entry.delta == 0:
                self._now_caught_up()  # nothing was pending after this one when it was sent
            if delivered % YIELD_EVERY_CHANGES == 0:
                # The watcher's queue hands over a backlog without ever suspending, so a
                # cold start's 100,000 changes would be applied in one go, the DNS's sockets
                # unread meanwhile (queries timed out for seconds). Let the loop turn.
                await asyncio.sleep(0)
                await self._defer()

    async def _defer(self) -> None:
        if not self.defer_to or not self.caught_up:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + DEFER_AT_MOST_SECONDS
        while any(other.backlog for other in self.defer_to) and loop.time() < until:
            await asyncio.sleep(0)

    def _deliver(self, entry: KeyValue.Entry) -> None:
        if subjects.is_fence_key(entry.key):
            return  # the reconciler leader's fence, not a value (subjects.FENCE_KEY)
        revision = entry.revision or 0
        # Equal, not lower: a bucket created again after a lost store counts from 1 again.
        if self._revisions.get(entry.key) == revision:
            return
        # Recorded before `apply` runs, so a change that fails is never met again.
        self._revisions[entry.key] = revision
        if self.rebuilding:
            self.rebuilding = False
            log.info("KV %s holds values again after its loss", self.bucket)
        if self._stale and self._rebuilt_at is None:
            self._rebuilt_at = asyncio.get_running_loop().time()
        self._stale.discard(entry.key)
        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
        self._apply_safely(
            Change(self.bucket, entry.key, None if deleted else entry.value, revision)
        )

    def _apply_safely(self, change: Change) -> None:
        if change.value is None:
            self._present.discard(change.key)
        else:
            self._present.add(change.key)
        try:
            self._apply(change)
        except Exception as exc:
            SKIPPED_CHANGES.labels(self.bucket).inc()
            log.error(
                "skipped %s in KV %s at revision %d: %s",
                change.key,
                self.bucket,
                change.revision,
                _reason(exc),
                extra={"bucket": self.bucket, "key": change.key, "revision": change.revision},
            )

    def _drop_stale(self) -> None:
        """Keys the lost store held and the new bucket still lacks, a while after it began
        to fill: deleted (revision 0: not a revision of the new bucket)."""
        started = self._rebuilt_at
        if not self._stale or started is None:
            return
        if asyncio.get_running_loop().time() - started < self.stale_after_seconds:
            return
        stale, self._stale = sorted(self._stale), set()
        log.warning(
            "KV %s: %d key(s) held before its loss were not written again in %g s: deleted",
            self.bucket, len(stale), self.stale_after_seconds,
            extra={"bucket": self.bucket, "keys": len(stale)},
        )  # fmt: skip
        for key in stale:
            if key in self._present:
                self._apply_safely(Change(self.bucket, key, None, 0))

    def _now_caught_up(self) -> None:
        if self._failures:
            log.info(
                "following KV %s again after %.1f s",
                self.bucket,
                asyncio.get_running_loop().time() - self._outage_started,
                extra={"bucket": self.bucket, "attempts": self._failures},
            )
            self._failures = 0
        if not self._caught_up.is_set():
            log.info(
                "caught up with KV %s",
                self.bucket,
                extra={"bucket": self.bucket, "keys": len(self._revisions)},
            )
            self._caught_up.set()

    async def _back_off(self, exc: Exception) -> None:
        self._failures += 1
        if self._failures == 1:
            self._outage_started = asyncio.get_running_loop().time()
            log.warning(
                "cannot follow KV %s: %s; retrying with a backoff of up to %s s, what was "
                "delivered stays",
                self.bucket,
                _reason(exc),
                self.max_retry_seconds,
                extra={"bucket": self.bucket, "reason": _reason(exc)},
            )
        exponent = min(self._failures - 1, 16)
        await asyncio.sleep(min(FIRST_RETRY_SECONDS * 2**exponent, self.max_retry_seconds))


async def _nothing_sent(watcher: KeyValue.KeyWatcher) -> bool:
    """The watch's consumer has sent nothing and has nothing pending (an empty bucket, as
    far as the filter goes); False when it cannot tell."""
    subscription = watcher._sub
    if subscription is None:
        return False
    try:
        info = await subscription.consumer_info()
    except Exception:
        return False  # the entry sent last will tell
    sent = info.delivered.consumer_seq if info.delivered is not None else 0
    return not info.num_pending and not sent


async def read_values(
    js: JetStreamContext, bucket: str, idle_seconds: float = READ_IDLE_SECONDS
) -> dict[str, bytes]:
    """What `bucket` holds now, deleted keys and fence markers left out, read once (see
    `read_entries`)."""
    entries = await read_entries(js, bucket, idle_seconds)
    return {key: entry.value for key, entry in entries.items() if entry.value}


async def read_entries(
    js: JetStreamContext, bucket: str, idle_seconds: float = READ_IDLE_SECONDS
) -> dict[str, KeyValue.Entry]:
    """The entries (value and revision) `bucket` holds now, deleted keys and fence markers left
    out, read once. Use it instead of nats-py's `KeyValue.keys()`, which ends at the same
    early marker described here and raises when a bucket holds nothing.

    Read up to the stream's last message as it was before the watch began, not up to
    nats-py's end-of-initial-values marker: that marker is decided from the consumer's
    pending count, which is 0 once the server has sent everything, so on a busy machine it
    can come before entries already received (a loaded CI saw a health bucket read empty)."""
    kv = await js.key_value(bucket)
    state = (await js.stream_info(f"KV_{bucket}")).state
    if not state.messages:
        return {}
    watcher = await kv.watch(">")
    entries: dict[str, KeyValue.Entry] = {}
    seen = 0
    marker = False
    try:
        while seen < state.messages:
            try:
                entry = await watcher.updates(timeout=idle_seconds)  # type: ignore[no-untyped-call]
            except NatsTimeoutError:
                if marker:  # messages expired (a TTL'd bucket) since the count was taken
                    return entries
                raise BucketReadTimeout(
                    f"reading KV {bucket}: nothing delivered for {idle_seconds} s after "
                    f"{len(entries)} keys (is NATS up?)"
                ) from None
            if entry is None:
                marker = True
                continue
            seen += 1
            if entry.operation is None and entry.value and not subjects.is_fence_key(entry.key):
                entries[entry.key] = entry
            else:
                entries.pop(entry.key, None)
            if (entry.revision or 0) >= state.last_seq:
                break
        return entries
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
