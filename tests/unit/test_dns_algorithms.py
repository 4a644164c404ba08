"""The GSLB decision as a pure function of (the name under the current health, the client):
which rotation answers, the ECS scope to echo and how the response may be cached, per
algorithm and per kind of client. No packets: `decide` is called directly."""

from __future__ import annotations

import pytest

from services.dns import wire
from services.dns.algorithms import ALGORITHMS, Caching, Client
from services.dns.gslb import GslbName, NameSpec, decide
from shared.models import Algorithm, GslbService, Member, PriorityGroup, TopologyEntry

SEED = (("127.10.25.46", "s1az1", 6), ("127.10.26.40", "s1az2", 4), ("127.10.23.40", "s2", 2))
S2_IP = "127.10.23.40"
FROM_SUBNET = Client("10.1.2.0", 24)
"""A client known by its ECS subnet, which topology maps to s2."""
FROM_SOURCE = Client("10.1.2.7")
"""A client known only by the source address of its query, also in s2's subnet."""
UNKNOWN = Client("")


def name(algorithm: Algorithm, **overrides: object) -> GslbName:
    group = PriorityGroup(
        priority=10, members=[Member(ip=ip, cluster=c, weight=w) for ip, c, w in SEED]
    )
    service = GslbService(
        fqdn="hello.avi.iberia.local",
        ttl_seconds=30,
        groups=[group],
        algorithm=algorithm,
        topology=[TopologyEntry(client_subnet="10.1.2.0/24", site="s2")],
        **overrides,  # type: ignore[arg-type]
    )
    return GslbName(NameSpec.of(service, {}), {})


def test_every_algorithm_the_model_allows_has_an_implementation() -> None:
    assert set(ALGORITHMS) == set(Algorithm)


@pytest.mark.parametrize(
    ("subnet", "source", "expected"),
    [
        (wire.ClientSubnet(1, 24, bytes([10, 1, 2])), "192.0.2.53", FROM_SUBNET),
        (wire.ClientSubnet(1, 0, b""), "192.0.2.53", Client("192.0.2.53")),
        (None, "192.0.2.53", Client("192.0.2.53")),
    ],
    ids=["ECS: its subnet", "ECS /0: no client information", "no ECS: the source"],
)
def test_the_client_is_the_ecs_subnet_else_the_source_address(
    subnet: wire.ClientSubnet | None, source: str, expected: Client
) -> None:
    assert Client.of(subnet, source) == expected


@pytest.mark.parametrize(
    ("algorithm", "client", "picked", "scope", "caching"),
    [
        (Algorithm.ROUND_ROBIN, FROM_SUBNET, False, 0, Caching.TURNS),
        (Algorithm.ROUND_ROBIN, FROM_SOURCE, False, 0, Caching.TURNS),
        (Algorithm.CONSISTENT_HASH, FROM_SUBNET, True, 24, Caching.FIXED),
        (Algorithm.CONSISTENT_HASH, FROM_SOURCE, True, 0, Caching.NEVER),
        (Algorithm.CONSISTENT_HASH, UNKNOWN, False, 0, Caching.NEVER),
        (Algorithm.TOPOLOGY, FROM_SUBNET, False, 24, Caching.TURNS),
        (Algorithm.TOPOLOGY, FROM_SOURCE, False, 0, Caching.NEVER),
    ],
    ids=[
        "RoundRobin, ECS: a turn, scope 0, one cached response per turn",
        "RoundRobin, source: the same",
        "ConsistentHash, ECS: the subnet's member, scope = mask, cached as is",
        "ConsistentHash, source: the source's member, scope 0, never cached",
        "ConsistentHash, no address: a turn, never cached",
        "Topology, ECS: a turn in the site, scope = source length, cached per turn",
        "Topology, source: a turn in the site, scope 0, never cached",
    ],
)
def test_what_each_algorithm_decides_for_each_kind_of_client(
    algorithm: Algorithm, client: Client, picked: bool, scope: int, caching: Caching
) -> None:
    pick = decide(name(algorithm), wire.A, client)

    assert pick is not None
    assert (pick.client_position is not None, pick.ecs_scope, pick.caching) == (
        picked,
        scope,
        caching,
    )


def test_topology_answers_from_the_rotation_of_the_clients_site() -> None:
    pick = decide(name(Algorithm.TOPOLOGY), wire.A, FROM_SOURCE)

    assert pick is not None
    assert [m.ip for m in pick.rotation.members] == [S2_IP]


def test_topology_with_a_consistent_hash_fallback_picks_for_an_unmapped_subnet() -> None:
    topology = name(Algorithm.TOPOLOGY, fallback_algorithm=Algorithm.CONSISTENT_HASH)

    pick = decide(topology, wire.A, Client("198.51.100.0", 22))

    assert pick is not None
    assert (pick.client_position is not None, pick.ecs_scope, pick.caching) == (
        True,
        22,
        Caching.FIXED,
    )


def test_a_decision_takes_no_turn() -> None:
    round_robin = name(Algorithm.ROUND_ROBIN)
    rotation = round_robin.rotation(wire.A)
    assert rotation is not None

    for _ in range(5):
        decide(round_robin, wire.A, FROM_SOURCE)

    assert rotation.turns == 0


def test_a_name_without_members_of_the_family_decides_nothing() -> None:
    assert decide(name(Algorithm.ROUND_ROBIN), wire.AAAA, FROM_SOURCE) is None
