"""Subject tokens and KV keys survive any Kubernetes name, context or address."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import subjects

TOKEN = re.compile(r"^[A-Za-z0-9_=-]+$")


@given(st.text())
def test_any_text_round_trips_through_a_token(value: str) -> None:
    token = subjects.encode_token(value)
    assert TOKEN.match(token)
    assert subjects.decode_token(token) == value


@given(st.text(), st.text())
def test_distinct_values_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert subjects.encode_token(a) != subjects.encode_token(b)


@pytest.mark.parametrize(
    "value",
    ["kubernetes-admin@kubernetes", "hello.avi.iberia.local", "2001:db8::1", "a/b", "*", ">", ""],
)
def test_awkward_names_make_one_token(value: str) -> None:
    token = subjects.encode_token(value)
    assert "." not in token and "*" not in token and ">" not in token and token
    assert subjects.decode_token(token) == value


def test_event_subject_has_exactly_six_tokens_whatever_the_names() -> None:
    subject = subjects.event_subject("kubernetes-admin@kubernetes", "Ingress", "a.b", "c.d.e")
    assert len(subject.split(".")) == 6


@given(st.lists(st.text(min_size=0, max_size=10), min_size=1, max_size=5))
def test_fqdn_keys_round_trip_and_stay_readable(labels: list[str]) -> None:
    fqdn = ".".join(label.lower() for label in labels)
    key = subjects.fqdn_key(fqdn)
    assert re.fullmatch(r"[-/_=.A-Za-z0-9]+", key)
    assert subjects.fqdn_from_key(key) == subjects.normalize_fqdn(fqdn)


def test_plain_dns_names_are_their_own_key() -> None:
    assert subjects.fqdn_key("Hello.AVI.iberia.local.") == "hello.avi.iberia.local"


def test_decode_rejects_tokens_it_could_not_have_made() -> None:
    with pytest.raises(ValueError):
        subjects.decode_token("a=ZZ")
    with pytest.raises(ValueError):
        subjects.decode_token("a.b")


@given(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["10.0.0.1", "2001:db8::1"]),
    st.text(max_size=20),
)
def test_a_vantage_points_health_key_names_member_and_site_whatever_they_are(
    fqdn: str, ip: str, site: str
) -> None:
    member = subjects.member_key(fqdn, ip)
    key = subjects.health_key(member, site)

    assert subjects.split_health_key(key) == (member, site)
    assert len(key.split(".")) == (3 if site else 2)


def test_a_health_key_without_site_is_the_member_key_as_before_sites() -> None:
    member = subjects.member_key("hello.avi.iberia.local", "10.10.25.46")
    assert subjects.health_key(member) == member == "hello=2Eavi=2Eiberia=2Elocal.10=2E10=2E25=2E46"
    assert subjects.health_key(member, "s1az1") == f"{member}.s1az1"


@pytest.mark.parametrize("bad", ["one", "a.b.c.d", "a.b.=", "a.b.=ZZ", ""])
def test_a_health_key_no_replica_writes_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        subjects.split_health_key(bad)


def test_each_site_watches_only_its_own_health_keys() -> None:
    assert subjects.health_keys_of_site("") == "*.*"
    assert subjects.health_keys_of_site("s1az1") == "*.*.s1az1"
    assert subjects.health_keys_of_site("user@ctx") == "*.*.user=40ctx"
