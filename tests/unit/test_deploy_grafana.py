"""The Grafana dashboard in deploy/grafana/ loads and only charts metrics kgslb exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "kgslb-dashboard.json"


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def exported_metric_names() -> set[str]:
    """Every metric name the services declare (prometheus_client adds the _total suffix)."""
    source = "\n".join(
        path.read_text()
        for folder in ("services", "shared")
        for path in (ROOT / folder).rglob("*.py")
    )
    return {base_name(name) for name in re.findall(r'"(kgslb_[a-z_]+)"', source)}


def base_name(series: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", series)


def test_every_panel_has_a_unique_id_and_queries_the_selected_datasource() -> None:
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]

    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels())
    assert all(p["targets"] for p in panels())


def test_every_charted_metric_is_one_a_service_exports() -> None:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    charted = {base_name(name) for expr in exprs for name in re.findall(r"\b(kgslb_[a-z_]+)", expr)}
    assert charted
    assert charted - exported_metric_names() == set()


def test_the_dashboard_covers_every_service() -> None:
    text = DASHBOARD.read_text()
    for service in ("dns", "reconciler", "health", "watcher"):
        assert f"kgslb_{service}_" in text, service
