"""Reconciler planning speed: a full plan, and incremental re-plans, on one core.

    .venv/bin/python bench/reconciler_plan.py [--services 10000] [--changes 2000] [--repeat 3]

The world is `--services` FQDNs, each an Ingress in the seed's three clusters (s1az1, s1az2,
s2) selected by one GlobalDeploymentPolicy with the seed's 6:4:2 split and a GSLBHostRule on
one FQDN in 100. Measured in this process, pinned to one CPU, with the garbage-collector
tuning the reconciler's shell puts around the planner (services/reconciler/gc_tuning.py):

- full plan: `plan(observed, policies)` from nothing (validation, index, every service);
- incremental: one Ingress VIP change, `Planner.apply` + `Planner.replan` (what the
  reconciler does per event), over `--changes` different objects;
- namespace label change and policy edit (a GDP weight change re-plans every FQDN).

Targets (issue 5): full plan <= 2 s, incremental change <= 5 ms. Prints a table; writes JSON
to bench/results/reconciler_plan.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from services.reconciler.gc_tuning import GcTuning, collector_paused
from services.reconciler.plan import Planner, plan
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
)

RESULTS = Path(__file__).resolve().parent / "results"
CLUSTERS = ("s1az1", "s1az2", "s2")
CONFIG = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="global-gdp")
FULL_TARGET_SECONDS = 2.0
INCREMENTAL_TARGET_MS = 5.0


def ingress(cluster: int, index: int, vip: str | None = None) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(
            cluster=CLUSTERS[cluster],
            kind=ObjectKind.INGRESS,
            namespace=f"team{index % 50}",
            name=f"app{index}",
        ),
        resource_version="2" if vip else "1",
        labels={"app": "gslb"},
        hosts=[f"app{index}.avi.iberia.local"],
        vips=[vip or f"10.{cluster * 4 + index // 62500}.{index // 250 % 250}.{index % 250 + 1}"],
    )


def gdp_spec(weights: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
        "trafficSplit": [
            {"cluster": c, "weight": w} for c, w in zip(CLUSTERS, weights, strict=True)
        ],
        "healthMonitorTemplate": {"kind": "http", "path": "/"},
    }


def world(services: int) -> tuple[dict[ObjectRef, ObservedObject], dict[PolicyRef, PolicyObject]]:
    observed = {}
    for index in range(services):
        for cluster in range(len(CLUSTERS)):
            obj = ingress(cluster, index)
            observed[obj.ref] = obj
    policies = [
        PolicyObject(
            ref=CONFIG,
            spec={
                "memberClusters": [{"clusterContext": c} for c in CLUSTERS],
                "zones": [
                    {
                        "name": "avi.iberia.local",
                        "soa": {"mname": "g-dns.iberia.local.", "rname": "h.iberia.local."},
                    }
                ],
            },
        ),
        PolicyObject(ref=GDP, spec=gdp_spec((6, 4, 2))),
    ]
    for index in range(0, services, 100):
        ref = PolicyRef(kind=PolicyKind.GSLB_HOST_RULE, namespace="avi-system", name=f"rule{index}")
        policies.append(
            PolicyObject(ref=ref, spec={"fqdn": f"app{index}.avi.iberia.local", "ttl": 5})
        )
    return observed, {p.ref: p for p in policies}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    observed, policies = world(args.services)
    full_runs = []
    result = None
    for _ in range(args.repeat):
        started = time.perf_counter()
        with collector_paused():
            result = plan(observed, policies)
        full_runs.append(time.perf_counter() - started)
    assert result is not None and len(result.services) == args.services

    planner = Planner()
    tuning = GcTuning()
    for policy in policies.values():
        planner.apply(policy)
    for obj in observed.values():
        planner.apply(obj)
    tuning.replan(planner)
    incremental = []
    for change in range(args.changes):
        moved = f"172.16.{change // 250}.{change % 250 + 1}"
        obj = ingress(change % len(CLUSTERS), (change * 7919) % args.services, vip=moved)
        started = time.perf_counter()
        planner.apply(obj)
        delta = tuning.replan(planner)
        incremental.append((time.perf_counter() - started) * 1000)
        assert delta.replanned == 1 and len(delta.services) == 1

    namespace_runs = []
    for change in range(20):
        ns = ObservedObject(
            ref=ObjectRef(
                cluster="s2", kind=ObjectKind.NAMESPACE, namespace="", name=f"team{change}"
            ),
            resource_version="1",
            labels={"edited": str(change)},
        )
        started = time.perf_counter()
        planner.apply(ns)
        tuning.replan(planner)
        namespace_runs.append((time.perf_counter() - started) * 1000)

    policy_runs = []
    for generation, weights in enumerate(((6, 3, 1), (20, 20, 1), (6, 4, 2)), start=2):
        started = time.perf_counter()
        planner.apply(PolicyObject(ref=GDP, spec=gdp_spec(weights), generation=generation))
        delta = tuning.replan(planner)
        policy_runs.append(time.perf_counter() - started)
        assert delta.full and len(delta.services) == args.services

    figures = {
        "services": args.services,
        "objects": len(observed),
        "full_plan_seconds_best": min(full_runs),
        "full_plan_seconds_all": full_runs,
        "incremental_ms_median": statistics.median(incremental),
        "incremental_ms_p99": percentile(incremental, 0.99),
        "incremental_ms_max": max(incremental),
        "namespace_change_ms_median": statistics.median(namespace_runs),
        "policy_edit_seconds_median": statistics.median(policy_runs),
        "targets": {
            "full_plan_seconds": FULL_TARGET_SECONDS,
            "incremental_ms": INCREMENTAL_TARGET_MS,
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    rows = [
        (
            f"full plan (best of {args.repeat})",
            f"{figures['full_plan_seconds_best']:.3f} s",
            f"<= {FULL_TARGET_SECONDS} s",
        ),
        (
            "incremental change, median",
            f"{figures['incremental_ms_median']:.3f} ms",
            f"<= {INCREMENTAL_TARGET_MS} ms",
        ),
        (
            "incremental change, p99",
            f"{figures['incremental_ms_p99']:.3f} ms",
            f"<= {INCREMENTAL_TARGET_MS} ms",
        ),
        ("incremental change, max", f"{figures['incremental_ms_max']:.3f} ms", ""),
        ("namespace label change, median", f"{figures['namespace_change_ms_median']:.3f} ms", ""),
        ("GDP edit (re-plans all), median", f"{figures['policy_edit_seconds_median']:.3f} s", ""),
    ]
    print(
        f"reconciler plan: {args.services} FQDNs x {len(CLUSTERS)} clusters ({len(observed)} objects), one core"
    )
    print(f"{'measure':<34}{'result':>14}  target")
    for name, value, target in rows:
        print(f"{name:<34}{value:>14}  {target}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "reconciler_plan.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
