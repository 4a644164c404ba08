"""Which members answer a query: pure decisions, no sockets.

Weighted round robin is *smooth* WRR (as in nginx): over every window of sum(weights)
consecutive picks each member appears exactly `weight` times, spread out rather than in runs.
Consistent hash is weighted rendezvous hashing on the client's masked address, so a client
subnet keeps its site while the member set is unchanged and only moves when its site leaves.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Sequence


def smooth_wrr_order(weights: Sequence[int]) -> list[int]:
    """Indices into `weights`, one full cycle of smooth weighted round robin."""
    total = sum(weights)
    current = [0] * len(weights)
    order: list[int] = []
    for _ in range(total):
        for index, weight in enumerate(weights):
            current[index] += weight
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        order.append(best)
    return order


def client_bucket(client_ip: str, mask_bits: int | None) -> bytes:
    """The client's address masked to its subnet (default /24 for v4, /56 for v6)."""
    address = ipaddress.ip_address(client_ip)
    default = 24 if address.version == 4 else 56
    bits = min(mask_bits if mask_bits is not None else default, address.max_prefixlen)
    network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
    return network.network_address.packed + bytes([bits])


def _unit_hash(key: bytes, member: str) -> float:
    digest = hashlib.blake2b(key + b"|" + member.encode(), digest_size=8).digest()
    # Map to (0, 1): never exactly 0 or 1, so the log below is finite and negative.
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def rendezvous_pick(key: bytes, members: Sequence[str], weights: Sequence[int]) -> int:
    """Weighted highest-random-weight: index of the member that owns `key`."""
    best_index = 0
    best_score = -math.inf
    for index, (member, weight) in enumerate(zip(members, weights, strict=True)):
        score = -weight / math.log(_unit_hash(key, member))
        if score > best_score:
            best_index, best_score = index, score
    return best_index


def distinct_from(order: Sequence[int], start: int, count: int) -> list[int]:
    """Up to `count` distinct indices, walking the cycle from `start` (for `answers: N`)."""
    chosen: list[int] = []
    for step in range(len(order)):
        index = order[(start + step) % len(order)]
        if index not in chosen:
            chosen.append(index)
            if len(chosen) == count:
                break
    return chosen
