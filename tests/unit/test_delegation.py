"""Automatic delegation, the pure decisions: what the parent must hold for a zone (NS, glue of
the name servers inside it, DS when the zone has one), what it holds (read from real DNS
messages), and the RFC 2136 update between the two, which never names anything outside the
zone's cut."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import dns.message
import dns.rrset
import pytest
from pydantic import ValidationError

from services.reconciler.delegation import (
    NotOwned,
    RRset,
    delegation_problem,
    held,
    parent_of,
    update_for,
    wanted,
)
from services.reconciler.delegation_keeper import DelegationKeeper
from services.reconciler.lease import Leadership
from services.reconciler.settings import ReconcilerSettings
from services.reconciler.validation import validate
from shared.models import (
    DelegationState,
    DelegationStatus,
    NameServer,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    SoaSpec,
)
from shared.policies import DelegationSpec, ZoneConfig

ZONE = "avi.iberia.local"
PARENT = "iberia.local"
DS_TEXT = "12345 13 2 " + "ab" * 32
"""As the parent writes it back: hex digits in lower case."""
SPEC: dict[str, Any] = {
    "primary": "127.0.0.1:5353",
    "tsigKey": {"name": "kgslb", "secretRef": {"name": "parent-tsig"}},
}


def zone_config(*servers: tuple[str, list[str]]) -> ZoneConfig:
    return ZoneConfig(
        name=ZONE,
        soa=SoaSpec(mname=f"g-dns.{PARENT}.", rname=f"hostmaster.{PARENT}."),
        nameservers=[NameServer(name=name, glue=glue) for name, glue in servers],
        delegation=DelegationSpec.model_validate(SPEC),
    )


TWO = zone_config(
    (f"ns-s1.{ZONE}.", ["127.0.0.11", "::1"]),
    (f"ns-s2.{ZONE}", ["127.0.0.12"]),
    (f"g-dns.{PARENT}.", ["127.0.0.1"]),
)
"""Two name servers inside the zone (one with an IPv6 glue too), one in the parent."""


def referral(*lines: str) -> dns.message.Message:
    """The parent's reply to `avi.iberia.local NS`: NS in authority, glue in additional."""
    message = dns.message.make_response(dns.message.make_query(f"{ZONE}.", "NS"))
    for line in lines:
        name, ttl, rdtype, *rdatas = line.split()
        rrset = dns.rrset.from_text(name, int(ttl), "IN", rdtype, *rdatas)
        section = message.authority if rdtype == "NS" else message.additional
        section.append(rrset)
    return message


def test_the_parent_must_hold_the_ns_set_and_the_glue_of_the_servers_inside_the_zone() -> None:
    assert wanted(TWO, 300, None) == {
        (ZONE, "NS"): RRset(
            300, frozenset({f"ns-s1.{ZONE}.", f"ns-s2.{ZONE}.", f"g-dns.{PARENT}."})
        ),
        (f"ns-s1.{ZONE}", "A"): RRset(300, frozenset({"127.0.0.11"})),
        (f"ns-s1.{ZONE}", "AAAA"): RRset(300, frozenset({"::1"})),
        (f"ns-s2.{ZONE}", "A"): RRset(300, frozenset({"127.0.0.12"})),
    }  # g-dns.iberia.local is a name of the parent: no glue written for it


def test_a_zone_with_a_ds_asks_for_it_too() -> None:
    records = wanted(TWO, 300, [DS_TEXT.upper()])
    assert records[(ZONE, "DS")] == RRset(300, frozenset({DS_TEXT}))


def test_what_the_parent_holds_is_read_from_its_referral_keeping_only_the_zones_names() -> None:
    reply = referral(
        f"{ZONE}. 300 NS ns-s1.{ZONE}. g-dns.{PARENT}.",
        f"ns-s1.{ZONE}. 300 A 127.0.0.11",
        f"g-dns.{PARENT}. 3600 A 127.0.0.1",
        f"deeper.{ZONE}. 300 NS ns.elsewhere.",
    )
    assert held(reply, None, ZONE) == {
        (ZONE, "NS"): RRset(300, frozenset({f"ns-s1.{ZONE}.", f"g-dns.{PARENT}."})),
        (f"ns-s1.{ZONE}", "A"): RRset(300, frozenset({"127.0.0.11"})),
    }


def test_a_parent_that_holds_it_all_needs_no_update() -> None:
    want = wanted(TWO, 300, None)
    assert update_for(ZONE, PARENT, want, dict(want), manage_ds=False) is None


def test_a_first_delegation_adds_every_record() -> None:
    want = wanted(TWO, 300, None)
    update = update_for(ZONE, PARENT, want, {}, manage_ds=False)
    assert update is not None and update.parent == PARENT
    assert (ZONE, "NS", 300, f"g-dns.{PARENT}.") in update.adds
    assert len(update.adds) == 6  # 3 NS, 2 A, 1 AAAA


def test_a_changed_ns_set_replaces_the_ns_rrset_and_drops_the_old_servers_glue() -> None:
    have = held(
        referral(
            f"{ZONE}. 300 NS ns-s1.{ZONE}. ns-old.{ZONE}.",
            f"ns-s1.{ZONE}. 300 A 127.0.0.11",
            f"ns-old.{ZONE}. 300 A 127.0.0.99",
        ),
        None,
        ZONE,
    )
    want = wanted(zone_config((f"ns-s1.{ZONE}.", ["127.0.0.11"])), 300, None)
    update = update_for(ZONE, PARENT, want, have, manage_ds=False)
    assert update is not None
    assert set(update.deletes) == {(ZONE, "NS"), (f"ns-old.{ZONE}", "A")}
    assert update.adds == ((ZONE, "NS", 300, f"ns-s1.{ZONE}."),)


def test_a_ttl_change_rewrites_the_rrset() -> None:
    want = wanted(TWO, 600, None)
    update = update_for(ZONE, PARENT, want, wanted(TWO, 300, None), manage_ds=False)
    assert update is not None and {ttl for _, _, ttl, _ in update.adds} == {600}


def test_without_a_ds_to_publish_the_parents_ds_is_left_alone() -> None:
    want = wanted(TWO, 300, None)
    have = {**want, (ZONE, "DS"): RRset(300, frozenset({DS_TEXT}))}
    assert update_for(ZONE, PARENT, want, have, manage_ds=False) is None
    # With a DS to publish, a stale one is replaced.
    fresh = "54321 13 2 " + "cd" * 32
    want_ds = wanted(TWO, 300, [fresh])
    update = update_for(ZONE, PARENT, want_ds, have, manage_ds=True)
    assert update is not None
    assert update.deletes == ((ZONE, "DS"),) and update.adds == ((ZONE, "DS", 300, fresh),)


def test_an_update_never_names_anything_outside_the_zones_cut() -> None:
    outside = {(f"www.{PARENT}", "A"): RRset(300, frozenset({"127.0.0.9"}))}
    with pytest.raises(NotOwned, match=f"www.{PARENT} is outside {ZONE}"):
        update_for(ZONE, PARENT, {}, outside, manage_ds=False)
    with pytest.raises(NotOwned):
        update_for(ZONE, PARENT, outside, {}, manage_ds=False)
    # A sibling that shares the suffix is outside too.
    sibling = {(f"xavi.{PARENT}", "NS"): RRset(300, frozenset({"ns.x."}))}
    with pytest.raises(NotOwned):
        update_for(ZONE, PARENT, sibling, {}, manage_ds=False)


def test_the_parent_is_the_zone_without_its_first_label_unless_named() -> None:
    spec = DelegationSpec.model_validate(SPEC)
    assert parent_of(ZONE, spec) == PARENT
    assert delegation_problem(ZONE, spec) == ""
    named = DelegationSpec.model_validate({**SPEC, "parentZone": "local"})
    assert parent_of(ZONE, named) == "local" and delegation_problem(ZONE, named) == ""
    wrong = DelegationSpec.model_validate({**SPEC, "parentZone": "example.com"})
    assert (
        delegation_problem(ZONE, wrong)
        == "parentZone 'example.com' is not a parent of avi.iberia.local"
    )


@pytest.mark.parametrize(
    ("primary", "normal"),
    [
        ("127.0.0.1", "127.0.0.1:53"),
        ("127.0.0.1:5353", "127.0.0.1:5353"),
        ("[::1]:5353", "[::1]:5353"),
        ("::1", "[::1]:53"),
        ("dns1.iberia.local", "dns1.iberia.local:53"),
    ],
)
def test_the_primary_is_host_and_port(primary: str, normal: str) -> None:
    assert DelegationSpec.model_validate({**SPEC, "primary": primary}).primary == normal


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("primary", "127.0.0.1:0", "port '0' is not 1-65535"),
        ("primary", "a..b:53", "is not host, host:port or [IPv6]:port"),
        ("primary", "[::g]:53", "'::g' is not an IPv6 address"),
        (
            "tsigKey",
            {"name": "k", "algorithm": "hmac-sha999", "secretRef": {"name": "s"}},
            "hmac-sha256",
        ),
        (
            "tsigKey",
            {"name": "k", "secretRef": {"name": "Bad_Name"}},
            "String should match pattern",
        ),
        ("tsigKey", {"name": "k"}, "secretRef"),
        ("ttlSeconds", -1, "greater than or equal to 0"),
    ],
)
def test_a_bad_delegation_setting_is_refused_naming_the_problem(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(")):
        DelegationSpec.model_validate({**SPEC, field: value})


def test_a_new_leader_keeps_the_last_published_result_until_its_own_first_check() -> None:
    ref = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
    spec = {
        "zones": [
            TWO.model_dump(mode="json", by_alias=True, exclude_none=True),
            {"name": "old.iberia.local", "soa": {"mname": "a.", "rname": "b."}},
        ]
    }
    planner = SimpleNamespace(policies=validate({ref: PolicyObject(ref=ref, spec=spec)}, {}))
    keeper = DelegationKeeper(
        Leadership("r1", 5.0), planner, ReconcilerSettings(), changed=lambda: None
    )
    fresh = PolicyStatus(
        ref=ref, state=PolicyState.ACCEPTED, message="active GSLBConfig", observed_generation=1
    )
    since = datetime(2026, 12, 7, tzinfo=UTC)
    entries = [
        DelegationStatus(
            zone=zone,
            parent=PARENT,
            server="127.0.0.1:5353",
            state=DelegationState.DELEGATED,
            message="held",
            since=since,
        )
        for zone in (ZONE, "old.iberia.local")
    ]
    published = {ref: fresh.model_copy(update={"delegation": entries})}
    shown = keeper.with_results({ref: fresh}, published)[ref].delegation
    # The zone still delegated keeps its entry; one whose delegation is gone loses it.
    assert [entry.zone for entry in shown] == [ZONE]
    assert keeper.with_results({ref: fresh}, {})[ref].delegation == []
