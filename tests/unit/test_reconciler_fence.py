"""What a fenced write carries (services/reconciler/fence.py), and that a fence key can never
be a name: no FQDN, zone or member key is one, and decoding one as a name fails loudly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.reconciler.fence import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    KV_OPERATION,
    WRITER,
    FenceKeyWrite,
    Term,
    condition_in_flight,
    fence_headers,
    fence_subject,
    refused_by_fence,
    retry_delays,
)
from shared import subjects

TERM = Term("kgslb_services", "reconciler-b", (42, 43, 47))


def test_a_put_of_a_term_expects_its_slots_fence_to_be_the_newest() -> None:
    assert TERM.subject("hello.avi.iberia.local") == "$KV.kgslb_services.hello.avi.iberia.local"
    assert TERM.headers(2) == {
        EXPECTED_LAST_SUBJECT_SEQUENCE: "47",
        EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: "$KV.kgslb_services._kgslb/fence/2",
        WRITER: "reconciler-b",
    }
    assert TERM.headers(0)[EXPECTED_LAST_SUBJECT_SEQUENCE] == "42"


def test_a_delete_of_a_term_is_a_fenced_delete_marker() -> None:
    assert TERM.headers(1, delete=True) == {**TERM.headers(1), KV_OPERATION: "DEL"}


def test_a_slot_outside_the_term_is_refused() -> None:
    with pytest.raises(ValueError, match=r"kgslb_services: fence slot 3 outside 0\.\.2"):
        TERM.headers(3)


def test_the_fence_is_a_delete_marker_conditional_on_the_fence_it_read() -> None:
    headers = fence_headers("reconciler-b", 7)

    assert headers == {
        KV_OPERATION: "DEL",
        EXPECTED_LAST_SUBJECT_SEQUENCE: "7",
        WRITER: "reconciler-b",
    }
    # On its own subject: no -Subject header, the condition is on the fence itself.
    assert EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT not in headers
    assert fence_headers("reconciler-b", 0)[EXPECTED_LAST_SUBJECT_SEQUENCE] == "0"


def test_a_negative_fence_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        fence_headers("reconciler-b", -1)


def test_a_term_needs_a_real_stream_sequence_in_every_slot() -> None:
    with pytest.raises(ValueError, match="reconciler-b in KV kgslb_zones: fence slot 1 has"):
        Term("kgslb_zones", "reconciler-b", (5, 0))
    with pytest.raises(ValueError, match="no fence slots"):
        Term("kgslb_zones", "reconciler-b", ())


def test_no_data_write_goes_to_the_fence_key() -> None:
    with pytest.raises(FenceKeyWrite, match="kgslb_services"):
        TERM.subject(subjects.fence_key(0))


def test_only_wrong_last_sequence_means_fenced_out() -> None:
    assert refused_by_fence(10071)
    assert not refused_by_fence(10164)  # unchecked: another write on the slot in flight
    assert not refused_by_fence(None)
    assert not refused_by_fence(10077)  # message size exceeds the maximum: a real error


def test_only_an_unchecked_refusal_is_retried() -> None:
    assert condition_in_flight(10164)
    assert not condition_in_flight(10071)
    assert not condition_in_flight(None)


def test_retries_double_up_to_a_cap() -> None:
    assert retry_delays(5, 0.01, 0.05) == [0.01, 0.02, 0.04, 0.05]
    assert retry_delays(1, 0.01, 0.05) == []


@pytest.mark.parametrize(("attempts", "first", "most"), [(0, 0.01, 1), (3, 0, 1), (3, 1, 0.5)])
def test_a_retry_that_cannot_work_is_refused(attempts: int, first: float, most: float) -> None:
    with pytest.raises(ValueError, match="retry of a conditional write"):
        retry_delays(attempts, first, most)


def test_the_fence_subjects_are_the_fence_keys_of_the_bucket() -> None:
    assert fence_subject("kgslb_zones", 7) == f"$KV.kgslb_zones.{subjects.fence_key(7)}"
    assert subjects.is_fence_key(subjects.fence_key(63))
    assert not subjects.is_fence_key("fence")


@given(st.text())
def test_no_fqdn_or_zone_key_is_the_fence_key(name: str) -> None:
    assert not subjects.is_fence_key(subjects.fqdn_key(name))


@given(st.text(), st.text())
def test_no_member_key_is_the_fence_key(fqdn: str, ip: str) -> None:
    assert not subjects.is_fence_key(subjects.member_key(fqdn, ip))


def test_the_fence_key_is_not_a_name_and_says_so() -> None:
    with pytest.raises(ValueError, match="cannot appear in an encoded token"):
        subjects.fqdn_from_key(subjects.fence_key(0))
    assert subjects.fqdn_key("_kgslb/fence/0") == "_kgslb=2Ffence=2F0"


@given(st.text(), st.text(), st.text())
def test_no_status_subject_is_the_status_fence(kind: str, namespace: str, name: str) -> None:
    assert not subjects.is_status_fence(subjects.status_subject(kind, namespace, name))
    assert not subjects.is_status_fence(subjects.cluster_status_subject(name))
    assert subjects.is_status_fence(subjects.STATUS_FENCE_SUBJECT)
