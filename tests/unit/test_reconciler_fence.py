"""What a fenced write carries (services/reconciler/fence.py), and that the fence key can never
be a name: no FQDN, zone or member key is it, and decoding it as one fails loudly."""

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
    fence_headers,
    fence_subject,
    refused_by_fence,
)
from shared import subjects

TERM = Term("kgslb_services", "reconciler-b", 42)


def test_a_put_of_a_term_expects_its_fence_to_be_the_newest() -> None:
    assert TERM.subject("hello.avi.iberia.local") == "$KV.kgslb_services.hello.avi.iberia.local"
    assert TERM.headers() == {
        EXPECTED_LAST_SUBJECT_SEQUENCE: "42",
        EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: "$KV.kgslb_services._kgslb/fence",
        WRITER: "reconciler-b",
    }


def test_a_delete_of_a_term_is_a_fenced_delete_marker() -> None:
    assert TERM.headers(delete=True) == {**TERM.headers(), KV_OPERATION: "DEL"}


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


def test_a_term_needs_a_real_stream_sequence() -> None:
    with pytest.raises(ValueError, match="reconciler-b in KV kgslb_zones: fence sequence 0"):
        Term("kgslb_zones", "reconciler-b", 0)


def test_no_data_write_goes_to_the_fence_key() -> None:
    with pytest.raises(FenceKeyWrite, match="kgslb_services"):
        TERM.subject(subjects.FENCE_KEY)


def test_only_wrong_last_sequence_means_fenced_out() -> None:
    assert refused_by_fence(10071)
    assert not refused_by_fence(None)
    assert not refused_by_fence(10077)  # message size exceeds the maximum: a real error


def test_the_fence_subject_is_the_fence_key_of_the_bucket() -> None:
    assert fence_subject("kgslb_zones") == f"$KV.kgslb_zones.{subjects.FENCE_KEY}"
    assert subjects.is_fence_key(subjects.FENCE_KEY)
    assert not subjects.is_fence_key("fence")


@given(st.text())
def test_no_fqdn_or_zone_key_is_the_fence_key(name: str) -> None:
    assert not subjects.is_fence_key(subjects.fqdn_key(name))


@given(st.text(), st.text())
def test_no_member_key_is_the_fence_key(fqdn: str, ip: str) -> None:
    assert not subjects.is_fence_key(subjects.member_key(fqdn, ip))


def test_the_fence_key_is_not_a_name_and_says_so() -> None:
    with pytest.raises(ValueError, match="cannot appear in an encoded token"):
        subjects.fqdn_from_key(subjects.FENCE_KEY)
    assert subjects.fqdn_key("_kgslb/fence") == "_kgslb=2Ffence"
