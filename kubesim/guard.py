"""Who is calling and what they may do: bearer tokens and RBAC, as kube-apiserver checks them.

Authentication: the admin token of the kubeconfig the simulator writes (user
`kubernetes-admin`, group `system:masters`, allowed everything), or a token minted for a
ServiceAccount through its TokenRequest subresource (`kubectl create token SA -n NS`), valid
while that ServiceAccount (same uid) exists and until it expires. Anything else is 401.

Authorization: the request's attributes are read from its URL as kube-apiserver's
RequestInfoFactory reads them (verb, API group, resource, subresource, namespace, name), and
allowed when a rule of a Role or ClusterRole bound to the user, one of its groups or its
ServiceAccount allows it (RBAC's rule matching: `*`, `*/subresource`, resourceNames,
nonResourceURLs). Denials are 403 with kube-apiserver's message. Discovery, OpenAPI, /version
and the health endpoints are open to every authenticated user, as the default
`system:discovery` binding makes them.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubesim.resources import (
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    ROLEBINDINGS,
    ROLES,
    SECRETS,
    SERVICEACCOUNTS,
    Obj,
)
from kubesim.store import ApiError, ClusterStore, WatchEvent

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
ADMIN_USER = "kubernetes-admin"
DEFAULT_TOKEN_SECONDS = 3600
MIN_TOKEN_SECONDS = 600
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
"""Answered without credentials, as the `system:public-info-viewer` binding allows."""
DISCOVERY_PREFIXES = ("/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz")
SELF_REVIEW = ("authorization.k8s.io", "selfsubjectaccessreviews", "create")
_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch"}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


ADMIN = User(ADMIN_USER, (MASTERS, AUTHENTICATED))


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


@dataclass(frozen=True)
class Attributes:
    """What a request asks, in RBAC's terms (k8s.io/apiserver's RequestInfo)."""

    verb: str
    path: str
    resource_request: bool
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """Read a request as RequestInfoFactory does: /api/v1/..., /apis/GROUP/VERSION/..."""
    clean = "/" + path.strip("/")
    parts = [p for p in clean.split("/") if p]
    verb = _VERBS.get(method, "delete" if method == "DELETE" else method.lower())
    if not parts or parts[0] not in ("api", "apis"):
        return Attributes(verb, clean, False)
    if parts[0] == "api":
        group, rest = "", parts[2:]
        if len(parts) < 2:
            return Attributes(verb, clean, False)
    else:
        if len(parts) < 3:
            return Attributes(verb, clean, False)
        group, rest = parts[1], parts[3:]
    if not rest:
        return Attributes(verb, clean, False)  # discovery of a group version
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
        selector = query.get("fieldSelector", "")
        if selector.startswith("metadata.name=") and "," not in selector:
            name = selector.removeprefix("metadata.name=").lstrip("=")
    elif not name and verb == "delete":
        verb = "deletecollection"
    elif name and verb == "get" and query.get("watch") in ("true", "1"):
        verb = "watch"
    return Attributes(verb, clean, True, group, resource, subresource, namespace, name)


def forbidden(user: User, attrs: Attributes) -> ApiError:
    """403 worded as kube-apiserver's authorization filter words it."""
    if not attrs.resource_request:
        message = f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
        return ApiError(403, "Forbidden", message, {})
    why = (
        f'User "{user.name}" cannot {attrs.verb} resource "{attrs.combined_resource}"'
        f' in API group "{attrs.group}"'
    )
    why += f' in the namespace "{attrs.namespace}"' if attrs.namespace else " at the cluster scope"
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    details: Obj = {"group": attrs.group, "kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {why}", details)


# ----- authentication ------------------------------------------------------------------------


SA_TOKEN_SECRET = "kubernetes.io/service-account-token"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
SA_UID_ANNOTATION = "kubernetes.io/service-account.uid"


@dataclass(frozen=True)
class _Minted:
    namespace: str
    service_account: str
    uid: str
    expires: float
    secret: str = ""  # a long-lived token lives as long as this Secret (in `namespace`)


class Tokens:
    """Bearer tokens of one cluster: the admin's, and those minted for ServiceAccounts."""

    def __init__(self, admin_token: str, ca_pem: bytes = b"") -> None:
        self.admin_token = admin_token
        self.ca_pem = ca_pem
        self._minted: dict[str, _Minted] = {}

    # The tokens controller: a Secret of type kubernetes.io/service-account-token naming a
    # ServiceAccount gets a long-lived token of it, the CA and the namespace in its data.

    def adopt(self, store: ClusterStore) -> None:
        """Take over the tokens that Secrets restored into `store` already hold."""
        for secret in store.iter_objects(SECRETS):
            self._fill(store, secret)

    def __call__(self, store: ClusterStore, event: WatchEvent) -> None:
        if event.type == "DELETED":
            return
        if event.resource == SECRETS.key:
            self._fill(store, event.obj)
        elif event.resource == SERVICEACCOUNTS.key and event.type == "ADDED":
            for secret in list(store.iter_objects(SECRETS, event.obj["metadata"]["namespace"])):
                self._fill(store, secret)

    def _fill(self, store: ClusterStore, secret: Obj) -> None:
        meta = secret["metadata"]
        account = (meta.get("annotations") or {}).get(SA_NAME_ANNOTATION, "")
        if secret.get("type") != SA_TOKEN_SECRET or not account:
            return
        namespace = meta["namespace"]
        try:
            uid = store.get(SERVICEACCOUNTS, namespace, account)["metadata"].get("uid", "")
        except ApiError:
            return  # the ServiceAccount does not exist (yet); a real cluster waits too
        data = secret.get("data") or {}
        try:
            held = base64.b64decode(data.get("token", ""), validate=True).decode()
        except (binascii.Error, ValueError):
            held = ""  # not a token: the controller writes one
        if held:
            if held not in self._minted:
                self._minted[held] = _Minted(namespace, account, uid, math.inf, meta["name"])
            return
        token = "kubesim-sa." + secrets.token_urlsafe(32)
        self._minted[token] = _Minted(namespace, account, uid, math.inf, meta["name"])
        filled = {
            **data,
            "token": base64.b64encode(token.encode()).decode(),
            "ca.crt": base64.b64encode(self.ca_pem).decode(),
            "namespace": base64.b64encode(namespace.encode()).decode(),
        }
        annotations = {**(meta.get("annotations") or {}), SA_UID_ANNOTATION: uid}
        body = {**secret, "metadata": {**meta, "annotations": annotations}, "data": filled}
        store.update(SECRETS, namespace, meta["name"], body)

    def mint(self, store: ClusterStore, namespace: str, name: str, body: Any) -> Obj:
        """Answer a TokenRequest for ServiceAccount `namespace/name` (404 if it does not exist)."""
        account = store.get(SERVICEACCOUNTS, namespace, name)
        spec = (body or {}).get("spec") or {} if isinstance(body, dict) else {}
        seconds = spec.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS
        if not isinstance(seconds, int) or seconds < MIN_TOKEN_SECONDS:
            message = (
                f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.expirationSeconds:'
                f" Invalid value: {seconds}: may not specify a duration less than 10 minutes"
            )
            raise ApiError(422, "Invalid", message, {"name": name, "kind": "TokenRequest"})
        token = "kubesim-sa." + secrets.token_urlsafe(32)
        expires = time.time() + seconds
        uid = account["metadata"].get("uid", "")
        self._minted[token] = _Minted(namespace, name, uid, expires)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {
                "audiences": spec.get("audiences") or ["https://kubernetes.default.svc"],
                "expirationSeconds": seconds,
                "boundObjectRef": spec.get("boundObjectRef"),
            },
            "status": {"token": token, "expirationTimestamp": stamp},
        }

    def authenticate(self, store: ClusterStore, header: str) -> User | None:
        """The user an `Authorization` header names, None when it names nobody."""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if secrets.compare_digest(token, self.admin_token):
            return ADMIN
        minted = self._minted.get(token)
        if minted is None:
            return None
        if minted.expires < time.time():
            del self._minted[token]
            return None
        try:
            account = store.get(SERVICEACCOUNTS, minted.namespace, minted.service_account)
        except ApiError:
            return None
        if account["metadata"].get("uid", "") != minted.uid:
            return None  # deleted and created again: the old tokens die with the old one
        if minted.secret:
            try:
                store.get(SECRETS, minted.namespace, minted.secret)
            except ApiError:
                del self._minted[token]
                return None  # a long-lived token dies with its Secret
        return service_account_user(minted.namespace, minted.service_account)


def service_account_user(namespace: str, name: str) -> User:
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
    )


# ----- authorization -------------------------------------------------------------------------


def allowed(store: ClusterStore, user: User, attrs: Attributes) -> bool:
    if MASTERS in user.groups:
        return True
    if not attrs.resource_request and attrs.path.startswith(DISCOVERY_PREFIXES):
        return True
    if (attrs.group, attrs.resource, attrs.verb) == SELF_REVIEW:
        return True  # system:basic-user: anyone may ask what they may do
    return any(_rule_allows(rule, attrs) for rule in _rules_for(store, user, attrs.namespace))


def _rules_for(store: ClusterStore, user: User, namespace: str) -> Iterator[Obj]:
    for binding in store.iter_objects(CLUSTERROLEBINDINGS):
        if _binds(binding, user, ""):
            yield from _role_rules(store, binding, "")
    if namespace:
        for binding in store.iter_objects(ROLEBINDINGS, namespace):
            if _binds(binding, user, namespace):
                yield from _role_rules(store, binding, namespace)


def _binds(binding: Obj, user: User, namespace: str) -> bool:
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user.name:
            return True
        if kind == "Group" and name in user.groups:
            return True
        if kind == "ServiceAccount":
            where = subject.get("namespace") or namespace
            if user.name == f"system:serviceaccount:{where}:{name}":
                return True
    return False


def _role_rules(store: ClusterStore, binding: Obj, namespace: str) -> list[Obj]:
    ref = binding.get("roleRef") or {}
    try:
        if ref.get("kind") == "ClusterRole":
            role = store.get(CLUSTERROLES, None, ref.get("name", ""))
        elif ref.get("kind") == "Role" and namespace:
            role = store.get(ROLES, namespace, ref.get("name", ""))
        else:
            return []
    except ApiError:
        return []  # a binding to a role that does not exist (yet) grants nothing
    return [rule for rule in role.get("rules") or [] if isinstance(rule, dict)]


def _rule_allows(rule: Obj, attrs: Attributes) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        return any(
            url == "*"
            or url == attrs.path
            or (url.endswith("*") and attrs.path.startswith(url[:-1]))
            for url in rule.get("nonResourceURLs") or []
        )
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.group not in groups:
        return False
    if not _resource_matches(rule.get("resources") or [], attrs):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _resource_matches(resources: list[str], attrs: Attributes) -> bool:
    for resource in resources:
        if resource in ("*", attrs.combined_resource):
            return True
        if attrs.subresource and resource == f"*/{attrs.subresource}":
            return True
    return False


def review(store: ClusterStore, user: User, body: Any) -> Obj:
    """Answer a SelfSubjectAccessReview (`kubectl auth can-i`) for `user`."""
    spec = (body or {}).get("spec") or {} if isinstance(body, dict) else {}
    resource = spec.get("resourceAttributes")
    if isinstance(resource, dict):
        attrs = Attributes(
            verb=str(resource.get("verb", "")),
            path="",
            resource_request=True,
            group=str(resource.get("group", "")),
            resource=str(resource.get("resource", "")),
            subresource=str(resource.get("subresource", "")),
            namespace=str(resource.get("namespace", "")),
            name=str(resource.get("name", "")),
        )
    else:
        other = spec.get("nonResourceAttributes") or {}
        attrs = Attributes(str(other.get("verb", "")), str(other.get("path", "")), False)
    verdict = allowed(store, user, attrs)
    status: Obj = {"allowed": verdict}
    if verdict:
        status["reason"] = "allowed by RBAC" if MASTERS not in user.groups else "system:masters"
    return {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }
