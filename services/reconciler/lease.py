"""Leader election on one NATS KV key, as a pure state machine (the shell does the I/O).

Every change to the key is a compare-and-set on its revision, so of two replicas racing for
it exactly one wins. Time is only ever the local monotonic clock: a standby takes over a lease
whose revision it has seen unchanged for a whole TTL, and a leader believes in its lease only
until `ttl` after it *sent* its last successful renewal. Since the standby's TTL starts after
that write landed, the two beliefs can never overlap, whatever the wall clocks say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from shared.models import Lease

LEADER_BELIEF_FRACTION = 0.9
"""The leader stops acting a little before its lease could be taken, to absorb timer jitter."""


class Step(Enum):
    CREATE = "create"
    """The key is absent: create it (fails if another replica created it first)."""
    UPDATE = "update"
    """Renew our lease or take over a dead or released one: update at the seen revision."""
    WAIT = "wait"
    """Another replica holds a live lease."""


@dataclass
class Leadership:
    me: str
    ttl_seconds: float
    _believe_until: float = -math.inf
    _revision: int | None = None
    """The revision of our last successful write."""
    _acquired_at: datetime | None = None
    _seen_revision: int | None = None
    _seen_since: float = 0.0

    def is_leader(self, now: float) -> bool:
        return now < self._believe_until

    def next_step(self, now: float, lease: Lease | None, revision: int | None) -> Step:
        """What to do given the key's current value (None: unreadable) and revision (None:
        the key is absent)."""
        if revision is None:
            return Step.CREATE
        if revision == self._revision and lease is not None and lease.holder == self.me:
            return Step.UPDATE
        if lease is not None and lease.holder == "":
            return Step.UPDATE
        if revision != self._seen_revision:
            self._seen_revision, self._seen_since = revision, now
        if now - self._seen_since >= self.ttl_seconds:
            return Step.UPDATE
        return Step.WAIT

    def value(self, wall_now: datetime) -> Lease:
        """The lease to write if we lead (or are about to)."""
        acquired = self._acquired_at if self._revision is not None else None
        return Lease(
            holder=self.me,
            acquired_at=acquired or wall_now,
            renewed_at=wall_now,
            expires_at=wall_now + timedelta(seconds=self.ttl_seconds),
            ttl_seconds=self.ttl_seconds,
        )

    def written(self, sent_at: float, revision: int, lease: Lease) -> None:
        """Our create or update at `sent_at` (monotonic) succeeded with `revision`."""
        self._revision = revision
        self._acquired_at = lease.acquired_at
        self._believe_until = sent_at + self.ttl_seconds * LEADER_BELIEF_FRACTION

    def lost(self) -> None:
        """Our write was refused (someone else wrote first) or we released the lease."""
        self._revision = None
        self._acquired_at = None
        self._believe_until = -math.inf

    @property
    def revision(self) -> int | None:
        return self._revision

    def released(self, wall_now: datetime) -> Lease:
        """The value that hands the lease over at once on a graceful shutdown."""
        return Lease(
            holder="",
            acquired_at=wall_now,
            renewed_at=wall_now,
            expires_at=wall_now,
            ttl_seconds=self.ttl_seconds,
        )
