"""Member health from several vantage points, without I/O.

Each site's health replicas publish their own verdict on every member (KV `kgslb_health`,
key `<fqdn>.<ip>.<site>`; `<fqdn>.<ip>` from replicas without a site). `combine` turns the
verdicts on one member into the one state the DNS answers by: the member is down only when
a quorum of the vantage points whose verdicts are fresh says so. A verdict is fresh while the
replica that wrote it heartbeats (verdicts are written only when they change, so their age
says nothing; the heartbeat says the replica is alive, connected, and would have written a
change). When no verdict on a member is fresh, the last combined state stays: health that went
silent never withdraws anything.

`HealthBook` keeps the verdicts, the replicas' heartbeats as this process saw them (on its own
monotonic clock, never comparing clocks across machines) and the combined states, and says
which combined states changed after each update.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from shared import subjects, wire
from shared.models import HealthHeartbeat, HealthState

QUORUM_HELP = (
    "'majority' (more than half of the vantage points with a fresh verdict), 'all' (every one "
    "of them), or a number N >= 1 (at least N of them, or all when fewer are fresh; 1: any one "
    "vantage point withdraws a member)"
)
_NUMBER = re.compile(r"[1-9][0-9]{0,2}")

State = HealthState | None
"""A combined state to apply; None: the member has no verdict any more."""


@dataclass(frozen=True, slots=True)
class Quorum:
    """How many fresh vantage points must say `down` to withdraw a member."""

    rule: str
    """`majority`, `all`, or a number as text."""
    at_least: int = 0
    """The number N; 0 for `majority` and `all`."""

    @classmethod
    def parse(cls, text: str) -> Quorum:
        rule = text.strip().lower()
        if rule in ("majority", "all"):
            return cls(rule)
        if _NUMBER.fullmatch(rule):
            return cls(rule, int(rule))
        raise ValueError(f"health quorum {text!r} is not one of: {QUORUM_HELP}")

    def needed(self, fresh: int) -> int:
        """Down verdicts needed out of `fresh` (>= 1) vantage points."""
        if self.at_least:
            return min(self.at_least, fresh)
        if self.rule == "all":
            return fresh
        return fresh // 2 + 1


MAJORITY = Quorum("majority")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One vantage point's state of one member."""

    vantage: str
    """The site of the replica that wrote it; "" for a replica without a site."""
    state: HealthState
    fresh: bool
    """Its replica heartbeats."""


def combine(
    verdicts: Collection[Verdict], quorum: Quorum = MAJORITY, previous: HealthState | None = None
) -> HealthState:
    """The member's state as the DNS answers it.

    `down` when at least `quorum.needed(fresh)` fresh verdicts say down; otherwise `up` when a
    fresh verdict says up, else `unknown` (answered, like `up`). With no fresh verdict, the
    `previous` combined state stays; with none yet either (the DNS just started while every
    vantage point is silent), the verdicts as they were last written decide, as if fresh: what
    the DNS did before there were vantage points. No verdict at all: `unknown`.
    """
    if not verdicts:
        return HealthState.UNKNOWN
    counted = [v.state for v in verdicts if v.fresh]
    if not counted:
        if previous is not None:
            return previous
        counted = [v.state for v in verdicts]
    return decide(len(counted), counted.count(HealthState.DOWN), HealthState.UP in counted, quorum)


def decide(counted: int, downs: int, any_up: bool, quorum: Quorum) -> HealthState:
    """The rule itself, on counts: `counted` verdicts (>= 1), `downs` of them down."""
    if downs >= quorum.needed(counted):
        return HealthState.DOWN
    return HealthState.UP if any_up else HealthState.UNKNOWN


# The book ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """A verdict as KV holds it: the state and the replica that wrote it."""

    state: HealthState
    replica: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A replica's last heartbeat as this process saw it."""

    site: str
    seen_at: float
    """This process's monotonic clock."""
    valid_for_seconds: float


class HealthBook:
    """The verdicts of every vantage point on every member, and the combined states."""

    def __init__(self, quorum: Quorum = MAJORITY) -> None:
        self.quorum = quorum
        self.verdicts: dict[str, dict[str, Written]] = {}
        """Member key -> vantage -> its verdict."""
        self.combined: dict[str, HealthState] = {}
        self.heartbeats: dict[str, Heartbeat] = {}
        self.live: frozenset[tuple[str, str]] = frozenset()
        """(replica, site) of the replicas whose heartbeat is within its validity: a verdict
        counts when its replica is live and heartbeats for the verdict's vantage point (a
        replica that changed sites does not vouch for its old site's keys)."""
        self._members_of: dict[str, set[str]] = {}
        """Replica -> members it wrote a verdict on that is still held."""

    # Updates, each returning the members whose combined state changed -----------------------

    def set_verdict(self, member: str, vantage: str, written: Written | None) -> dict[str, State]:
        """A vantage point's verdict on a member was written (None: deleted)."""
        of_member = self.verdicts.setdefault(member, {})
        old = of_member.pop(vantage, None)
        if old is not None:
            self._forget(old.replica, member, of_member)
        if written is not None:
            of_member[vantage] = written
            self._members_of.setdefault(written.replica, set()).add(member)
        if not of_member:
            del self.verdicts[member]
        return self._recombine((member,))

    def heartbeat(
        self, replica: str, site: str, valid_for_seconds: float, now: float
    ) -> dict[str, State]:
        self.heartbeats[replica] = Heartbeat(site, now, valid_for_seconds)
        return self.expire(now)

    def replica_gone(self, replica: str, now: float) -> dict[str, State]:
        """The replica's heartbeat was deleted (it stopped, or its peers buried it)."""
        self.heartbeats.pop(replica, None)
        return self.expire(now)

    def expire(self, now: float) -> dict[str, State]:
        """Count replicas whose heartbeat ran out as silent; call it every so often."""
        live = frozenset(
            (replica, beat.site)
            for replica, beat in self.heartbeats.items()
            if now - beat.seen_at <= beat.valid_for_seconds
        )
        if live == self.live:
            return {}
        changed = live ^ self.live
        self.live = live
        affected: set[str] = set()
        for replica, _ in changed:
            affected |= self._members_of.get(replica, set())
        return self._recombine(affected)

    # Reading --------------------------------------------------------------------------------

    def verdicts_of(self, member: str) -> list[Verdict]:
        return [
            Verdict(vantage, written.state, (written.replica, vantage) in self.live)
            for vantage, written in sorted(self.verdicts.get(member, {}).items())
        ]

    def live_vantages(self) -> set[str]:
        return {site for _, site in self.live}

    def vantages(self) -> set[str]:
        """Every vantage point heard from: by heartbeat or by a verdict."""
        seen = {beat.site for beat in self.heartbeats.values()}
        for of_member in self.verdicts.values():
            seen.update(of_member)
        return seen

    def tally(self) -> Counter[tuple[str, HealthState, bool]]:
        """Verdicts per (vantage, state, fresh)."""
        counts: Counter[tuple[str, HealthState, bool]] = Counter()
        live = self.live
        for of_member in list(self.verdicts.values()):
            for vantage, written in list(of_member.items()):
                counts[(vantage, written.state, (written.replica, vantage) in live)] += 1
        return counts

    def outvoted(self) -> Iterator[str]:
        """Members answered although a fresh verdict says down: a vantage point lost its path
        to them, or they are on their way down."""
        live = self.live
        for member, of_member in list(self.verdicts.items()):
            if self.combined.get(member) is HealthState.DOWN:
                continue
            if any(
                w.state is HealthState.DOWN and (w.replica, vantage) in live
                for vantage, w in of_member.items()
            ):
                yield member

    # Inside ---------------------------------------------------------------------------------

    def _forget(self, replica: str, member: str, of_member: dict[str, Written]) -> None:
        if any(w.replica == replica for w in of_member.values()):
            return  # still the author of another vantage's verdict on it
        members = self._members_of.get(replica)
        if members is not None:
            members.discard(member)
            if not members:
                del self._members_of[replica]

    def _combine(self, of_member: dict[str, Written], previous: State) -> HealthState:
        """`combine` over one member's verdicts, without building them (a site that falls
        silent recombines every member it judged)."""
        live = self.live
        counted = downs = 0
        any_up = False
        for vantage, written in of_member.items():
            if (written.replica, vantage) in live:
                counted += 1
                downs += written.state is HealthState.DOWN
                any_up = any_up or written.state is HealthState.UP
        if not counted:
            if previous is not None:
                return previous
            states = [written.state for written in of_member.values()]
            counted, downs = len(states), states.count(HealthState.DOWN)
            any_up = HealthState.UP in states
        return decide(counted, downs, any_up, self.quorum)

    def _recombine(self, members: Iterable[str]) -> dict[str, State]:
        changes: dict[str, State] = {}
        for member in members:
            before = self.combined.get(member)
            if member not in self.verdicts:
                if before is not None:
                    del self.combined[member]
                    changes[member] = None
                continue
            after = self._combine(self.verdicts[member], before)
            if after is not before:
                self.combined[member] = after
                changes[member] = after
        return changes


def apply_heartbeat(
    book: HealthBook, key: str, value: bytes | None, now: float
) -> dict[str, State]:
    """A change of a health replica's heartbeat key (KV kgslb_leases, `health.<replica>`)
    applied to `book`: the replica heartbeats, or is gone (None). Raises ValueError
    (wire.WireError included) for a key or value that cannot be read."""
    try:
        replica = subjects.decode_token(key.split(".", 1)[1])
    except IndexError:
        raise ValueError(f"{key}: not a health replica's key") from None
    if value is None:
        return book.replica_gone(replica, now)
    beat = wire.decode(value, HealthHeartbeat)
    valid_for = (beat.expires_at - beat.heartbeat_at).total_seconds()
    return book.heartbeat(replica, beat.site, valid_for, now)


def apply_hold(held: set[str], key: str, value: bytes | None) -> str:
    """A change of a manualResume hold key (KV kgslb_leases, `hold.<member>`) applied to
    `held`, the member health keys held: created (held) or deleted (resumed). Returns the
    member; raises ValueError for a key that is not a hold key."""
    member = subjects.member_of_hold_key(key)
    if value is None:
        held.discard(member)
    else:
        held.add(member)
    return member
