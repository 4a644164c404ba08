"""ZSK rollover on a schedule, by pre-publication (RFC 6781 4.1.1.1), as a pure step: given a
zone's keys and the time, the keys after the next step, or None when no step is due.

1. The active ZSK has served `lifetime`: a new ZSK is added, `published` (in the DNSKEY RRset,
   not signing), so resolvers that cache the DNSKEY RRset learn it before it signs.
2. It has been published `wait` (at least the DNSKEY TTL): it becomes `active` and the old one
   `retired` (still published, signing nothing). Every DNS signs with the new one from then on.
3. The old one has been retired `wait` (at least the longest TTL of the zone, so no cache
   holds a signature it made): it is removed.

Only ZSKs roll here; the KSK's DS is in the parent, so its rollover involves the parent and is
an operator's procedure (docs/architecture.md, "DNSSEC").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.models import DnssecKey, KeyRole, KeyState, ZoneKeys


@dataclass(frozen=True, slots=True)
class RolloverPolicy:
    lifetime: timedelta
    """How long a ZSK signs before the next one is introduced; zero: never roll."""
    wait: timedelta
    """How long a new ZSK is published before it signs, and an old one after it stopped."""


def zsk_step(
    keys: ZoneKeys,
    now: datetime,
    policy: RolloverPolicy,
    make_zsk: Callable[[int], DnssecKey],
) -> ZoneKeys | None:
    """The keys after the next due step of the ZSK rollover, or None. `make_zsk(algorithm)`
    makes a new ZSK of the algorithm number given (the current ZSK's)."""
    if policy.lifetime <= timedelta(0):
        return None
    zsks = [k for k in keys.keys if k.role == KeyRole.ZSK]
    active = [k for k in zsks if k.state == KeyState.ACTIVE]
    incoming = [k for k in zsks if k.state == KeyState.PUBLISHED]
    retired = [k for k in zsks if k.state == KeyState.RETIRED]

    def aged(key: DnssecKey, age: timedelta) -> bool:
        return now - key.in_state_since >= age

    expired = [k for k in retired if aged(k, policy.wait)]
    if expired:
        return keys.model_copy(update={"keys": [k for k in keys.keys if k not in expired]})
    ready = [k for k in incoming if aged(k, policy.wait)]
    if ready and active:
        new = ready[0]
        changed = []
        for key in keys.keys:
            if key is new:
                key = key.model_copy(update={"state": KeyState.ACTIVE, "state_since": now})
            elif key in active:
                key = key.model_copy(update={"state": KeyState.RETIRED, "state_since": now})
            changed.append(key)
        return keys.model_copy(update={"keys": changed})
    if incoming or retired or not active:
        return None
    if all(aged(k, policy.lifetime) for k in active):
        fresh = make_zsk(active[0].algorithm).model_copy(
            update={"state": KeyState.PUBLISHED, "state_since": now}
        )
        return keys.model_copy(update={"keys": [*keys.keys, fresh]})
    return None
