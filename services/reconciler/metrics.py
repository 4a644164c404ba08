"""The reconciler's Prometheus metrics (docs/operations.md lists them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import Children

EVENTS_APPLIED = Counter("kgslb_reconciler_events_total", "Events applied", ["kind"])
EVENTS_APPLIED_BY_KIND = Children(EVENTS_APPLIED)
PLANS = Counter(
    "kgslb_reconciler_plans_total", "Plans computed (full: the policies changed)", ["kind"]
)
PLAN_SECONDS = Histogram("kgslb_reconciler_plan_seconds", "Time to compute one plan")
REPLANNED = Counter("kgslb_reconciler_replanned_fqdns_total", "FQDNs re-planned")
REJECTED = Gauge("kgslb_reconciler_rejected_objects", "Policy objects currently Rejected")
SERVICES = Gauge("kgslb_reconciler_services", "Desired GSLB services")
REJECTED_NAMES = Counter(
    "kgslb_reconciler_rejected_names_total",
    "Names of selected objects that cannot be GSLB services, each counted once, by reason",
    ["reason"],
)
UNPLANNED_NAMES = Gauge(
    "kgslb_reconciler_unplanned_names", "Names not planned now, by reason", ["reason"]
)
LEADER = Gauge("kgslb_reconciler_leader", "1 while this replica is the leader and writes")
LEADERSHIP = Counter(
    "kgslb_reconciler_leadership_changes_total", "Leadership acquired or lost", ["change"]
)
RESYNCS = Counter("kgslb_reconciler_resyncs_total", "Full resyncs (GSLBConfig refreshInterval)")
FIRST_SYNC_WAIT = Gauge(
    "kgslb_reconciler_first_sync_wait_seconds",
    "From the start until names were first planned: the wait for the clusters' first lists",
)
FIRST_SYNC_MISSING = Gauge(
    "kgslb_reconciler_first_sync_missing_clusters",
    "Member clusters whose first list was not in when names were first planned (timeout)",
)
REBUILDS = Counter(
    "kgslb_reconciler_rebuilds_total",
    "Desired state written again in full after JetStream lost its state",
)
DRIFT_REPAIRS = Counter(
    "kgslb_reconciler_drift_repairs_total", "KV keys a full resync found changed by hand"
)
DELEGATION_DELEGATED = Gauge(
    "kgslb_reconciler_delegation_delegated",
    "Per zone with automatic delegation: 1 when the parent holds its NS, glue (and DS), 0 "
    "when the last check or update failed",
    ["zone"],
)
DELEGATION_CHECKS = Counter(
    "kgslb_reconciler_delegation_checks_total",
    "Checks of a zone's delegation in its parent, by zone and result: current (nothing to "
    "change), updated (an RFC 2136 update was accepted), or the error (BADKEY, BADSIG, "
    "NOTAUTH, REFUSED, TIMEOUT, SECRET, ...)",
    ["zone", "result"],
)
