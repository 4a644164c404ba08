"""Health decisions without I/O: judge a probe, move a member between unknown, up and down,
place each member's probes on its own phase of the interval, and share members between the
live replicas by rendezvous (highest random weight) hashing."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared import subjects
from shared.models import GslbService, HealthMonitorSpec, HealthState, MemberHealth, MonitorKind

DEFAULT_PORTS = {MonitorKind.HTTP: 80, MonitorKind.HTTPS: 443, MonitorKind.TCP: 80}


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One member as the monitor sees it: the address to probe and how."""

    key: str
    """`subjects.member_key(fqdn, ip)`: the member's id and its KV key in `kgslb_health`."""
    fqdn: str
    ip: str
    cluster: str
    port: int
    monitor: HealthMonitorSpec


def probe_port(monitor: HealthMonitorSpec) -> int:
    if monitor.port is not None:
        return monitor.port
    return DEFAULT_PORTS.get(monitor.kind, 80)


def targets_of(service: GslbService) -> dict[str, ProbeTarget]:
    """Every member of a service, once per probe address (the first group that lists it wins).
    Disabled members are not probed; drained ones (weight 0) are."""
    fqdn = subjects.normalize_fqdn(service.fqdn)
    port = probe_port(service.health_monitor)
    targets: dict[str, ProbeTarget] = {}
    for member in service.all_members():
        if member.disabled:
            continue
        key = subjects.member_key(fqdn, member.probe_ip)
        if key not in targets:
            targets[key] = ProbeTarget(
                key, fqdn, member.probe_ip, member.cluster, port, service.health_monitor
            )
    return targets


# Probe results --------------------------------------------------------------------------------


class Outcome(StrEnum):
    OK = "ok"
    STATUS = "status"
    """An HTTP status outside the expected codes (a 500, or a 404 for a wrong Host)."""
    BODY = "body"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    TLS = "tls"
    PROTOCOL = "protocol"
    """The peer did not speak HTTP/1.x, or closed before a whole response."""
    NETWORK = "network"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: Outcome
    summary: str
    """What happened, short: `HTTP 200`, `TCP connected`, `timeout`."""
    error: str = ""
    """Why it counts as a failure, for the operator; empty on success."""
    response_time_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


CONTROL_PLANE_ONLY = ProbeResult(Outcome.OK, "control plane only")
"""The one result of a `kind: none` member: it exists, which is all its monitor asks."""


def status_expected(status: int, expected_codes: Iterable[str]) -> bool:
    """`2xx` matches a class, `204` one code."""
    text = str(status)
    return any(
        code == text or (code[1:] == "xx" and code[:1] == text[:1]) for code in expected_codes
    )


def judge_http(status: int, body: bytes | None, monitor: HealthMonitorSpec) -> ProbeResult:
    """Success or failure of one HTTP response; `body` is None when it was not read."""
    summary = f"HTTP {status}"
    if not status_expected(status, monitor.expected_codes):
        codes = ", ".join(monitor.expected_codes)
        return ProbeResult(
            Outcome.STATUS, summary, f"HTTP {status} is not an expected code ({codes})"
        )
    needle = monitor.body_contains
    if needle is not None and (body is None or needle.encode() not in body):
        return ProbeResult(Outcome.BODY, summary, f"response body does not contain {needle!r}")
    return ProbeResult(Outcome.OK, summary)


# Member state ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberState:
    """Where a member stands, and the run of equal results that may move it."""

    state: HealthState
    since: datetime
    successes: int = 0
    """Consecutive successes, capped at the threshold that matters."""
    failures: int = 0
    last: ProbeResult | None = None
    last_probe_at: datetime | None = None


def thresholds(monitor: HealthMonitorSpec) -> tuple[int, int]:
    """(successes to go up, failures to go down). Control-plane-only members have nothing to
    wait for: their one "probe" is that they exist."""
    if monitor.kind is MonitorKind.NONE:
        return 1, 1
    return monitor.successes_to_up, monitor.failures_to_down


def advance(
    current: MemberState, result: ProbeResult, monitor: HealthMonitorSpec, now: datetime
) -> MemberState:
    """The state after one more probe.

    A run of `successes_to_up` successes makes a member up and a run of `failures_to_down`
    failures makes it down, from any state including `unknown`: like an Avi monitor, a new
    member turns green only once checked, and one lucky or unlucky probe decides nothing.
    """
    to_up, to_down = thresholds(monitor)
    if result.ok:
        successes, failures = min(current.successes + 1, to_up), 0
        reached = HealthState.UP if successes >= to_up else None
    else:
        successes, failures = 0, min(current.failures + 1, to_down)
        reached = HealthState.DOWN if failures >= to_down else None
    state, since = current.state, current.since
    if reached is not None and reached is not current.state:
        state, since = reached, now
    return MemberState(state, since, successes, failures, result, now)


def initial_state(known: MemberHealth | None, now: datetime) -> MemberState:
    """A member this replica starts probing continues from what KV says, so a handover or a
    restart never flaps it; a member nobody has judged yet is `unknown`."""
    if known is None:
        return MemberState(HealthState.UNKNOWN, now)
    return MemberState(HealthState(known.state), known.since)


def health_record(
    target: ProbeTarget,
    state: MemberState,
    replica: str,
    previous: MemberHealth | None,
    site: str = "",
) -> MemberHealth:
    """The KV value for a member as seen from `site`; before this replica's first probe, the
    last probe shown is the previous owner's (of the same site)."""
    last, probe_at = state.last, state.last_probe_at
    if last is None and previous is not None:
        return previous.model_copy(
            update={
                "fqdn": target.fqdn,
                "ip": target.ip,
                "cluster": target.cluster,
                "state": state.state,
                "since": state.since,
                "replica": replica,
                "site": site,
            }
        )
    return MemberHealth(
        fqdn=target.fqdn,
        ip=target.ip,
        cluster=target.cluster,
        state=state.state,
        since=state.since,
        last_probe_at=probe_at,
        last_result=last.summary if last else "",
        last_error=last.error if last else "",
        response_time_ms=last.response_time_ms if last else None,
        replica=replica,
        site=site,
    )


def needs_write(known: MemberHealth | None, state: MemberState, live: Collection[str]) -> bool:
    """Write when the state changed, or to claim a member whose recorded prober is gone (so
    the record always names a live replica). Steady members write nothing."""
    return known is None or known.state != state.state or known.replica not in live


# Schedule -------------------------------------------------------------------------------------


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def phase_seconds(key: str, interval_seconds: float) -> float:
    """Where in every interval this member is probed: spread uniformly by its key, so probes
    never fire in bursts, and the same on every replica, so a handover keeps the period."""
    return _hash64(key) / 2**64 * interval_seconds


def first_delay(key: str, monitor: HealthMonitorSpec, now_epoch: float) -> float:
    """Seconds until the member's next phase on the wall clock shared by all replicas."""
    if monitor.kind is MonitorKind.NONE:
        return 0.0
    interval = monitor.interval_seconds
    return (phase_seconds(key, interval) - now_epoch) % interval


def next_due(due: float, interval_seconds: float, now: float) -> float:
    """The next slot after `due` that is still ahead: a probe that overran skips slots rather
    than firing late ones back to back."""
    following = due + interval_seconds
    if following > now:
        return following
    missed = int((now - following) // interval_seconds) + 1
    return following + missed * interval_seconds


# Sharding -------------------------------------------------------------------------------------


def owner(key: str, replicas: Collection[str]) -> str | None:
    """The replica that probes `key`: the highest hash of (replica, key). Adding or removing
    one of N replicas moves only the members it gains or loses, about 1/N of them."""
    if len(replicas) == 1:
        return next(iter(replicas))  # the usual one replica per site: nothing to hash
    return max(
        replicas, key=lambda replica: (_hash64(f"{replica}\x00{key}"), replica), default=None
    )


@dataclass(frozen=True, slots=True)
class Sighting:
    """A peer's heartbeat as this replica saw it, on this replica's own monotonic clock (so
    clock skew between machines cannot kill or revive a peer)."""

    seen_at: float
    valid_for_seconds: float


def live_replicas(sightings: Mapping[str, Sighting], me: str, now: float) -> frozenset[str]:
    """This replica and every peer heard from within its heartbeat's validity."""
    alive = {
        replica
        for replica, sighting in sightings.items()
        if now - sighting.seen_at <= sighting.valid_for_seconds
    }
    return frozenset({me, *alive})


def orphan_keys(
    known: Iterable[str], members: Collection[str], live: Collection[str], me: str
) -> set[str]:
    """Health keys of members no service lists any more that this replica should delete."""
    return {key for key in known if key not in members and owner(key, live) == me}
