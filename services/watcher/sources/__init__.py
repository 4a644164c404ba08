"""The kinds a watcher lists and watches, one module each behind one interface
(`base.Source`): what to list and watch, how an object becomes an observation, which other
objects it joins with. To add a kind, see docs/architecture.md, "Sources"."""

from __future__ import annotations

from collections.abc import Iterable

from services.watcher.sources.base import Source
from services.watcher.sources.gateway import GATEWAY, GRPC_ROUTE, HTTP_ROUTE, TLS_ROUTE
from services.watcher.sources.ingress import INGRESS
from services.watcher.sources.namespace import NAMESPACE
from services.watcher.sources.openshift import OPENSHIFT_ROUTE
from services.watcher.sources.service import SERVICE

SOURCES: tuple[Source, ...] = (
    INGRESS,
    SERVICE,
    NAMESPACE,
    GATEWAY,
    HTTP_ROUTE,
    GRPC_ROUTE,
    TLS_ROUTE,
    OPENSHIFT_ROUTE,
)
BY_NAME: dict[str, Source] = {source.name: source for source in SOURCES}
PUBLISHING = tuple(source for source in SOURCES if source.kind is not None)
"""The sources whose observations are published, one per `ObjectKind`."""
ALWAYS = (NAMESPACE.name,)
"""Namespaces are watched whatever `--sources` says: their labels select objects of any kind."""


def select(names: Iterable[str]) -> tuple[Source, ...]:
    """The sources to run for `--sources` (kind names; "all"), with Namespace and every
    source a chosen one joins with. ValueError naming the unknown kind and the known ones."""
    wanted = {name.strip() for name in names if name.strip()}
    if "all" in wanted:
        return SOURCES
    known = {s.name for s in PUBLISHING}
    if unknown := sorted(wanted - known):
        raise ValueError(
            f"unknown source(s) {', '.join(unknown)}; known: all, {', '.join(sorted(known))}"
        )
    chosen = wanted | set(ALWAYS)
    for name in list(chosen):
        chosen |= set(BY_NAME[name].joined)
    return tuple(s for s in SOURCES if s.name in chosen)
