"""Per-second budgets on the answer path: response rate limiting and query-log throttling.

Response rate limiting works as in BIND, NSD and Knot: each client network (/24 for IPv4,
/56 for IPv6 by default) may receive `responses_per_second` UDP responses per second; past
that, responses are dropped, except every `slip`-th one, which is sent as an empty truncated
reply so that a real client behind a spoofed-source flood retries over TCP (never limited).
"""

from __future__ import annotations

from enum import IntEnum


class Verdict(IntEnum):
    SEND = 0
    DROP = 1
    SLIP = 2


def prefix_key(packed: bytes, prefix_length: int) -> bytes:
    """A client's network as a dictionary key: its address truncated to the prefix, tagged
    with the family (by the address length) so that v4 and v6 networks never collide."""
    whole, bits = divmod(min(prefix_length, len(packed) * 8), 8)
    key = bytes((len(packed),)) + packed[:whole]
    if bits:
        key += bytes((packed[whole] & (0xFF << (8 - bits)) & 0xFF,))
    return key


class ResponseRateLimiter:
    def __init__(
        self,
        responses_per_second: int,
        slip: int = 2,
        ipv4_prefix_length: int = 24,
        ipv6_prefix_length: int = 56,
    ) -> None:
        self.responses_per_second = responses_per_second
        self.slip = slip
        self.ipv4_prefix_length = ipv4_prefix_length
        self.ipv6_prefix_length = ipv6_prefix_length
        self.enabled = responses_per_second > 0
        self.dropped = 0
        self.slipped = 0
        self._second = -1
        self._sent: dict[bytes, int] = {}

    def key(self, packed: bytes) -> bytes:
        bits = self.ipv4_prefix_length if len(packed) == 4 else self.ipv6_prefix_length
        return prefix_key(packed, bits)

    def decide(self, key: bytes, second: int) -> Verdict:
        """Count one response to the network `key` in wall-clock second `second`."""
        if second != self._second:
            # Only the current second matters: the table never outgrows one second's clients.
            self._second = second
            self._sent.clear()
        sent = self._sent.get(key, 0) + 1
        self._sent[key] = sent
        excess = sent - self.responses_per_second
        if excess <= 0:
            return Verdict.SEND
        if self.slip and excess % self.slip == 0:
            self.slipped += 1
            return Verdict.SLIP
        self.dropped += 1
        return Verdict.DROP


class LogThrottle:
    """At most `per_second` query-log records per second; 0 means every query (the seed's
    'no throttle'). `open` is what the answer path reads, so it costs one attribute load."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.used = 0
        self.open = True

    def new_second(self) -> None:
        self.used = 0
        self.open = True

    def take(self) -> bool:
        if self.per_second == 0:
            return True
        if self.used >= self.per_second:
            self.open = False
            return False
        self.used += 1
        if self.used >= self.per_second:
            self.open = False
        return True


class ClientQueryBudget:
    """At most `per_second` TCP queries per client network per second (0: no limit).

    Unlike RRL this never drops or truncates: a TCP client's address was verified by the
    handshake, so there is no reflection to dampen and no reason to send it to another
    transport. A client over its budget is simply read no further until the next second.
    """

    def __init__(
        self, per_second: int, ipv4_prefix_length: int = 24, ipv6_prefix_length: int = 56
    ) -> None:
        self.per_second = per_second
        self.ipv4_prefix_length = ipv4_prefix_length
        self.ipv6_prefix_length = ipv6_prefix_length
        self.enabled = per_second > 0
        self._second = -1
        self._used: dict[bytes, int] = {}

    def key(self, packed: bytes) -> bytes:
        bits = self.ipv4_prefix_length if len(packed) == 4 else self.ipv6_prefix_length
        return prefix_key(packed, bits)

    def take(self, key: bytes, second: int) -> bool:
        """Spend one query of network `key` in second `second`; False when none is left."""
        if second != self._second:
            self._second = second
            self._used.clear()
        used = self._used.get(key, 0)
        if used >= self.per_second:
            return False
        self._used[key] = used + 1
        return True
