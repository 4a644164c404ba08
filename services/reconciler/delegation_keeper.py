"""Automatic delegation, the loop: on the reconciler leader only, for each GSLBConfig zone with
a `delegation`, read what the parent's primary holds, send the one RFC 2136 update that makes
it hold the zone's NS, glue (and DS), and report the result: in the GSLBConfig's status
(`status.delegation`, through the status the leader publishes), in the log and in metrics.

A zone is checked at once when what it wants changes (its NS set, glue, DS, the delegation
settings), else every `--delegation-check-seconds`; a failure is tried again on that period
(fixing a mounted secret needs no configuration change). Removing a zone's `delegation`
stops the checks and leaves the parent's records as they are.

The DS hook: `ds_source(zone)` gives the zone's DS records (presentation form) when it is
signed; None (the default, no DNSSEC) means NS and glue only, and the parent's DS is left
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from services.reconciler.delegation import (
    Records,
    delegation_problem,
    held,
    parent_of,
    summary,
    update_for,
    wanted,
)
from services.reconciler.delegation_io import (
    DelegationError,
    read_parent,
    read_secret,
    resolve,
    send_update,
)
from services.reconciler.lease import Leadership
from services.reconciler.metrics import DELEGATION_CHECKS, DELEGATION_DELEGATED
from services.reconciler.settings import ReconcilerSettings
from services.reconciler.validation import Policies
from shared.models import DelegationState, DelegationStatus, PolicyRef, PolicyStatus, utcnow
from shared.policies import ZoneConfig
from shared.subjects import normalize_fqdn

log = logging.getLogger(__name__)
TICK_SECONDS = 0.5

DsSource = Callable[[str], Sequence[str] | None]


class PolicySource(Protocol):
    """The planner: the policies in force, the active GSLBConfig among them."""

    policies: Policies


def no_ds(zone: str) -> Sequence[str] | None:
    return None


class DelegationKeeper:
    def __init__(
        self,
        leadership: Leadership,
        planner: PolicySource,
        settings: ReconcilerSettings,
        changed: Callable[[], None],
        ds_source: DsSource = no_ds,
    ) -> None:
        self.leadership = leadership
        self.planner = planner
        self.settings = settings
        self.changed = changed
        self.ds_source = ds_source
        self.results: dict[str, DelegationStatus] = {}
        self._checked: dict[str, object] = {}
        """Per zone, what it wanted at its last check: a change is checked at once."""
        self._due: dict[str, float] = {}
        self._inherited: dict[str, DelegationStatus] = {}
        """Results published by an earlier term for zones not checked in this one yet."""

    def with_results(
        self,
        statuses: Mapping[PolicyRef, PolicyStatus],
        published: Mapping[PolicyRef, PolicyStatus],
    ) -> Mapping[PolicyRef, PolicyStatus]:
        """The statuses to publish: the active GSLBConfig's carries the delegation results. A
        zone this leader has not checked yet keeps the result last published (by the previous
        leader), so a takeover does not blank it for the moment of the first check."""
        policies = self.planner.policies
        ref, config = policies.config_ref, policies.config
        if ref is None or ref not in statuses or config is None:
            return statuses
        delegated = {normalize_fqdn(z.name) for z in config.zones if z.delegation is not None}
        old = published.get(ref)
        self._inherited = {
            entry.zone: entry
            for entry in (old.delegation if old is not None else [])
            if entry.zone in delegated and entry.zone not in self.results
        }
        results = {**self._inherited, **self.results}
        if not results:
            return statuses
        entries = [results[zone] for zone in sorted(results)]
        return {**statuses, ref: statuses[ref].model_copy(update={"delegation": entries})}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if not self.leadership.is_leader(time.monotonic()):
                # The next leader checks and reports for itself (a standby exports nothing).
                for zone in self.results:
                    with contextlib.suppress(KeyError):
                        DELEGATION_DELEGATED.remove(zone)
                self._checked.clear()
                self._due.clear()
                self.results.clear()
                continue
            try:
                await self.step()
            except Exception:
                log.exception("automatic delegation: unexpected error")

    async def step(self) -> None:
        config = self.planner.policies.config
        zones = {
            normalize_fqdn(zone.name): zone
            for zone in (config.zones if config else [])
            if zone.delegation is not None
        }
        for zone in [z for z in self.results if z not in zones]:
            del self.results[zone]
            self._checked.pop(zone, None)
            with contextlib.suppress(KeyError):
                DELEGATION_DELEGATED.remove(zone)
            self.changed()
        for zone, zone_config in zones.items():
            ds = self.ds_source(zone)
            assert zone_config.delegation is not None
            want = wanted(zone_config, zone_config.delegation.ttl_seconds, ds)
            signature = (zone_config.delegation, sorted(want.items(), key=lambda kv: kv[0]))
            now = time.monotonic()
            if self._checked.get(zone) == signature and now < self._due.get(zone, 0.0):
                continue
            self._checked[zone] = signature
            self._due[zone] = now + self.settings.delegation_check_seconds
            state, message = await self._delegate(zone, zone_config, want, ds is not None)
            self._report(zone, zone_config, state, message)

    async def _delegate(
        self, zone: str, zone_config: ZoneConfig, want: Records, manage_ds: bool
    ) -> tuple[DelegationState, str]:
        spec = zone_config.delegation
        assert spec is not None
        if problem := delegation_problem(zone, spec):
            return DelegationState.FAILED, problem
        if not want:
            return DelegationState.FAILED, "the zone lists no nameservers to delegate to"
        parent = parent_of(zone, spec)
        timeout = self.settings.delegation_timeout_seconds
        try:
            secret = read_secret(self.settings.tsig_secrets_dir, spec.tsig_key.secret_ref)
            server = await resolve(spec.primary)
            have = held(*await read_parent(server, zone, manage_ds, timeout), zone)
            update = update_for(zone, parent, want, have, manage_ds)
            if update is None:
                DELEGATION_CHECKS.labels(zone, "current").inc()
                return DelegationState.DELEGATED, f"{parent} holds {summary(want)}"
            await send_update(server, update, spec.tsig_key, secret, timeout)
            DELEGATION_CHECKS.labels(zone, "updated").inc()
            log.info(
                "automatic delegation: updated %s in %s", zone, parent,
                extra={"zone": zone, "parent": parent, "server": str(server),
                       "update": update.describe()},
            )  # fmt: skip
            have = held(*await read_parent(server, zone, manage_ds, timeout), zone)
            if update_for(zone, parent, want, have, manage_ds) is not None:
                return (
                    DelegationState.FAILED,
                    f"{server} accepted the update but {parent} does not hold it (is it the "
                    "primary, and is the zone cut allowed there?)",
                )
            return DelegationState.DELEGATED, f"{parent} holds {summary(want)}"
        except DelegationError as exc:
            DELEGATION_CHECKS.labels(zone, exc.reason).inc()
            return DelegationState.FAILED, str(exc)

    def _report(
        self, zone: str, zone_config: ZoneConfig, state: DelegationState, message: str
    ) -> None:
        spec = zone_config.delegation
        assert spec is not None
        DELEGATION_DELEGATED.labels(zone).set(1 if state == DelegationState.DELEGATED else 0)
        previous = self.results.get(zone) or self._inherited.pop(zone, None)
        parent = parent_of(zone, spec)
        if previous is not None and (previous.state, previous.message, previous.server) == (
            state, message, spec.primary,
        ):  # fmt: skip
            if zone not in self.results:  # the previous term's result, confirmed: kept as is
                self.results[zone] = previous
                self.changed()
            return
        self.results[zone] = DelegationStatus(
            zone=zone, parent=parent, server=spec.primary, state=state, message=message,
            since=utcnow(),
        )  # fmt: skip
        extra = {"zone": zone, "parent": parent, "server": spec.primary, "state": state.value}
        if state == DelegationState.DELEGATED:
            log.info("automatic delegation of %s: %s", zone, message, extra=extra)
        else:
            log.error("automatic delegation of %s failed: %s", zone, message, extra=extra)
        self.changed()
