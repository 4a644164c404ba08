"""Decoding of the protobuf bodies kubectl sends that users are likely to type: a Namespace,
and the TokenRequest of `kubectl create token`.

Typed kubectl commands (`kubectl create namespace avi-system`) send built-in kinds as
Kubernetes protobuf and never fall back to JSON. Decoding them in general needs the generated
schemas, so only Namespace (name, generateName, labels, annotations) and TokenRequest
(audiences, expirationSeconds) are understood here.
"""

from __future__ import annotations

from collections.abc import Iterator

from kubesim.resources import Obj

_MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf envelope holding a Namespace."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs; varints as int, length-delimited fields as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            yield number, data[pos : pos + length]
            pos += length
        elif wire_type in (1, 5):  # fixed64 / fixed32: nothing we read, skip it
            pos += 8 if wire_type == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire_type}")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode()


def _map_entry(value: int | bytes) -> tuple[str, str]:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a map entry")
    entry = {n: _text(v) for n, v in _fields(value)}
    return entry.get(1, ""), entry.get(2, "")


def _object_meta(data: bytes) -> Obj:
    meta: Obj = {}
    for number, value in _fields(data):
        if number == 1:
            meta["name"] = _text(value)
        elif number == 2:
            meta["generateName"] = _text(value)
        elif number in (11, 12):
            key, text = _map_entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = text
    return meta


def decode_namespace(body: bytes) -> Obj:
    """The JSON form of a protobuf-encoded v1 Namespace."""
    if not body.startswith(_MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    kind, raw = "", b""
    for number, value in _fields(body[len(_MAGIC) :]):
        if number == 1 and isinstance(value, bytes):  # TypeMeta
            kind = next((_text(v) for n, v in _fields(value) if n == 2), "")
        elif number == 2 and isinstance(value, bytes):  # raw
            raw = value
    if kind == "TokenRequest":
        return _token_request(raw)
    if kind == "SelfSubjectAccessReview":
        return _self_review(raw)
    if kind != "Namespace":
        raise ProtobufError(f"kind {kind or '(none)'} in protobuf is not supported")
    namespace: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            namespace["metadata"] = _object_meta(value)
    return namespace


def _token_request(raw: bytes) -> Obj:
    spec: Obj = {}
    for number, value in _fields(raw):
        if number == 2 and isinstance(value, bytes):  # spec
            for field, item in _fields(value):
                if field == 1:
                    spec.setdefault("audiences", []).append(_text(item))
                elif field == 4 and isinstance(item, int):
                    spec["expirationSeconds"] = item
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


_RESOURCE_ATTRIBUTES = {
    1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource", 7: "name",
}  # fmt: skip


def _self_review(raw: bytes) -> Obj:
    """`kubectl auth can-i`: spec.resourceAttributes or spec.nonResourceAttributes."""
    spec: Obj = {}
    for number, value in _fields(raw):
        if number != 2 or not isinstance(value, bytes):  # spec
            continue
        for field, item in _fields(value):
            if field == 1 and isinstance(item, bytes):
                attributes = {
                    _RESOURCE_ATTRIBUTES[n]: _text(v)
                    for n, v in _fields(item)
                    if n in _RESOURCE_ATTRIBUTES
                }
                spec["resourceAttributes"] = attributes
            elif field == 2 and isinstance(item, bytes):
                names = {1: "path", 2: "verb"}
                spec["nonResourceAttributes"] = {
                    names[n]: _text(v) for n, v in _fields(item) if n in names
                }
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": spec,
    }
