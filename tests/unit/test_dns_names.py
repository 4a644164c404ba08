"""A stored GSLB name that is not a DNS hostname (never planned: written by hand or by an
older reconciler) is refused where it would become wire format, and the table keeps answering
every other name."""

from __future__ import annotations

import dns.rcode

from shared.names import NameProblem
from tests.unit.test_dns_answers import HELLO, addresses, ask, seeded_engine, service

BAD = f"{'x' * 70}.avi.iberia.local"
OTHER = "www.avi.iberia.local"


def test_a_name_with_a_70_octet_label_is_refused_and_returned() -> None:
    engine = seeded_engine()

    refused = engine.table.set_service(service(BAD))

    assert refused is not None and refused.problem == NameProblem.LABEL_TOO_LONG
    assert addresses(ask(engine, HELLO)), "the names already there keep being answered"


def test_names_set_after_a_refused_one_are_answered() -> None:
    engine = seeded_engine()
    engine.table.set_service(service(BAD))

    assert engine.table.set_service(service(OTHER)) is None

    assert addresses(ask(engine, OTHER))


def test_removing_a_refused_name_is_a_no_op() -> None:
    engine = seeded_engine()
    engine.table.set_service(service(BAD))
    generation = engine.table.generation

    engine.table.remove_service(BAD, revision=9)

    assert engine.table.generation == generation
    assert addresses(ask(engine, HELLO))


def test_an_underscore_name_is_not_answered() -> None:
    engine = seeded_engine()

    assert engine.table.set_service(service("_x.avi.iberia.local")) is not None

    assert ask(engine, "_x.avi.iberia.local").rcode() == dns.rcode.NXDOMAIN
