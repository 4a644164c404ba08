"""What kube-apiserver's validation of the built-in kinds rejects, in its words, for the fields
kgslb's watcher reads: Ingress hosts, paths and backend ports; Service type, ports, protocols
and policies. One 422 Invalid names every field at fault, as `field.ErrorList` does:
`Service "hello" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and
65535, inclusive`. Pure: no I/O, no store.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubesim.resources import INGRESSES, SERVICES, Obj, ResourceType

_SUBDOMAIN_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_SUBDOMAIN = re.compile(f"^{_SUBDOMAIN_FMT}$")
_WILDCARD_FMT = r"\*\." + _SUBDOMAIN_FMT
_WILDCARD = re.compile(f"^{_WILDCARD_FMT}$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
    " '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used"
    f" for validation is '{_SUBDOMAIN_FMT}')"
)
_WILDCARD_MSG = (
    "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which"
    " must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric"
    f" character (e.g. '*.example.com', regex used for validation is '{_WILDCARD_FMT}')"
)
_PORT_RANGE = "must be between 1 and 65535, inclusive"
SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")
TRAFFIC_POLICIES = ("Cluster", "Local")
SESSION_AFFINITIES = ("ClientIP", "None")


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str  # the StatusCause reason: FieldValueInvalid, FieldValueNotSupported, ...
    body: str  # what follows "<field>: ", as field.Error.ErrorBody() words it

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def invalid_value(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(field, "FieldValueInvalid", f"Invalid value: {_value(value)}: {detail}")


def not_supported(field: str, value: Any, supported: tuple[str, ...]) -> FieldError:
    allowed = ", ".join(json.dumps(s) for s in supported)
    body = f"Unsupported value: {_value(value)}: supported values: {allowed}"
    return FieldError(field, "FieldValueNotSupported", body)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError(
        field, "FieldValueRequired", "Required value" + (f": {detail}" if detail else "")
    )


def rejection(rtype: ResourceType, name: str, errors: list[FieldError]) -> tuple[str, Obj]:
    """The message and details of kube-apiserver's 422 Invalid for `errors` (a cause each)."""
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    causes = [{"reason": e.reason, "message": e.body, "field": e.field} for e in errors]
    details = {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes}
    return f'{kind} "{name}" is invalid: {text}', details


def builtin_errors(rtype: ResourceType, obj: Obj) -> list[FieldError]:
    """What kube-apiserver would refuse in `obj` (defaulted), if it is a built-in it checks."""
    validator = _VALIDATORS.get(rtype.key)
    return validator(obj) if validator is not None else []


# ----- Ingress ---------------------------------------------------------------------------------


def host_errors(field: str, host: str) -> list[FieldError]:
    """An Ingress host: a DNS subdomain, not an IP address; `*` only as a whole first label."""
    errors = []
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        errors.append(invalid_value(field, host, "must be a DNS name, not an IP address"))
    if len(host) > 253:
        errors.append(invalid_value(field, host, "must be no more than 253 characters"))
    pattern, message = (_WILDCARD, _WILDCARD_MSG) if "*" in host else (_SUBDOMAIN, _SUBDOMAIN_MSG)
    if not pattern.match(host):
        errors.append(invalid_value(field, host, message))
    return errors


def _port_number(field: str, value: Any) -> list[FieldError]:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return [invalid_value(field, value, _PORT_RANGE)]
    return []


def _backend_errors(field: str, backend: Any) -> list[FieldError]:
    if not isinstance(backend, dict):
        return []
    port = (backend.get("service") or {}).get("port") or {}
    if isinstance(port, dict) and "number" in port:
        return _port_number(f"{field}.service.port.number", port["number"])
    return []


def _ingress(obj: Obj) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    errors += _backend_errors("spec.defaultBackend", spec.get("defaultBackend"))
    for i, tls in enumerate(spec.get("tls") or []):
        for j, host in enumerate((tls or {}).get("hosts") or []):
            if "*" in str(host) and not _WILDCARD.match(str(host)):
                errors.append(invalid_value(f"spec.tls[{i}].hosts[{j}]", host, _WILDCARD_MSG))
    for i, rule in enumerate(spec.get("rules") or []):
        rule = rule or {}
        if host := rule.get("host"):
            errors += host_errors(f"spec.rules[{i}].host", str(host))
        for j, path in enumerate(((rule.get("http") or {}).get("paths")) or []):
            where = f"spec.rules[{i}].http.paths[{j}]"
            path = path or {}
            path_type = path.get("pathType")
            if path_type is None:
                errors.append(required(f"{where}.pathType", "pathType must be specified"))
            elif path_type not in PATH_TYPES:
                errors.append(not_supported(f"{where}.pathType", path_type, PATH_TYPES))
            elif path_type != "ImplementationSpecific" and not str(path.get("path", "")).startswith(
                "/"
            ):
                errors.append(
                    invalid_value(f"{where}.path", path.get("path", ""), "must be an absolute path")
                )
            errors += _backend_errors(f"{where}.backend", path.get("backend"))
    return errors


# ----- Service ---------------------------------------------------------------------------------


def _service(obj: Obj) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    kind = spec.get("type")
    if kind not in SERVICE_TYPES:
        errors.append(not_supported("spec.type", kind, SERVICE_TYPES))
    for i, port in enumerate(spec.get("ports") or []):
        port = port or {}
        errors += _port_number(f"spec.ports[{i}].port", port.get("port"))
        protocol = port.get("protocol")
        if protocol not in PROTOCOLS:
            errors.append(not_supported(f"spec.ports[{i}].protocol", protocol, PROTOCOLS))
        target = port.get("targetPort")
        if isinstance(target, int) and not isinstance(target, bool):
            errors += _port_number(f"spec.ports[{i}].targetPort", target)
    policy = spec.get("externalTrafficPolicy")
    if policy is not None and policy != "" and policy not in TRAFFIC_POLICIES:
        errors.append(not_supported("spec.externalTrafficPolicy", policy, TRAFFIC_POLICIES))
    affinity = spec.get("sessionAffinity")
    if affinity not in SESSION_AFFINITIES:
        errors.append(not_supported("spec.sessionAffinity", affinity, SESSION_AFFINITIES))
    return errors


_VALIDATORS: dict[tuple[str, str], Callable[[Obj], list[FieldError]]] = {
    INGRESSES.key: _ingress,
    SERVICES.key: _service,
}
