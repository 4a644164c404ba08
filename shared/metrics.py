"""Prometheus children looked up once: `Counter.labels(...)` takes a lock and builds a key on
every call, which a cold start paid 300,000 times over in the health service (a verdict
counted per member) and the reconciler (an event counted per event)."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

Child = TypeVar("Child", covariant=True)


class _Labelled(Protocol[Child]):
    def labels(self, *values: str) -> Child: ...


class Children(Generic[Child]):
    """`children(*values)` is `metric.labels(*values)`, each child created once. For metrics
    whose children are never removed."""

    def __init__(self, metric: _Labelled[Child]) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Child] = {}

    def __call__(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child
