"""Metric children looked up once (shared.metrics.Children)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shared.metrics import Children


def test_a_child_is_the_metrics_own_child_and_counts_there() -> None:
    registry = CollectorRegistry()
    writes = Counter("kgslb_test_writes_total", "writes", ["op"], registry=registry)
    by_op = Children(writes)

    by_op("create").inc()
    by_op("create").inc()
    by_op("update").inc()

    assert by_op("create") is writes.labels("create")
    assert registry.get_sample_value("kgslb_test_writes_total", {"op": "create"}) == 2
    assert registry.get_sample_value("kgslb_test_writes_total", {"op": "update"}) == 1
