"""The members one GSLB name may answer for one address family, pre-rendered: one smooth-WRR
cycle with every position's answer records as wire bytes, the shared round-robin turn, and
the answer counts read from it at scrape time. Algorithms pick positions in a rotation; they
never render."""

from __future__ import annotations

import functools
import ipaddress
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from services.dns import wire
from services.dns.selection import distinct_from, smooth_wrr_order
from services.dns.zone import record_tail


class Target(NamedTuple):
    """A member as the DNS needs it: what to answer, where it runs, and its health key."""

    ip: str
    cluster: str
    weight: int
    health_key: str


def family_matches(ip: str, qtype: int) -> bool:
    return (":" not in ip) == (qtype == wire.A)


@dataclass(frozen=True, slots=True)
class Cycle:
    """One smooth-WRR cycle for a weight vector and answer count: which members answer at
    each position. Shared by every name with the same weights (most names have a few)."""

    order: tuple[int, ...]
    chosen: tuple[tuple[int, ...], ...]
    first_position: dict[int, int]


@functools.lru_cache(maxsize=65536)
def address_tail(qtype: int, ttl: int, ip: str) -> bytes:
    """An A/AAAA record of `ip` without its owner name. Cached: a name is rebuilt at every
    change and health verdict of its members, and the same VIPs (AKO shares one per cluster)
    recur across names; parsing the address was a tenth of a cold start's DNS CPU."""
    return record_tail(qtype, ttl, ipaddress.ip_address(ip).packed)


@functools.lru_cache(maxsize=4096)
def cycle_for(weights: tuple[int, ...], answers: int) -> Cycle:
    order = tuple(smooth_wrr_order(weights))
    interned: dict[tuple[int, ...], tuple[int, ...]] = {}
    chosen = tuple(
        interned.setdefault(c, c)
        for c in (tuple(distinct_from(order, p, answers)) for p in range(len(order)))
    )
    return Cycle(order, chosen, {index: order.index(index) for index in set(order)})


class Rotation:
    """What one GSLB name answers for one address family under the current health: the
    members of the best priority group in one smooth-WRR cycle, with every position's answer
    records rendered once. `next_position` is the shared round-robin turn."""

    __slots__ = ("_turns", "count", "cycle", "members", "next_position", "picks", "qtype",
                 "records", "tails")  # fmt: skip

    def __init__(self, members: list[Target], qtype: int, ttl: int, answers: int) -> None:
        self.members = tuple(members)
        self.qtype = qtype
        self.count = min(answers, len(members))
        self.cycle = cycle_for(tuple(m.weight for m in members), self.count)
        self.tails = tuple(address_tail(qtype, ttl, m.ip) for m in members)
        records: dict[tuple[int, ...], bytes] = {}
        for chosen in self.cycle.chosen:
            if chosen not in records:
                records[chosen] = b"".join(
                    wire.QUESTION_NAME_POINTER + self.tails[i] for i in chosen
                )
        self.records = [records[chosen] for chosen in self.cycle.chosen]
        """Per cycle position, the answer records under the question pointer (shared bytes)."""
        # The turn counter is the only per-query state: position = turns mod cycle length,
        # so how often each position (and so each member) was answered follows from one
        # integer, read at scrape time instead of counted per query. map + count stay in C.
        self._turns = itertools.count()
        self.next_position: Callable[[], int] = map(
            len(self.cycle.order).__rmod__, self._turns
        ).__next__
        self.picks: list[int] | None = None
        """Per position, answers picked for a client (consistent hash) instead of a turn."""

    @property
    def turns(self) -> int:
        """Round-robin turns taken so far (itertools.count shows its value only in repr)."""
        return int(repr(self._turns)[6:-1])

    def count_pick(self, position: int) -> int:
        if self.picks is None:
            self.picks = [0] * len(self.cycle.order)
        self.picks[position] += 1
        return position

    def answers_by_member(self) -> Counter[Target]:
        """How many answers each member was in: every turn so far (a whole number of cycles
        and the first positions of the next) and every picked position."""
        chosen = self.cycle.chosen
        turns = self.turns
        full_cycles, partial = divmod(turns, len(chosen))
        per_position = [full_cycles + (1 if p < partial else 0) for p in range(len(chosen))]
        if self.picks is not None:
            per_position = [t + p for t, p in zip(per_position, self.picks, strict=True)]
        counts: Counter[Target] = Counter()
        for position, times in enumerate(per_position):
            if times:
                for index in chosen[position]:
                    counts[self.members[index]] += times
        return counts

    def chosen(self, position: int) -> tuple[Target, ...]:
        return tuple(self.members[i] for i in self.cycle.chosen[position])

    def position_led_by(self, member_index: int) -> int:
        """The first cycle position whose answer starts with this member."""
        return self.cycle.first_position[member_index]

    def render(self, position: int, owner: bytes) -> bytes:
        if owner == wire.QUESTION_NAME_POINTER:
            return self.records[position]
        return b"".join(owner + self.tails[i] for i in self.cycle.chosen[position])
