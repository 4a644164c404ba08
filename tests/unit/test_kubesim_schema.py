"""The simulator's structural-schema check of custom resources, as kube-apiserver does it:
defaults, pruning, and one message per bad field in kube-apiserver's words."""

from __future__ import annotations

from typing import Any

from kubesim.schema import check

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["fqdn"],
            "properties": {
                "fqdn": {"type": "string", "maxLength": 10, "pattern": "^[a-z.]+$"},
                "ttl": {"type": "integer", "nullable": True, "minimum": 0},
                "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "items": {
                    "type": "array",
                    "maxItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {"weight": {"type": "integer", "default": 1}},
                    },
                },
            },
        }
    },
}


def obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "x"}, "spec": spec}


def test_defaults_are_applied_at_every_level_and_unknown_fields_pruned() -> None:
    outcome = check(
        SCHEMA,
        obj({"fqdn": "a.b", "items": [{}], "bogus": 1, "free": {"any": {"thing": 1}},
             "labels": {"k": "v"}}),
    )  # fmt: skip

    assert outcome.errors == []
    assert outcome.unknown == ["spec.bogus"]
    assert outcome.value["spec"] == {
        "fqdn": "a.b",
        "mode": "A",
        "items": [{"weight": 1}],
        "free": {"any": {"thing": 1}},
        "labels": {"k": "v"},
    }
    assert outcome.value["metadata"] == {"name": "x"}


def test_every_bad_field_is_named_with_kube_apiservers_words() -> None:
    outcome = check(
        SCHEMA,
        obj({"fqdn": "WAY.TOO.LONG", "ttl": -1, "mode": "C", "labels": {"k": 1},
             "items": [{}, {}, {"weight": "x"}]}),
    )  # fmt: skip

    assert [message for _, message in outcome.errors] == [
        "spec.fqdn: Too long: may not be more than 10 bytes",
        "spec.fqdn: Invalid value: \"WAY.TOO.LONG\": spec.fqdn in body should match '^[a-z.]+$'",
        "spec.ttl: Invalid value: -1: spec.ttl in body should be greater than or equal to 0",
        'spec.mode: Unsupported value: "C": supported values: "A", "B"',
        'spec.labels.k: Invalid value: "integer": spec.labels.k in body must be of type string: '
        '"integer"',
        "spec.items: Too many: 3: must have at most 2 items",
        'spec.items[2].weight: Invalid value: "string": spec.items[2].weight in body must be of '
        'type integer: "string"',
    ]


def test_required_and_nullable() -> None:
    assert check(SCHEMA, obj({"ttl": None})).errors == [("spec.fqdn", "spec.fqdn: Required value")]
    assert check(SCHEMA, obj({"fqdn": "a", "mode": None})).errors == [
        ("spec.mode", 'spec.mode: Invalid value: "null": spec.mode in body must be of type '
                      'string: "null"')
    ]  # fmt: skip
