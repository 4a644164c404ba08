"""deploy/components/monitoring: Prometheus Operator objects that scrape every kgslb service and
NATS, and alert rules whose every expression parses as PromQL (promql-parser, the grammar
of Prometheus and promtool) and names only metrics that kgslb's code or the NATS exporter
export; a rule naming a metric nobody exports never fires, so an unknown name fails here."""

from __future__ import annotations

import ast
import functools
from typing import Any

import promql_parser
import pytest

from tests.unit.deploy_compose import named_in, of_kind_in, render_with
from tests.unit.test_deploy import ROOT, SERVICES, kgslb_deployments, named

OVERLAYS = ("home-cluster", "dev", "sites/s1az1", "sites/s1az2", "sites/s2")

# prometheus_client constructors and the suffixes of the series each one exposes.
SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total", "_created"),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count", "_created"),
    "SummaryMetricFamily": ("", "_sum", "_count"),
    "Info": ("_info",),
    "InfoMetricFamily": ("_info",),
    "Enum": ("",),
    "StateSetMetricFamily": ("",),
}

# prometheus-nats-exporter (natsio/prometheus-nats-exporter, the sidecar of
# deploy/nats/statefulset.yaml): -healthz (collector/healthz.go), -varz and -routez (names
# from the server's JSON fields: gnatsd_<endpoint>_<field>), -jsz (collector/jsz.go).
NATS_EXPORTER = frozenset({
    "gnatsd_healthz_status",
    "gnatsd_varz_connections", "gnatsd_varz_routes", "gnatsd_varz_slow_consumers",
    "gnatsd_varz_mem", "gnatsd_varz_cpu", "gnatsd_varz_in_msgs", "gnatsd_varz_out_msgs",
    "gnatsd_routez_num_routes",
    "jetstream_server_jetstream_disabled", "jetstream_server_total_streams",
    "jetstream_server_total_consumers", "jetstream_server_total_messages",
    "jetstream_server_total_message_bytes", "jetstream_server_max_memory",
    "jetstream_server_max_storage",
    "jetstream_stream_total_messages", "jetstream_stream_total_bytes",
    "jetstream_stream_first_seq", "jetstream_stream_last_seq", "jetstream_stream_consumer_count",
})  # fmt: skip
# Their labels: -healthz and -varz/-routez label by server_id (the server name with
# -use_internal_server_name); -jsz's server and stream labels (collector/jsz.go).
JSZ_SERVER = frozenset(
    {"server_id", "server_name", "cluster", "domain", "meta_leader", "is_meta_leader"}
)
JSZ_STREAM = JSZ_SERVER | {
    "account",
    "account_id",
    "stream_name",
    "stream_leader",
    "is_stream_leader",
}


def nats_labels(name: str) -> frozenset[str]:
    if name.startswith("jetstream_stream_"):
        return JSZ_STREAM
    if name.startswith("jetstream_server_"):
        return JSZ_SERVER
    return frozenset({"server_id"})


# Series Prometheus itself writes for every target.
PROMETHEUS = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# Labels every scraped series carries: Prometheus's, the Prometheus Operator's for a
# PodMonitor, and the relabelings of deploy/components/monitoring/podmonitors.yaml.
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "endpoint", "component", "kgslb_cluster"}
)


def labels_of(name: str) -> frozenset[str] | None:
    """The labels a series has; None when they are not known in advance."""
    if name in NATS_EXPORTER:
        return nats_labels(name) | TARGET_LABELS
    if name in PROMETHEUS:
        return TARGET_LABELS
    own = kgslb_metrics().get(name, frozenset())
    return None if own is None else own | TARGET_LABELS


def unknown_labels(expression: str) -> set[str]:
    """Labels an expression matches on or groups by that its metrics do not carry: a typo
    there makes a selector match nothing or a grouping lump every series together."""
    unknown: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            labels = labels_of(node.name)
            for matcher in node.matchers.matchers:
                if labels is not None and matcher.name not in labels:
                    unknown.add(f"{node.name}{{{matcher.name}}}")
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            inner = [labels_of(m) for m in metrics_in(str(node.expr))]
            if all(labels is not None for labels in inner):
                available = frozenset().union(*(labels or frozenset() for labels in inner))
                unknown.update(
                    f"by ({label})" for label in node.modifier.labels if label not in available
                )
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return unknown


def literal_strings(node: ast.expr | None) -> frozenset[str] | None:
    """The label names of a list or tuple of string constants; None when not literal."""
    if not isinstance(node, ast.List | ast.Tuple):
        return None
    values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
    if len(values) != len(node.elts) or not all(isinstance(v, str) for v in values):
        return None
    return frozenset(str(v) for v in values)


def label_names(kind: str, call: ast.Call) -> frozenset[str] | None:
    """The labels a metric definition declares: `labelnames` (third positional argument) of
    the metric classes, `labels=` of the metric families; None: not known (an Info's keys)."""
    keywords = {k.arg: k.value for k in call.keywords}
    if kind in ("Info", "InfoMetricFamily"):
        return None
    if kind.endswith("MetricFamily"):
        return literal_strings(keywords["labels"]) if "labels" in keywords else frozenset()
    if "labelnames" in keywords:
        return literal_strings(keywords["labelnames"])
    return literal_strings(call.args[2]) if len(call.args) > 2 else frozenset()


@functools.cache
def kgslb_metrics() -> dict[str, frozenset[str] | None]:
    """Every series the prometheus_client definitions in services/ and shared/ expose, with
    its labels: the first argument of each metric constructor or metric family, with its
    type's suffixes (a histogram's buckets add `le`)."""
    metrics: dict[str, frozenset[str] | None] = {}
    for path in (*(ROOT / "services").rglob("*.py"), *(ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            first = node.args[0]
            if kind not in SUFFIXES or not isinstance(first, ast.Constant):
                continue
            if not isinstance(first.value, str) or not first.value.startswith("kgslb_"):
                continue
            base = first.value
            labels = label_names(kind, node)
            for suffix in SUFFIXES[kind]:
                if suffix in ("_total", "_info") and base.endswith(suffix):
                    name = base
                else:
                    name = base.removesuffix("_total") + suffix if suffix else base
                known = metrics.get(name, frozenset())
                if labels is None or known is None:
                    metrics[name] = None
                else:
                    metrics[name] = known | labels | ({"le"} if suffix == "_bucket" else set())
    return metrics


def kgslb_metric_names() -> set[str]:
    return set(kgslb_metrics())


def exported_names() -> frozenset[str]:
    return frozenset(kgslb_metric_names()) | NATS_EXPORTER | PROMETHEUS


def metrics_in(expression: str) -> set[str]:
    """The metric names an expression selects (every vector selector, also inside ranges and
    functions); a selector by `__name__` matcher alone would not be checked, so it fails."""
    found: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"select by metric name, not only by matchers: {expression}"
            found.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def rules() -> list[dict[str, Any]]:
    rule = named_in(render_with("home-cluster", "monitoring"), "PrometheusRule", "kgslb")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


# The collector and the checks themselves ----------------------------------------------------


def test_the_collected_names_include_metrics_of_every_service_and_of_shared_code() -> None:
    names = kgslb_metric_names()

    assert {
        "kgslb_ready", "kgslb_build_info", "kgslb_bad_messages_total",
        "kgslb_reconciler_leader", "kgslb_watcher_cluster_reachable",
        "kgslb_health_probes_total", "kgslb_dns_queries_total", "kgslb_dns_health_verdicts",
        "kgslb_dns_response_seconds_bucket", "kgslb_reconciler_plan_seconds_count",
    } <= names  # fmt: skip
    assert "kgslb_dns_queries" not in names, "a counter family is exposed with _total"


def test_an_expression_naming_an_unknown_metric_is_caught() -> None:
    used = metrics_in('sum(rate(kgslb_dns_querys_total{rcode="NOERROR"}[5m])) > 0')

    assert used - exported_names() == {"kgslb_dns_querys_total"}


def test_the_collected_labels_are_those_the_definitions_declare() -> None:
    metrics = kgslb_metrics()

    assert metrics["kgslb_dns_health_verdicts"] == {"vantage", "state", "fresh"}
    assert metrics["kgslb_bad_messages_total"] == {"service", "subject_prefix"}
    assert metrics["kgslb_reconciler_kv_writes_total"] == {"bucket", "op"}
    assert metrics["kgslb_dns_response_seconds_bucket"] == {"transport", "le"}
    assert metrics["kgslb_ready"] == frozenset()


def test_a_label_the_metric_does_not_carry_is_caught() -> None:
    expression = (
        'max by (site) (kgslb_dns_health_verdicts{fresh="true", sate="down"}) > 0'
        " or sum by (cluster) (kgslb_watcher_cluster_reachable) == 0"
    )
    assert unknown_labels(expression) == {"kgslb_dns_health_verdicts{sate}", "by (site)"}


def test_an_expression_that_is_not_promql_does_not_parse() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (vantage (kgslb_ready)")


# The rules -------------------------------------------------------------------------------------


def test_every_rule_expression_parses_and_names_only_exported_metrics() -> None:
    unknown = {
        r["alert"]: sorted(metrics_in(r["expr"]) - exported_names())
        for r in rules()
        if metrics_in(r["expr"]) - exported_names()
    }
    assert rules()
    assert unknown == {}


def test_every_rule_matches_and_groups_only_on_labels_its_metrics_carry() -> None:
    unknown = {
        r["alert"]: sorted(unknown_labels(r["expr"])) for r in rules() if unknown_labels(r["expr"])
    }
    assert unknown == {}


def test_every_alert_has_a_severity_a_summary_a_description_and_a_for_duration() -> None:
    incomplete = [
        r["alert"]
        for r in rules()
        if r.get("labels", {}).get("severity") not in ("critical", "warning")
        or not {"summary", "description"} <= set(r.get("annotations", {}))
        or promql_parser.parse_duration(r.get("for", "0s")).total_seconds() < 60
    ]
    assert incomplete == []


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        ("KgslbDnsNoReplicaReady", "kgslb_ready"),
        ("KgslbSiteSeesEveryMemberDown", "kgslb_dns_health_verdicts"),
        ("KgslbWatcherClusterUnreachable", "kgslb_watcher_cluster_reachable"),
        ("KgslbReconcilerWithoutLeader", "kgslb_reconciler_leader"),
        ("KgslbDeadLettersGrowing", "kgslb_bad_messages_total"),
        ("NatsJetStreamUnhealthy", "gnatsd_healthz_status"),
    ],
)
def test_the_alerts_that_matter_exist_on_the_metric_that_says_it(alert: str, metric: str) -> None:
    by_name = {r["alert"]: r for r in rules()}

    assert alert in by_name
    assert metric in metrics_in(by_name[alert]["expr"])


# Scraping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_monitors_select_every_kgslb_service_and_nats_on_a_declared_port(
    overlay: str,
) -> None:
    docs = render_with(overlay, "monitoring")
    workloads = of_kind_in(docs, "Deployment") + of_kind_in(docs, "StatefulSet")
    scraped: dict[str, str] = {}
    for monitor in of_kind_in(docs, "PodMonitor"):
        assert monitor["metadata"]["namespace"] == "kgslb-system"
        selector = monitor["spec"]["selector"]
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        for workload in workloads:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            if not selects(selector, labels):
                continue
            declared = {
                p.get("name")
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            assert ports <= declared, f"{monitor['metadata']['name']} scrapes a declared port"
            scraped[workload["metadata"]["name"]] = monitor["metadata"]["name"]

    assert set(scraped) == {w["metadata"]["name"] for w in workloads}
    assert {w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            for w in workloads if scraped[w["metadata"]["name"]] == "kgslb"} == set(SERVICES)  # fmt: skip


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_nats_runs_the_exporter_beside_the_server_at_the_version_the_tests_use() -> None:
    pod = named("home-cluster", "StatefulSet", "nats")["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["containers"]}
    exporter = next(c for c in pod["containers"] if c["name"] == "exporter")

    assert images["exporter"].startswith("natsio/prometheus-nats-exporter:")
    assert {"-healthz", "-varz", "-jsz=streams"} <= set(exporter["args"])
    assert exporter["args"][-1] == "http://127.0.0.1:8222"


def test_the_nats_network_policy_lets_scrapers_reach_the_exporter() -> None:
    policy = named("home-cluster", "NetworkPolicy", "nats")
    scrape_ports = {
        port["port"]
        for rule in policy["spec"]["ingress"]
        if any(
            peer.get("namespaceSelector", {}).get("matchLabels") == {"kgslb.io/scrape": "true"}
            for peer in rule["from"]
        )
        for port in rule["ports"]
    }
    assert 7777 in scrape_ports


def test_every_kgslb_pod_is_scraped_on_its_ops_port_by_annotation_too() -> None:
    pods = [d["spec"]["template"] for d in kgslb_deployments("home-cluster")]

    assert {p["metadata"]["annotations"]["prometheus.io/port"] for p in pods} == {"8080"}


def test_the_monitoring_component_adds_only_prometheus_operator_objects() -> None:
    plain = {(d["kind"], d["metadata"]["name"]) for d in render_with("home-cluster")}
    added = {(d["kind"], d["metadata"]["name"]) for d in render_with("home-cluster", "monitoring")}

    assert added - plain == {
        ("PodMonitor", "kgslb"), ("PodMonitor", "nats"), ("PrometheusRule", "kgslb"),
    }  # fmt: skip
