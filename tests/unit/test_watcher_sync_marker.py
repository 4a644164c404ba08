"""A sync marker of a big cluster fits one NATS message: large messages travel compressed,
and every consumer decodes them through `shared.wire` unchanged."""

from __future__ import annotations

import gzip
import json

import pytest

from services.watcher.publisher import COMPRESS_OVER_BYTES
from shared import wire
from shared.models import ObjectKind, SyncMarker, Tombstone

NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024


def marker(count: int, namespace: str, name: str) -> SyncMarker:
    present = [f"Ingress/{namespace}/{name}-{index:05d}" for index in range(count)]
    return SyncMarker(cluster="s1az1", kinds=list(ObjectKind), present=present)


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("default", "hello"), ("n" * 63, "x" * 240)],
    ids=["short-names", "longest-names"],
)
def test_ten_thousand_objects_fit_in_one_message_and_decode_unchanged(
    namespace: str, name: str
) -> None:
    big = marker(10_000, namespace, name)
    raw = wire.encode(big, compress_over_bytes=COMPRESS_OVER_BYTES)
    assert len(raw) < NATS_DEFAULT_MAX_PAYLOAD
    assert raw[:2] == wire.GZIP_MAGIC
    assert wire.decode(raw, SyncMarker) == big


def test_small_messages_stay_plain_json() -> None:
    raw = wire.encode(marker(3, "default", "hello"), compress_over_bytes=COMPRESS_OVER_BYTES)
    assert json.loads(raw)["kind"] == "SyncMarker"


def test_a_compressed_message_of_the_wrong_kind_is_refused_like_a_plain_one() -> None:
    raw = gzip.compress(wire.encode(marker(1, "default", "hello")))
    with pytest.raises(wire.WireError, match="expected kind Tombstone"):
        wire.decode(raw, Tombstone)


def test_truncated_gzip_is_a_wire_error() -> None:
    raw = gzip.compress(wire.encode(marker(100, "default", "hello")))
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decode(raw[: len(raw) // 2], SyncMarker)


def test_a_message_expanding_beyond_the_limit_is_refused() -> None:
    bomb = gzip.compress(b" " * (wire.MAX_DECOMPRESSED_BYTES + 1))
    with pytest.raises(wire.WireError, match="expands beyond"):
        wire.decode(bomb, SyncMarker)
