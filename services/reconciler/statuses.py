"""Status messages of the policy objects: what each accepted object does in the world now
(how many GSLB services a GlobalDeploymentPolicy owns, which FQDN a GSLBHostRule governs) and
which names its selected objects bring that cannot be planned. Pure, like plan.py."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from services.reconciler.messages import bounded_message
from services.reconciler.names import RejectedName, gslb_name_problem
from services.reconciler.validation import Policies
from shared.models import GslbService, PolicyKind, PolicyRef, PolicyState, PolicyStatus


def final_statuses(
    policies: Policies,
    owned: Mapping[PolicyRef, int],
    shadowed: Mapping[PolicyRef, int],
    services: Mapping[str, GslbService],
    rejected: Mapping[str, RejectedName] | None = None,
) -> dict[PolicyRef, PolicyStatus]:
    """Accepted statuses say what the object does in the world now, and which names the
    objects it selects bring that are not planned (bounded: see `bounded_message`)."""
    statuses = dict(policies.statuses)
    config = policies.config
    rule_fqdn = {ref: fqdn for fqdn, (ref, _) in policies.host_rules.items()}
    rejected = rejected or {}
    not_planned: defaultdict[PolicyRef, list[str]] = defaultdict(list)
    for fqdn in sorted(rejected):
        not_planned[rejected[fqdn].policy].append(rejected[fqdn].describe())
    for ref, status in policies.statuses.items():
        if status.state != PolicyState.ACCEPTED:
            continue
        if ref.kind == PolicyKind.GSLB_CONFIG and config is not None:
            note = (
                f"active GSLBConfig: {len(config.member_clusters)} member cluster(s), "
                f"{len(config.zones)} zone(s)"
            )
        elif ref.kind == PolicyKind.GLOBAL_DEPLOYMENT_POLICY:
            gdp = next(g for g in policies.gdps if g.ref == ref)
            note = (
                f"accepted: selects {owned.get(ref, 0)} GSLB service(s)"
                if gdp.selects_anything
                else "accepted: matchRules is empty: selects nothing"
            )
            if shadowed.get(ref):
                note += (
                    f"; {shadowed[ref]} FQDN(s) it selects belong to an earlier "
                    "GlobalDeploymentPolicy (by namespace/name)"
                )
            if ref in not_planned:
                note = bounded_message(note + "; ", not_planned[ref])
        elif ref.kind == PolicyKind.GSLB_HOST_RULE:
            fqdn = rule_fqdn[ref]
            if fqdn in services:
                note = f"accepted: governs GSLB service {fqdn}"
            elif fqdn in rejected:
                note = bounded_message("accepted: ", [rejected[fqdn].describe()])
            elif (bad := gslb_name_problem(fqdn, policies.zones)) is not None:
                note = bounded_message(
                    "accepted: ", [f"{bad.describe()}; no GSLB service can be planned for it"]
                )
            else:
                note = (
                    f"accepted: no GSLB service {fqdn} yet (no GlobalDeploymentPolicy selects it)"
                )
        else:
            continue
        statuses[ref] = status.model_copy(update={"message": note})
    return statuses
