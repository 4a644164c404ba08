"""The CRDs in deploy/crds/: structural schemas that check what the reconciler checks (names,
types, enums, ranges), generated from the same pydantic specs so the two cannot drift."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from deploy.crds.generate import rendered
from services.reconciler.messages import inner_model
from services.reconciler.validation import SPEC_MODELS
from shared.models import PolicyKind

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
SEED_RESOURCES = {
    d["kind"]: d
    for file in ("gslbconfig.yaml", "global-gdp.yaml")
    for d in yaml.safe_load_all((ROOT / "examples" / "seed" / file).read_text())
    if d and d["apiVersion"] == "kgslb.io/v1alpha1"
}
FILES = {
    PolicyKind.GSLB_CONFIG: "gslbconfigs.kgslb.io.yaml",
    PolicyKind.GLOBAL_DEPLOYMENT_POLICY: "globaldeploymentpolicies.kgslb.io.yaml",
    PolicyKind.GSLB_HOST_RULE: "gslbhostrules.kgslb.io.yaml",
}
SHORT_NAMES = {
    PolicyKind.GSLB_CONFIG: "gc",
    PolicyKind.GLOBAL_DEPLOYMENT_POLICY: "gdp",
    PolicyKind.GSLB_HOST_RULE: "ghr",
}


def crd(kind: PolicyKind) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CRD_DIR / FILES[kind]).read_text())
    return loaded


def schema(kind: PolicyKind) -> dict[str, Any]:
    found: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return found


def resource(kind: PolicyKind, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kgslb.io/v1alpha1",
        "kind": kind.value,
        "metadata": {"name": "x", "namespace": "avi-system"},
        "spec": spec,
    }


def errors(kind: PolicyKind, spec: dict[str, Any]) -> list[str]:
    # Kubernetes schemas are OpenAPI 3.0: boolean exclusiveMinimum, as in JSON Schema draft 4.
    validator = jsonschema.Draft4Validator(schema(kind))
    return [error.message for error in validator.iter_errors(resource(kind, spec))]


SEED_GDP = SEED_RESOURCES["GlobalDeploymentPolicy"]["spec"]


def test_the_crd_files_are_generated_from_the_policy_models() -> None:
    for path, text in rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m deploy.crds.generate"


@pytest.mark.parametrize("kind", list(PolicyKind))
def test_each_crd_is_a_namespaced_v1alpha1_kgslb_io_kind_with_status_and_columns(
    kind: PolicyKind,
) -> None:
    definition = crd(kind)
    spec = definition["spec"]
    version = spec["versions"][0]
    assert definition["apiVersion"] == "apiextensions.k8s.io/v1"
    assert (spec["group"], spec["scope"], version["name"]) == ("kgslb.io", "Namespaced", "v1alpha1")
    assert (spec["names"]["kind"], spec["names"]["shortNames"]) == (kind.value, [SHORT_NAMES[kind]])
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["State"] == ".status.state" and columns["Message"] == ".status.message"


@pytest.mark.parametrize("kind", [PolicyKind.GSLB_CONFIG, PolicyKind.GLOBAL_DEPLOYMENT_POLICY])
def test_the_seed_resources_are_valid(kind: PolicyKind) -> None:
    validator = jsonschema.Draft4Validator(schema(kind))
    assert [e.message for e in validator.iter_errors(SEED_RESOURCES[kind.value])] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"trafficSplit": [{"cluster": "s1az1", "weight": -5}]},
            "-5 is less than the minimum of 0",
        ),
        (
            {"trafficSplit": [{"cluster": "s1az1", "weight": 21}]},
            "21 is greater than the maximum of 20",
        ),
        (
            {"trafficSplit": [{"cluster": "s2", "priority": 101}]},
            "101 is greater than the maximum of 100",
        ),
        ({"trafficSplit": [{"weight": 3}]}, "'cluster' is a required property"),
        ({"ttl": 86401}, "86401 is greater than the maximum of 86400"),
        ({"poolAlgorithmSettings": {"lbAlgorithm": "Random"}}, "'Random' is not one of"),
        ({"downResponse": {"type": "SERVFAIL"}}, "'SERVFAIL' is not one of"),
        (
            {"healthMonitorTemplate": {"intervalSeconds": 0}},
            "0 is less than or equal to the minimum of 0",
        ),
        ({"defaultDomain": "not a domain"}, "does not match"),
    ],
)
def test_the_gdp_schema_rejects_out_of_range_values(change: dict[str, Any], message: str) -> None:
    found = errors(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, {**SEED_GDP, **change})
    assert any(message in error for error in found), found


def test_the_host_rule_schema_requires_an_fqdn() -> None:
    assert errors(PolicyKind.GSLB_HOST_RULE, {"ttl": 5}) == ["'fqdn' is a required property"]


# Agreement with the pydantic models, checked field by field ---------------------------------


def _model_fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    return {
        (info.alias or name): inner_model(info.annotation)
        for name, info in model.model_fields.items()
    }


def _compare(model: type[BaseModel], node: dict[str, Any], path: str) -> list[str]:
    """Where the CRD's property names differ from the model's fields, recursively."""
    node = node.get("items", node)
    fields = _model_fields(model)
    properties = node.get("properties", {})
    out = [f"{path}.{name}: in the model only" for name in fields.keys() - properties.keys()]
    out += [f"{path}.{name}: in the CRD only" for name in properties.keys() - fields.keys()]
    for name, inner in fields.items():
        if inner is not None and name in properties:
            out += _compare(inner, properties[name], f"{path}.{name}")
    return out


@pytest.mark.parametrize("kind", list(PolicyKind))
def test_crd_and_pydantic_model_have_the_same_fields_at_every_level(kind: PolicyKind) -> None:
    assert _compare(SPEC_MODELS[kind], schema(kind)["properties"]["spec"], "spec") == []


def _structural_problems(node: Any, path: str) -> list[str]:
    if not isinstance(node, dict):
        return []
    out = [f"{path}: {key}" for key in ("$ref", "anyOf", "oneOf", "allOf", "$defs") if key in node]
    if "type" not in node:
        out.append(f"{path}: no type")
    if node.get("properties") and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties together")
    for name, child in node.get("properties", {}).items():
        out += _structural_problems(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        out += _structural_problems(node.get(key), f"{path}.{key}")
    return out


@pytest.mark.parametrize("kind", list(PolicyKind))
def test_the_schemas_are_structural(kind: PolicyKind) -> None:
    assert _structural_problems(copy.deepcopy(schema(kind)), kind.value) == []
