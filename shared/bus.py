"""The one NATS helper: connect with any supported credentials, and bootstrap JetStream.

`bootstrap` is idempotent and every service calls it at start, so the services can start in
any order against an empty server. A service whose NATS user may not create streams (dns, see
deploy/nats/) looks them up instead and waits until a service that may has created them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from shared import subjects
from shared.reconnects import ReconnectLog
from shared.settings import NatsSettings

log = logging.getLogger(__name__)

DAY_SECONDS = 24 * 3600.0

BAD_MESSAGES = Counter(
    "kgslb_bad_messages_total",
    "Messages that could not be decoded, moved to the dead-letter subject",
    ["service", "subject_prefix"],
)


def stream_configs() -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.STREAM_EVENTS,
            subjects=list(subjects.EVENTS_STREAM_SUBJECTS),
            storage=StorageType.FILE,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD,
            description="kgslb observed world and policies, last message per object",
        ),
        StreamConfig(
            name=subjects.STREAM_STATUS,
            subjects=[f"{subjects.STATUS_PREFIX}.>"],
            storage=StorageType.FILE,
            max_msgs_per_subject=1,
            description="kgslb CR status for the home watcher",
        ),
        StreamConfig(
            name=subjects.STREAM_DNSLOG,
            subjects=[f"{subjects.DNSLOG_PREFIX}.>"],
            storage=StorageType.FILE,
            max_age=DAY_SECONDS,
            max_bytes=1 << 30,
            description="kgslb DNS query logs (throttled)",
        ),
        StreamConfig(
            name=subjects.STREAM_DEADLETTER,
            subjects=[f"{subjects.DEADLETTER_PREFIX}.>"],
            storage=StorageType.FILE,
            max_age=7 * DAY_SECONDS,
            max_msgs=100_000,
            # A poison message that stays in its stream is met again by every restart or
            # replay; its dead letter carries a Nats-Msg-Id (stream:sequence) so it is parked
            # once a day, not once per restart.
            duplicate_window=DAY_SECONDS,
            description="messages kgslb services could not decode",
        ),
    ]


KV_BUCKETS = (
    subjects.KV_SERVICES, subjects.KV_ZONES, subjects.KV_HEALTH, subjects.KV_LEASES,
    subjects.KV_KEYS,
)  # fmt: skip

LOOKUP_INTERVAL_SECONDS = 1.0
CREATE_ATTEMPTS = 3
CREATE_RETRY_SECONDS = 0.5
BOOTSTRAP_MAX_RETRY_SECONDS = 5.0
TRANSIENT = (ServiceUnavailableError, NoRespondersError, NatsTimeoutError)
"""JetStream starting, or NATS away for a moment: try again."""


def redact_url(urls: str) -> str:
    """`nats://dns:secret@host:4222` -> `nats://dns:***@host:4222`, for logs and errors."""

    def redact(url: str) -> str:
        parts = urlsplit(url.strip())
        userinfo, at, host = parts.netloc.rpartition("@")
        if not at:
            return url.strip()
        user, colon, _ = userinfo.partition(":")
        # A userinfo without a colon is a token: hide it whole.
        shown = f"{user}:***" if colon else "***"
        return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))

    return ",".join(redact(url) for url in urls.split(","))


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """The client side of TLS: verify the server against `nats_tls_ca` and, for mutual TLS,
    present `nats_tls_cert`/`nats_tls_key`."""
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.nats_tls_ca)
    if settings.nats_tls_cert:
        context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
    return context


CONNECT_RETRY_SECONDS = 0.2
CONNECT_MAX_RETRY_SECONDS = 5.0
RECONNECT_WAIT_SECONDS = 0.5


class NatsUnreachable(ConnectionError):
    """NATS did not answer in time; the message names the URL and the last reason."""


def attempt_reason(exc: BaseException) -> str:
    """`[Errno 111] Connect call failed ('127.0.0.1', 1)`, `nats: timeout`, ... never empty."""
    text = str(exc).strip()
    return text or type(exc).__name__


def _attempted_url(nc: Client, fallback: str) -> str:
    """The server of the attempt that just failed: nats-py moves it to the end of its pool."""
    servers = nc.servers
    if not servers:
        return redact_url(fallback)
    return redact_url(servers[-1].geturl())


AttemptFailed = Callable[[str, BaseException], None]


async def connect(
    settings: NatsSettings,
    name: str,
    on_state: Callable[[str], Awaitable[None]] | None = None,
    on_attempt_failed: AttemptFailed | None = None,
) -> Client:
    """Connect, retrying until it succeeds (cancel the call to give up), then reconnect
    forever in the background.

    Until the first connection every failed attempt is logged at WARNING as `waiting for
    NATS at <url>: <reason>` (or handed to `on_attempt_failed`), with a back-off from 0.2 s
    to 5 s. Once connected, a lost connection is logged (`nats connection disconnected from
    <url>`), reconnects retry every 0.5 s, a failed one is logged at WARNING as `reconnecting
    to NATS at <url>: <reason> (attempt N, down S s)` (the first of each URL at once, then
    one line per URL every 5 s, `shared.reconnects`), and the reconnection as `nats
    connection reconnected to <url> after N failed attempts, S s`."""

    nc = Client()
    connected = False
    wait = [CONNECT_RETRY_SECONDS]
    reconnects = ReconnectLog()
    last_url = [redact_url(settings.nats_url)]

    async def report(state: str, detail: str = "", **fields: Any) -> None:
        if nc.is_draining or nc.is_closed:
            return
        log.warning("nats connection %s%s", state, detail, extra={"nats_state": state, **fields})
        if on_state is not None:
            await on_state(state)

    def current_url() -> str:
        url = nc.connected_url
        return redact_url(url.geturl()) if url is not None else last_url[0]

    async def disconnected() -> None:
        if connected:
            reconnects.disconnected(time.monotonic())
            await report("disconnected", f" from {last_url[0]}", nats_url=last_url[0])

    async def reconnected() -> None:
        done = reconnects.reconnected(time.monotonic())
        last_url[0] = url = current_url()
        await report(
            "reconnected",
            f" to {url} after {done.number} failed attempts, {done.down_seconds:.1f} s",
            nats_url=url, failed_attempts=done.number, down_seconds=round(done.down_seconds, 3),
        )  # fmt: skip

    async def error(exc: Exception) -> None:
        if not connected:
            url = _attempted_url(nc, settings.nats_url)
            if on_attempt_failed is not None:
                on_attempt_failed(url, exc)
            else:
                log.warning(
                    "waiting for NATS at %s: %s", url, attempt_reason(exc),
                    extra={"nats_url": url, "retry_seconds": wait[0]},
                )  # fmt: skip
            # The next attempt waits `reconnect_time_wait`: back off while NATS stays away.
            nc.options["reconnect_time_wait"] = wait[0]
            wait[0] = min(wait[0] * 2, CONNECT_MAX_RETRY_SECONDS)
            return
        # A permissions violation is a deployment mistake the operator must see.
        if "permissions violation" in str(exc).lower():
            log.warning("nats refused: %s", exc, extra={"nats_user": settings.nats_user or ""})
            return
        if nc.is_reconnecting and not (nc.is_closed or nc.is_draining):
            url = _attempted_url(nc, settings.nats_url)
            attempt = reconnects.failed(url, time.monotonic())
            if attempt is not None:
                log.warning(
                    "reconnecting to NATS at %s: %s (attempt %d, down %.1f s)",
                    url, attempt_reason(exc), attempt.number, attempt.down_seconds,
                    extra={"nats_url": url, "failed_attempts": attempt.number,
                           "down_seconds": round(attempt.down_seconds, 3)},
                )  # fmt: skip
            return
        log.debug("nats client error: %s", exc)  # the disconnect itself: `report` says it

    options: dict[str, Any] = {
        "servers": [url.strip() for url in settings.nats_url.split(",") if url.strip()],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": CONNECT_RETRY_SECONDS,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_creds:
        options["user_credentials"] = settings.nats_creds
    if settings.nats_nkey_seed:
        options["nkeys_seed"] = settings.nats_nkey_seed
    tls = tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    try:
        await nc.connect(**options)
    except BaseException:
        # Cancelled (a deadline, SIGTERM) or failed: leave no half-open client behind.
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    connected = True
    last_url[0] = current_url()
    nc.options["reconnect_time_wait"] = RECONNECT_WAIT_SECONDS
    return nc


CLI_CONNECT_SECONDS = 4.0


async def connect_or_fail(
    settings: NatsSettings, name: str, timeout: float = CLI_CONNECT_SECONDS
) -> Client:
    """A command's connection: NATS answers, or `NatsUnreachable` says which URL was tried
    and why it failed (one line), once every URL has failed once or after `timeout`,
    instead of waiting for NATS forever."""
    urls = [url for url in settings.nats_url.split(",") if url.strip()]
    failures: list[tuple[str, BaseException]] = []
    all_failed = asyncio.Event()

    def failed(url: str, exc: BaseException) -> None:
        failures.append((url, exc))
        if len(failures) >= len(urls):
            all_failed.set()

    connecting = asyncio.ensure_future(connect(settings, name, on_attempt_failed=failed))
    given_up = asyncio.ensure_future(all_failed.wait())
    try:
        await asyncio.wait(
            {connecting, given_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        given_up.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    if failures:
        url, exc = failures[-1]
        reason = attempt_reason(exc)
    else:
        url, reason = redact_url(settings.nats_url), f"no answer within {timeout:g} s"
    raise NatsUnreachable(f"cannot reach NATS at {url}: {reason}")


def _differs(desired: StreamConfig, actual: StreamConfig) -> list[str]:
    """Fields this build sets that the server holds differently (others are the operator's,
    such as `num_replicas` after `nats stream edit --replicas 3`)."""
    return [
        field.name
        for field in dataclasses.fields(desired)
        if (value := getattr(desired, field.name)) not in (None, field.default)
        and getattr(actual, field.name) != value
    ]


class BootstrapError(RuntimeError):
    """NATS refused to create a stream or bucket kgslb needs."""


class _Provisioner:
    """Creates what is missing, or, once NATS refuses a create (a read-only user), waits for
    a service that may create it."""

    def __init__(self, js: JetStreamContext, replicas: int) -> None:
        self.js = js
        self.replicas = replicas
        self.may_create = True

    async def stream(self, config: StreamConfig) -> None:
        name = config.name or ""
        try:
            info = await self.js.stream_info(name)
        except NotFoundError:
            config = dataclasses.replace(config, num_replicas=self.replicas)
            await self._create_or_wait(name, lambda: self.js.add_stream(config))
            return
        changed = _differs(config, info.config)
        # Replicas only go up: an operator's `nats stream edit --replicas 5` stays.
        replicas = max(info.config.num_replicas or 1, self.replicas)
        if replicas != (info.config.num_replicas or 1):
            changed.append(f"num_replicas {info.config.num_replicas} -> {replicas}")
        if not changed:
            return
        update = dataclasses.replace(config, num_replicas=replicas)
        try:
            await self.js.update_stream(update)
        except NatsTimeoutError:
            log.warning(
                "stream %s differs from this version (%s) and this NATS user may not update it "
                "(needs publish on $JS.API.STREAM.UPDATE.%s); the reconciler updates it",
                name, ", ".join(changed), name,
            )  # fmt: skip

    async def bucket(self, bucket: str) -> KeyValue:
        try:
            kv = await self.js.key_value(bucket)
        except BucketNotFoundError:
            config = KeyValueConfig(
                bucket=bucket, history=1, storage=StorageType.FILE, replicas=self.replicas
            )
            await self._create_or_wait(f"KV_{bucket}", lambda: self.js.create_key_value(config))
            return await self.js.key_value(bucket)
        await self._raise_replicas(f"KV_{bucket}")
        return kv

    async def _raise_replicas(self, stream: str) -> None:
        if self.replicas <= 1:
            return
        info = await self.js.stream_info(stream)
        if (info.config.num_replicas or 1) >= self.replicas:
            return
        try:
            await self.js.update_stream(
                dataclasses.replace(info.config, num_replicas=self.replicas)
            )
        except NatsTimeoutError:
            log.warning(
                "stream %s has %s replicas, %d wanted, and this NATS user may not update it",
                stream, info.config.num_replicas, self.replicas,
            )  # fmt: skip

    async def _create_or_wait(self, stream: str, create: Callable[[], Awaitable[object]]) -> None:
        if await self.try_create(stream, create):
            return
        log.warning(
            "waiting for stream %s: this NATS user may not create it "
            "(needs publish on $JS.API.STREAM.CREATE.%s); the reconciler creates it",
            stream, stream,
        )  # fmt: skip
        while True:
            try:
                await self.js.stream_info(stream)
                return
            except NotFoundError:
                await asyncio.sleep(LOOKUP_INTERVAL_SECONDS)

    async def try_create(self, stream: str, create: Callable[[], Awaitable[object]]) -> bool:
        """Create `stream`; True once it exists, whoever created it. False when this user may
        not create streams. Several services create on a fresh (or wiped) server at once, and
        a JetStream that is still starting answers 503 or has no responder yet: those are
        retried, and a create refused because another service was first counts as done."""
        if not self.may_create:
            return False
        for attempt in range(CREATE_ATTEMPTS):
            try:
                await create()
                return True
            except (BadRequestError, ServerError) as exc:
                # Another service created it between our lookup and our create (with other
                # replicas, say), or NATS refused what we asked for (more replicas than the
                # cluster has servers).
                if await self._exists(stream):
                    return True
                if attempt + 1 == CREATE_ATTEMPTS:
                    raise BootstrapError(
                        f"NATS refused to create stream {stream} with {self.replicas} "
                        f"replica(s): {exc.description} (--stream-replicas / "
                        "KGSLB_STREAM_REPLICAS must not exceed the JetStream servers)"
                    ) from exc
            except (ServiceUnavailableError, NoRespondersError):
                pass  # JetStream (or its meta leader) not up yet
            except NatsTimeoutError:
                # A user without the permission gets no answer at all (a JetStream still
                # electing its meta leader answers 503, retried above).
                if await self._exists(stream):
                    return True
                self.may_create = False
                return False
            await asyncio.sleep(CREATE_RETRY_SECONDS * (attempt + 1))
        return await self._exists(stream)

    async def _exists(self, stream: str) -> bool:
        try:
            await self.js.stream_info(stream)
        except NotFoundError:
            return False
        return True


async def bootstrap(js: JetStreamContext, replicas: int = 1) -> dict[str, KeyValue]:
    """Create or update every stream and KV bucket; return the buckets by name.

    `replicas` (`--stream-replicas`): created with that many, raised to it when fewer, never
    lowered. A user that may only read gets the same result once they exist: lookups only,
    and no update unless a field this build sets differs from what the server holds.
    """
    return await _bootstrap(_Provisioner(js, replicas))


async def _bootstrap(provisioner: _Provisioner) -> dict[str, KeyValue]:
    for config in stream_configs():
        await provisioner.stream(config)
    return {bucket: await provisioner.bucket(bucket) for bucket in KV_BUCKETS}


async def _bootstrap_until_done(provisioner: _Provisioner) -> dict[str, KeyValue]:
    """A service's bootstrap: a JetStream that does not answer yet is waited for (callers
    with a deadline of their own, such as `kgslb up`, use `bootstrap`)."""
    delay = CREATE_RETRY_SECONDS
    while True:
        try:
            return await _bootstrap(provisioner)
        except TRANSIENT as exc:
            log.warning(
                "JetStream not answering yet (%s); bootstrap again in %.1f s",
                type(exc).__name__, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, BOOTSTRAP_MAX_RETRY_SECONDS)


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


STATE_LOST = Counter(
    "kgslb_bus_state_lost_total",
    "Streams and KV buckets found missing or created anew since last seen (lost JetStream "
    "state), by stream",
    ["stream"],
)
STATE_RECREATED = Counter(
    "kgslb_bus_state_recreated_total",
    "Streams and KV buckets this service created again",
    ["stream"],
)
STATE_MISSING = Gauge(
    "kgslb_bus_state_missing", "Streams and KV buckets missing at the last check (0 when intact)"
)
STATE_CHECK_RETRY_SECONDS = 0.5
NOTICE_MIN_SECONDS = 2.0
RECONNECT_POLL_SECONDS = 0.25

LossListener = Callable[[frozenset[str]], Awaitable[None]]


class StateKeeper:
    """Keeps kgslb's streams and KV buckets in existence for as long as a service runs.

    A JetStream store can vanish under running services (a lost volume, a wiped cluster,
    `nats stream rm`): NATS comes back empty and, before this, every bucket stayed
    `BucketNotFound` until a restart. The keeper checks every stream at start, at once after
    every NATS reconnect, every `check_seconds`, and whenever a service says it met a missing
    one (`notice`); what is missing is created again (a user that may not create only waits).
    A stream whose creation time differs from the one seen before was lost and created anew,
    by this service or another: the listeners (`on_loss`) rebuild what it held, and until
    they succeeded the state counts as not intact (readiness).
    """

    def __init__(self, nc: Client, replicas: int = 1, check_seconds: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.check_seconds = check_seconds
        self._provisioner = _Provisioner(self.js, replicas)
        self._epochs: dict[str, datetime | None] = {}
        """Stream -> its creation time when last seen."""
        self._missing: set[str] = set()
        self._seen_missing: set[str] = set()
        self._unhealed: set[str] = set()
        """Streams lost whose listeners have not all succeeded yet."""
        self._listeners: list[LossListener] = []
        self._wake = asyncio.Event()
        self._checked_at = 0.0

    def on_loss(self, listener: LossListener) -> None:
        """`listener(lost_streams)` runs after the lost streams exist again; it is called again
        at the next check if it raised."""
        self._listeners.append(listener)

    @property
    def intact(self) -> bool:
        """Every stream and bucket exists and nothing lost is still being rebuilt."""
        return not self._missing and not self._unhealed

    def describe(self) -> str:
        if self._missing:
            return "JetStream state missing: " + ", ".join(sorted(self._missing))
        if self._unhealed:
            return "rebuilding lost JetStream state: " + ", ".join(sorted(self._unhealed))
        return ""

    def notice(self) -> None:
        """Something was not found (BucketNotFound, StreamNotFound): check now."""
        self._wake.set()

    async def bootstrap(self) -> dict[str, KeyValue]:
        """`bootstrap`, and remember what exists now (a later change of it is a loss)."""
        buckets = await _bootstrap_until_done(self._provisioner)
        with contextlib.suppress(Exception):
            await self.check()
        return buckets

    def _wanted(self) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
        replicas = self._provisioner.replicas
        wanted: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        for config in stream_configs():
            stream_config = dataclasses.replace(config, num_replicas=replicas)
            wanted.append((config.name or "", _bind(self.js.add_stream, stream_config)))
        for bucket in KV_BUCKETS:
            kv_config = KeyValueConfig(
                bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas
            )
            wanted.append((kv_stream(bucket), _bind(self.js.create_key_value, kv_config)))
        return wanted

    async def check(self) -> frozenset[str]:
        """Look every stream up, create the missing ones; return the streams found lost in
        this check (and run the listeners for them and any not healed before)."""
        lost: set[str] = set()
        for stream, create in self._wanted():
            try:
                info = await self.js.stream_info(stream)
            except NotFoundError:
                if not await self._provisioner.try_create(stream, create):
                    self._missing_now(stream)
                    continue
                STATE_RECREATED.labels(stream).inc()
                log.warning("stream %s was missing: created it again", stream)
                info = await self.js.stream_info(stream)
            self._missing.discard(stream)
            if self._replaced(stream, info.created):
                lost.add(stream)
            self._epochs[stream] = info.created
            self._seen_missing.discard(stream)
        STATE_MISSING.set(len(self._missing))
        if lost:
            for stream in lost:
                STATE_LOST.labels(stream).inc()
            log.error(
                "JetStream lost %s (created anew since last seen): rebuilding",
                ", ".join(sorted(lost)), extra={"streams": sorted(lost)},
            )  # fmt: skip
            self._unhealed |= lost
        if self._unhealed and not self._missing:
            await self._heal()
        return frozenset(lost)

    def _missing_now(self, stream: str) -> None:
        if stream not in self._missing:
            log.error(
                "stream %s is missing and this NATS user may not create it: waiting for the "
                "reconciler to create it", stream,
            )  # fmt: skip
        self._missing.add(stream)
        self._seen_missing.add(stream)

    def _replaced(self, stream: str, created: datetime | None) -> bool:
        if stream not in self._epochs:
            return False  # first sight
        if created is not None and self._epochs[stream] is not None:
            return created != self._epochs[stream]
        return stream in self._seen_missing

    async def _heal(self) -> None:
        lost = frozenset(self._unhealed)
        for listener in self._listeners:
            await listener(lost)
        self._unhealed -= lost
        log.info("rebuilt after the loss of %s", ", ".join(sorted(lost)))

    async def run(self) -> None:
        """Check until cancelled; never raises."""
        while True:
            await self._wait_for_reason()
            await self._check_until_done()

    async def _check_until_done(self) -> None:
        failing = False
        while True:
            try:
                await self.check()
            except Exception as exc:
                if not failing:  # once per streak: a JetStream without quorum fails for long
                    log.warning(
                        "checking JetStream state failed: %s; retrying every %g s",
                        exc or type(exc).__name__, STATE_CHECK_RETRY_SECONDS,
                    )  # fmt: skip
                failing = True
                await asyncio.sleep(STATE_CHECK_RETRY_SECONDS)
                continue
            if failing:
                log.info("checking JetStream state works again")
            return

    async def _wait_for_reason(self) -> None:
        """The period, a reconnect or a `notice`, whichever comes first; notices at most
        every `NOTICE_MIN_SECONDS`: while a site's stream leaders are elected every write
        fails, and a check per failure would only add JetStream API requests to the
        election."""
        loop = asyncio.get_running_loop()
        reconnects = self.nc.stats["reconnects"]
        deadline = loop.time() + self.check_seconds
        while loop.time() < deadline:
            if self.nc.stats["reconnects"] != reconnects:
                break
            if self._wake.is_set() and loop.time() - self._checked_at >= NOTICE_MIN_SECONDS:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONNECT_POLL_SECONDS):
                    await self._wake.wait()
            if self._wake.is_set():
                await asyncio.sleep(RECONNECT_POLL_SECONDS)
        self._wake.clear()
        self._checked_at = loop.time()
        while not self.nc.is_connected:
            await asyncio.sleep(RECONNECT_POLL_SECONDS)


def _bind(
    call: Callable[[Any], Awaitable[object]], config: object
) -> Callable[[], Awaitable[object]]:
    async def create() -> object:
        return await call(config)

    return create


async def read_last_per_subject(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """The newest message of every subject matching `subject` in `stream`, read once."""
    psub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30,
        ),
    )
    try:
        remaining = (await psub.consumer_info()).num_pending or 0
        messages: list[Msg] = []
        while remaining > 0:
            batch = await psub.fetch(min(remaining, 512), timeout=5)
            messages.extend(batch)
            remaining = batch[-1].metadata.num_pending if batch else 0
        return messages
    finally:
        await psub.unsubscribe()


def stream_position(msg: Msg) -> str | None:
    """`STREAM:sequence` of a message delivered by a JetStream consumer, else None."""
    try:
        metadata = msg.metadata
    except Exception:  # a core NATS message has no JetStream reply subject to parse
        return None
    return f"{metadata.stream}:{metadata.sequence.stream}"


async def dead_letter(
    nc: Client,
    service: str,
    subject: str,
    data: bytes,
    reason: str,
    message_id: str | None = None,
) -> None:
    """Count, log and park a message that could not be used, so no consumer sticks on it.
    `message_id` (see `stream_position`) lets JetStream drop a second dead letter for the
    same stored message, met again after a restart."""
    prefix = ".".join(subject.split(".")[:2])
    BAD_MESSAGES.labels(service=service, subject_prefix=prefix).inc()
    log.error(
        "bad message on %s: %s", subject, reason, extra={"subject": subject, "reason": reason}
    )
    try:
        await nc.publish(
            subjects.deadletter_subject(service, subject),
            data[: 512 * 1024],
            headers={
                "Kgslb-Reason": reason[:1000],
                "Kgslb-Subject": subject,
                **({"Nats-Msg-Id": f"{service}:{message_id}"} if message_id else {}),
            },
        )
    except Exception as exc:  # the dead-letter is best effort; the message is already counted
        log.warning("could not dead-letter message from %s: %s", subject, exc)
