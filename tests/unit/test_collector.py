"""Long-lived state is moved out of the cyclic collector's generations as it accumulates and
whenever a load is complete, so that a collection never rescans a whole table."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shared.collector import LongLivedState


@pytest.fixture(autouse=True)
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_what_a_load_built_is_frozen_once_it_is_complete() -> None:
    gc.unfreeze()
    table = [{"name": f"n{index}"} for index in range(1000)]
    LongLivedState().settled()
    assert gc.get_freeze_count() >= len(table)


def test_state_is_frozen_every_so_many_changes_and_not_before() -> None:
    gc.unfreeze()
    state = LongLivedState(freeze_every=3)
    kept = []
    for index in range(2):
        kept.append({"change": index})
        state.changed()
    assert gc.get_freeze_count() == 0
    kept.append({"change": 2})
    state.changed()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    state.changed()
    state.changed()
    assert gc.get_freeze_count() == frozen  # the count starts again after each freeze


def test_replacing_every_name_of_a_dns_table_leaves_no_cyclic_garbage() -> None:
    """Frozen objects are only freed by reference counting: the DNS's table must not make
    reference cycles as names are replaced, or what was frozen would stay."""
    from services.dns.table import AnswerTable
    from shared import wire
    from shared.models import GslbService
    from tests.unit.test_dns_answers import service, zone_spec

    table = AnswerTable(udp_payload_limit=1232)
    table.set_zone(zone_spec())
    raw = wire.encode(service())

    def load(ttl: int) -> None:
        for index in range(2000):
            named = raw.replace(b"hello.avi", b"h%d.avi" % index)
            timed = named.replace(b'"ttlSeconds":30', b'"ttlSeconds":%d' % ttl)
            table.set_service(wire.decode(timed, GslbService))

    gc.collect()
    load(30)
    load(31)
    load(32)

    assert gc.collect() == 0


def test_changes_may_be_counted_in_batches() -> None:
    gc.unfreeze()
    state = LongLivedState(freeze_every=10)
    state.changed(9)
    assert gc.get_freeze_count() == 0
    kept = [{"change": index} for index in range(3)]
    state.changed(2)
    assert gc.get_freeze_count() >= len(kept)
