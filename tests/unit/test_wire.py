"""Versioned envelopes: what decodes, and the reason given for what does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared import wire
from shared.models import (
    HealthHeartbeat,
    MemberHealth,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    Tombstone,
)

REF = ObjectRef(cluster="s1az1", kind=ObjectKind.INGRESS, namespace="default", name="hello")


def test_a_message_round_trips_with_kind_and_version() -> None:
    message = ObservedObject(ref=REF, resource_version="7", vips=["127.10.25.46"])
    raw = wire.encode(message)
    envelope = json.loads(raw)
    assert envelope["schema_version"] == 1 and envelope["kind"] == "ObservedObject"
    assert wire.decode(raw, ObservedObject) == message


def test_decode_any_picks_the_model_by_kind() -> None:
    raw = wire.encode(Tombstone(ref=REF))
    assert isinstance(wire.decode_any(raw, (ObservedObject, Tombstone)), Tombstone)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"schema_version": 2, "kind": "Tombstone", "data": {}}', "schema_version 2"),
        (b'{"schema_version": 1, "kind": "Nope", "data": {}}', "not expected here"),
        (
            json.dumps(
                {"schema_version": 1, "kind": "Tombstone", "data": {"ref": {}, "extra": 1}}
            ).encode(),
            "invalid Tombstone",
        ),
    ],
)
def test_bad_messages_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.decode_any(raw, (ObservedObject, Tombstone))


AT = {"observedAt": "2026-12-07T19:00:00Z"}  # else each decode stamps its own "now"


@pytest.mark.parametrize(
    "data",
    [
        # As encoded; with camelCase keys and snake_case names (populate_by_name); with IPv6 to
        # normalise; with a timestamp in another offset; and an extra envelope key.
        {"ref": REF.model_dump(mode="json"), "resourceVersion": "7", "vips": ["127.10.25.46"]} | AT,
        {"ref": REF.model_dump(mode="json"), "resource_version": "7", "tls_hosts": ["a.b"]} | AT,
        {"ref": REF.model_dump(mode="json"), "resourceVersion": "1", "vips": ["2001:DB8:0::1"]}
        | AT,
        {
            "ref": REF.model_dump(mode="json"),
            "resourceVersion": "1",
            "observedAt": "2026-12-07T20:00:00+01:00",
        },
    ],
)
@pytest.mark.parametrize("extra_envelope_key", [False, True])
def test_the_one_pass_decoder_reads_what_the_two_step_one_reads(
    data: dict[str, object], extra_envelope_key: bool
) -> None:
    envelope: dict[str, object] = {"schema_version": 1, "kind": "ObservedObject", "data": data}
    if extra_envelope_key:
        envelope["trace"] = "abc"
    raw = json.dumps(envelope).encode()
    one_pass = wire._fast(raw, (ObservedObject, Tombstone))
    assert one_pass is not None
    assert one_pass == wire._validate(ObservedObject, data)
    assert wire.decode_any(raw, (ObservedObject, Tombstone)) == one_pass
    assert wire.decode(raw, ObservedObject) == one_pass


def test_what_the_one_pass_decoder_refuses_the_two_step_one_explains() -> None:
    raw = b'{"schema_version": 1, "kind": "Tombstone", "data": {"ref": {}}}'
    assert wire._fast(raw, (Tombstone,)) is None
    with pytest.raises(wire.WireError, match=r"invalid Tombstone: ref\.cluster: Field required"):
        wire.decode(raw, Tombstone)


def test_ipv6_vips_are_normalised_so_members_deduplicate() -> None:
    message = ObservedObject(ref=REF, resource_version="1", vips=["2001:DB8:0::1"])
    assert message.vips == ["2001:db8::1"]


def test_health_without_sites_is_written_as_before_sites_so_older_readers_accept_it() -> None:
    """Readers refuse unknown fields: a replica without `--site` leaves `site` out."""
    now = datetime.now(UTC)
    record = MemberHealth(fqdn="a.test", ip="10.0.0.1", cluster="c", state="up", since=now)
    beat = HealthHeartbeat(replica="r", heartbeat_at=now, expires_at=now)
    for message in (record, beat):
        assert b'"site"' not in wire.encode(message)
        sited = message.model_copy(update={"site": "s1"})
        assert b'"site":"s1"' in wire.encode(sited)
        assert wire.decode(wire.encode(sited), type(message)) == sited


def test_the_envelope_holds_the_same_json_as_the_model_dumped_and_non_ascii_text_round_trips() -> (
    None
):
    now = datetime.now(UTC)
    record = MemberHealth(
        fqdn="a.test", ip="10.0.0.1", cluster="c", state="down", since=now,
        last_error="GET / → 503 «Service indisponible» 服务不可用",
    )  # fmt: skip
    raw = wire.encode(record)
    assert json.loads(raw) == {
        "schema_version": wire.SCHEMA_VERSION,
        "kind": "MemberHealth",
        "data": record.model_dump(mode="json", by_alias=True),
    }
    assert wire.decode(raw, MemberHealth) == record
    assert wire.decode(wire.encode(record, compress_over_bytes=10), MemberHealth) == record
