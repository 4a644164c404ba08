"""Which members serve each name a policy governs, as its status says (`status.serving`), and the
Kubernetes Events a status change tells (accepted and rejected edits, failovers, recoveries).
Pure: the shell (`serving_follow.py`) follows the buckets, `status_writer.py` writes.

A member's state mirrors the DNS's decision (`services/dns/gslb.py`): per address family, the
highest priority group with an answered member that is not down serves; its members that are
not down are `Serving`, answered members of lower groups that are not down are `Standby`, and
answered members that are down are `Down`. A member of weight 0 is `Drained` (probed, not
answered), a disabled one `Disabled` (neither), and one held under manualResume `Held` (probed,
not answered until an operator resumes it; `holds_due` says which members to hold). Health is combined over the vantage points with
the DNS's quorum rule (`shared.quorum`), so the status and the answers agree.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.models import (
    GslbService,
    HealthState,
    MemberState,
    PolicyKind,
    PolicyRef,
    PolicyState,
)
from shared.subjects import member_key, normalize_fqdn

MAX_EVENT_MESSAGE = 1024
"""Kubernetes keeps an Event's message short (events.k8s.io/v1 `note`: at most 1 KB)."""


_AVAILABLE = (MemberState.SERVING, MemberState.STANDBY)
_IDLE = (MemberState.DRAINED, MemberState.DISABLED)


@dataclass(frozen=True, slots=True)
class MemberView:
    ip: str
    cluster: str
    priority: int
    weight: int
    disabled: bool
    health_key: str

    @property
    def answered(self) -> bool:
        return self.weight > 0 and not self.disabled

    @property
    def v6(self) -> bool:
        # `ip` is a validated address (GslbService): only IPv6's text form has a colon. Parsing
        # it here again was a tenth of the home watcher's work at a cold start.
        return ":" in self.ip


@dataclass(frozen=True, slots=True)
class NameView:
    """A GSLB service reduced to what its policies' status needs."""

    fqdn: str
    policies: tuple[str, ...]
    """`str(PolicyRef)` of the GDP and host rule that shaped it."""
    members: tuple[MemberView, ...]
    """Highest priority first, as the service lists them."""
    manual_resume: bool = False

    @classmethod
    def of(cls, service: GslbService) -> NameView:
        fqdn = normalize_fqdn(service.fqdn)
        members = tuple(
            MemberView(
                ip=member.ip,
                cluster=member.cluster,
                priority=group.priority,
                weight=member.weight,
                disabled=member.disabled,
                health_key=member_key(fqdn, member.probe_ip),
            )
            for group in sorted(service.groups, key=lambda g: -g.priority)
            for member in group.members
        )
        return cls(fqdn, tuple(service.policies), members, service.manual_resume)


def member_states(
    name: NameView, health: Mapping[str, HealthState], held: Collection[str] = ()
) -> list[tuple[MemberView, HealthState, MemberState]]:
    """Every member of the name with its combined health and its state; `held`: the health
    keys of the members held under manualResume."""
    alive = {
        member.health_key
        for member in name.members
        if member.answered
        and health.get(member.health_key) != HealthState.DOWN
        and member.health_key not in held
    }
    best: dict[bool, int] = {}
    """Per family (v6?), the priority of the group that serves."""
    for member in name.members:
        if member.health_key in alive and member.answered:
            best.setdefault(member.v6, member.priority)
    out = []
    for member in name.members:
        state_of_health = health.get(member.health_key, HealthState.UNKNOWN)
        if member.disabled:
            state = MemberState.DISABLED
        elif member.weight == 0:
            state = MemberState.DRAINED
        elif member.health_key in held:
            state = MemberState.HELD
        elif member.health_key not in alive:
            state = MemberState.DOWN
        elif best.get(member.v6) == member.priority:
            state = MemberState.SERVING
        else:
            state = MemberState.STANDBY
        out.append((member, state_of_health, state))
    return out


def holds_due(
    name: NameView, health: Mapping[str, HealthState], held: Collection[str]
) -> list[MemberView]:
    """Members to hold now: under manualResume, answered (not drained or disabled), down by
    the combined health, and not held yet. A member resumed while still down is held again:
    resume it once its health is up."""
    if not name.manual_resume:
        return []
    return [
        member
        for member in name.members
        if member.answered
        and health.get(member.health_key) == HealthState.DOWN
        and member.health_key not in held
    ]


def name_entry(
    name: NameView, health: Mapping[str, HealthState], held: Collection[str] = ()
) -> dict[str, Any]:
    """One item of `status.serving`: the FQDN, the addresses answered now (k8gb's
    healthyRecords) and every member with its cluster, address, health and state."""
    states = member_states(name, health, held)
    return {
        "fqdn": name.fqdn,
        "addresses": [m.ip for m, _, state in states if state == MemberState.SERVING],
        "members": [
            {"cluster": m.cluster, "address": m.ip, "health": h.value, "state": state.value}
            for m, h, state in states
        ],
    }


def serving_fields(entries: Iterable[dict[str, Any]], limit: int) -> dict[str, Any]:
    """`status.serving` (by FQDN, at most `limit`) and `status.servingOmitted` (how many more;
    None removes it from the status when there are none)."""
    every = list(entries)
    # The first `limit` by name without sorting them all (a GDP may govern 10,000 names).
    first = heapq.nsmallest(limit, every, key=lambda entry: str(entry["fqdn"]))
    omitted = max(0, len(every) - limit)
    return {"serving": first, "servingOmitted": omitted or None}


def serving_counts(entry: Mapping[str, Any]) -> dict[str, int]:
    """Members serving per cluster (the `kgslb_watcher_serving_members` gauge)."""
    counts: dict[str, int] = {}
    for member in entry["members"]:
        served = member["state"] == MemberState.SERVING.value
        counts[member["cluster"]] = counts.get(member["cluster"], 0) + served
    return counts


_POLICY_KINDS = frozenset(kind.value for kind in PolicyKind)


def policy_ref_of(text: str) -> PolicyRef | None:
    """The ref a GSLB service names among its `policies` (`str(PolicyRef)`), or None."""
    kind, _, rest = text.partition(" ")
    namespace, _, name = rest.partition("/")
    if kind not in _POLICY_KINDS or not name:
        return None
    return PolicyRef(kind=PolicyKind(kind), namespace=namespace, name=name)


# Events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A Kubernetes Event on a policy object."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def _members(entry: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    return {(m["cluster"], m["address"]): m["state"] for m in entry.get("members") or []}


def _serving_now(entry: Mapping[str, Any]) -> str:
    serving = [
        f"{m['cluster']} {m['address']}"
        for m in entry.get("members") or []
        if m["state"] == MemberState.SERVING.value
    ]
    if not serving:
        return "no member serves (the downResponse answers)"
    return "serving now: " + ", ".join(serving)


def _member_event(
    fqdn: str, where: str, before: str, after: str, entry: Mapping[str, Any]
) -> EventSpec | None:
    resume = f"held until `kgslb member resume {fqdn} {where.split()[0]}`"
    if before in _AVAILABLE and after == MemberState.DOWN:
        return EventSpec("Warning", "Failover", f"{fqdn}: {where} is down; {_serving_now(entry)}")
    if before in _AVAILABLE and after == MemberState.HELD:
        return EventSpec(
            "Warning", "Failover", f"{fqdn}: {where} is down, {resume}; {_serving_now(entry)}"
        )
    if after == MemberState.HELD:
        return EventSpec("Normal", "Held", f"{fqdn}: {where} {resume} (manualResume)")
    if before == MemberState.HELD and after in _AVAILABLE:
        return EventSpec("Normal", "Resumed", f"{fqdn}: {where} resumed ({after.lower()})")
    if before == MemberState.DOWN and after in _AVAILABLE:
        return EventSpec(
            "Normal",
            "Recovered",
            f"{fqdn}: {where} is healthy again ({after.lower()}); {_serving_now(entry)}",
        )
    if after in _IDLE and before != after:
        what = "drained (probed, not answered)" if after == MemberState.DRAINED else "disabled"
        return EventSpec("Normal", after, f"{fqdn}: {where} {what}; {_serving_now(entry)}")
    if before in _IDLE and after in _AVAILABLE:
        return EventSpec("Normal", "Resumed", f"{fqdn}: {where} answered again ({after.lower()})")
    return None


def _verdict_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> EventSpec | None:
    state, generation = new.get("state"), new.get("observedGeneration")
    if (state, generation) == (old.get("state"), old.get("observedGeneration")):
        return None
    message = str(new.get("message") or "")
    if state == PolicyState.ACCEPTED.value:
        return EventSpec("Normal", "Accepted", f"generation {generation} accepted: {message}")
    if state == PolicyState.REJECTED.value:
        return EventSpec("Warning", "Rejected", f"generation {generation} rejected: {message}")
    return None


def status_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    """The Events that a status write from `old` to `new` tells: the reconciler's verdict on a
    new generation (Accepted / Rejected), and per member of a name listed in both, a failover
    (was serving or standing by, now down), a recovery, a drain, a disable or a resume. A name
    listed for the first time (a new policy, a watcher that restarted and found the status
    already written) tells nothing."""
    events = []
    if (verdict := _verdict_event(old, new)) is not None:
        events.append(verdict)
    before_names = {e["fqdn"]: e for e in old.get("serving") or [] if isinstance(e, Mapping)}
    for entry in new.get("serving") or []:
        previous = before_names.get(entry["fqdn"])
        if previous is None:
            continue
        before = _members(previous)
        for (cluster, address), after in _members(entry).items():
            was = before.get((cluster, address))
            if was is None or was == after:
                continue
            event = _member_event(entry["fqdn"], f"{cluster} {address}", was, after, entry)
            if event is not None:
                events.append(event)
    return [EventSpec(e.type, e.reason, _bounded(e.message, MAX_EVENT_MESSAGE)) for e in events]


def _bounded(text: str, limit: int) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."
