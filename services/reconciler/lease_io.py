"""The leader lease's I/O on KV `kgslb_leases`: the shell around the pure `Leadership`."""

from __future__ import annotations

import contextlib
import logging
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.reconciler.lease import Leadership, Step
from shared import subjects, wire
from shared.models import Lease, utcnow

log = logging.getLogger(__name__)


async def lease_step(leases: KeyValue, leadership: Leadership) -> None:
    """Read the lease key, then renew, create or take it over as `leadership` decides."""
    lease: Lease | None = None
    revision: int | None = None
    try:
        entry = await leases.get(subjects.RECONCILER_LEASE_KEY)
    except KeyNotFoundError:
        pass
    else:
        revision = entry.revision
        with contextlib.suppress(wire.WireError):
            lease = wire.decode(entry.value or b"", Lease)
    step = leadership.next_step(time.monotonic(), lease, revision)
    if step == Step.WAIT:
        return
    value = leadership.value(utcnow())
    sent = time.monotonic()
    try:
        if step == Step.CREATE:
            written = await leases.create(subjects.RECONCILER_LEASE_KEY, wire.encode(value))
        else:
            written = await leases.update(
                subjects.RECONCILER_LEASE_KEY, wire.encode(value), last=revision
            )
    except KeyWrongLastSequenceError:
        leadership.lost()
        return
    leadership.written(sent, written, value)


async def release_lease(leases: KeyValue, leadership: Leadership) -> None:
    """Hand the lease over at once (shutdown) instead of after a TTL."""
    revision = leadership.revision
    if revision is None:
        return
    with contextlib.suppress(Exception):
        released = leadership.released(utcnow())
        await leases.update(subjects.RECONCILER_LEASE_KEY, wire.encode(released), last=revision)
        log.info("released the leader lease")
    leadership.lost()
