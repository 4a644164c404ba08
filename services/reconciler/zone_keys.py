"""DNSSEC keys for signed zones: the leader makes a KSK and a ZSK for a signed zone that has
none and stores them in KV `kgslb_keys` (private keys encrypted with --dnssec-key-secret),
where every DNS replica of every site reads the same ones.

A key is created with a KV *create* (it fails when the key exists), so two replicas that both
believe they lead for a moment cannot both store keys: the second one's create is refused and
the first one's keys stay. The ZSK rolls on a schedule (`rollover.py`), each step written
with a compare-and-set on the value's revision. Keys are never deleted here otherwise: a zone
that stops being signed keeps its keys (signing again later needs no new DS in the parent),
and a KSK rollover is an operator's step (docs/architecture.md, "DNSSEC").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from cryptography.fernet import Fernet
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from services.reconciler.delegation_keeper import DelegationKeeper
from services.reconciler.lease import Leadership
from services.reconciler.plan import Planner
from services.reconciler.rollover import RolloverPolicy, zsk_step
from services.reconciler.settings import ReconcilerSettings
from shared import dnssec, subjects, wire
from shared.models import (
    DNSSEC_ALGORITHM_NUMBERS,
    DnssecAlgorithm,
    DnssecKey,
    KeyRole,
    ZoneKeys,
    ZoneSpec,
    utcnow,
)

log = logging.getLogger(__name__)
CHECK_SECONDS = 2.0


def zones_needing_keys(
    zones: Mapping[str, ZoneSpec], have_keys: Iterable[str]
) -> list[tuple[str, DnssecAlgorithm]]:
    """The signed zones without keys yet, with the algorithm to make them with."""
    have = set(have_keys)
    return [
        (name, spec.dnssec.algorithm)
        for name, spec in sorted(zones.items())
        if spec.dnssec is not None and spec.dnssec.enabled and name not in have
    ]


class ReconcilerParts(Protocol):
    js: JetStreamContext
    leadership: Leadership
    planner: Planner
    settings: ReconcilerSettings
    _dirty: asyncio.Event


class KeyKeeper:
    def __init__(
        self,
        js: JetStreamContext,
        leadership: Leadership,
        planner: Planner,
        settings: ReconcilerSettings,
    ) -> None:
        self.js = js
        self.leadership = leadership
        self.planner = planner
        self.settings = settings
        self._secret: Fernet | None = None
        self._have: set[str] = set()
        self.known: dict[str, ZoneKeys] = {}
        """The keys last read per signed zone (their DS is what the parent should hold)."""
        self._complained: set[str] = set()
        self.policy = RolloverPolicy(
            timedelta(seconds=settings.dnssec_zsk_lifetime_seconds),
            timedelta(seconds=settings.dnssec_rollover_wait_seconds),
        )

    async def run(self) -> None:
        kv: KeyValue | None = None
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            if not self.leadership.is_leader(time.monotonic()):
                continue
            try:
                kv = kv or await self.js.key_value(subjects.KV_KEYS)
                await self.step(kv)
            except Exception as exc:  # NATS away, bucket being recreated: next round
                kv = None
                log.warning("DNSSEC keys not checked: %s", exc)

    async def step(self, kv: KeyValue) -> None:
        await self._roll(kv)
        for zone, algorithm in zones_needing_keys(self.planner.policies.zones, self._have):
            key = subjects.fqdn_key(zone)
            try:
                await kv.get(key)
                self._have.add(zone)
                continue
            except NotFoundError:
                pass
            secret = self._load_secret(zone)
            if secret is None:
                continue
            keys = dnssec.new_zone_keys(zone + ".", algorithm, secret, utcnow())
            try:
                await kv.create(key, wire.encode(keys))
                log.info(
                    "made DNSSEC keys for zone %s (%s); `kgslb dnssec ds %s` prints the DS",
                    zone, algorithm.value, zone,
                )  # fmt: skip
            except KeyWrongLastSequenceError:
                pass  # another replica made them a moment ago: theirs stay
            self._have.add(zone)

    async def _roll(self, kv: KeyValue) -> None:
        """The next due step of each signed zone's ZSK rollover, compare-and-set."""
        for zone in sorted(self._have):
            spec = self.planner.policies.zones.get(zone)
            if spec is None or not spec.signed:
                continue
            key = subjects.fqdn_key(zone)
            try:
                entry = await kv.get(key)
            except NotFoundError:
                # Gone (a lost or purged bucket): new keys follow, and the parent needs their
                # DS, unless the backup is put back first (docs/architecture.md, "DNSSEC").
                log.error(
                    "the DNSSEC keys of zone %s are gone from KV %s: making new ones; the "
                    "parent's DS must be replaced (`kgslb dnssec ds %s`) unless the keys are "
                    "restored from a backup",
                    zone, subjects.KV_KEYS, zone,
                )  # fmt: skip
                self._have.discard(zone)
                continue
            if entry.value is None:
                continue
            keys = wire.decode(entry.value, ZoneKeys)
            self.known[zone] = keys
            secret = self._load_secret(zone)
            if secret is None:
                continue
            now = utcnow()
            rolled = zsk_step(keys, now, self.policy, partial(_zsk, secret=secret, now=now))
            if rolled is None:
                continue
            try:
                await kv.update(key, wire.encode(rolled), last=entry.revision)
                log.info("zone %s ZSK rollover: %s", zone, describe(rolled))
            except KeyWrongLastSequenceError:
                pass  # changed meanwhile (an operator, another replica): next round

    def ds_of(self, zone: str) -> list[str] | None:
        """The DS RDATA of a signed zone's KSKs (every one listed, so a KSK rollover puts the
        new DS next to the old one), or None while its keys are not known: the automatic
        delegation then leaves the parent's DS alone."""
        spec = self.planner.policies.zones.get(zone)
        keys = self.known.get(zone)
        if spec is None or not spec.signed or keys is None:
            return None
        return [record.split(" IN DS ", 1)[1] for record in dnssec.ds_records(keys)]

    def _load_secret(self, zone: str) -> Fernet | None:
        if self._secret is None:
            try:
                self._secret = dnssec.load_secret(
                    self.settings.dnssec_key_secret, self.settings.dnssec_key_secret_file
                )
            except dnssec.KeySecretError as exc:
                if zone not in self._complained:
                    self._complained.add(zone)
                    log.error("zone %s is signed but has no DNSSEC keys yet: %s", zone, exc)
                return None
        return self._secret


def _zsk(number: int, secret: Fernet, now: datetime) -> DnssecKey:
    algorithm = next(a for a, n in DNSSEC_ALGORITHM_NUMBERS.items() if n == number)
    return dnssec.generate(algorithm, KeyRole.ZSK, secret, now)


def describe(keys: ZoneKeys) -> str:
    return ", ".join(f"{k.role.value} {dnssec.key_tag(k)} {k.state.value}" for k in keys.keys)


class KeysAndDelegation(DelegationKeeper):
    """The automatic delegation (`delegation_keeper.py`) with the zones' DNSSEC keys kept
    alongside: the `KeyKeeper` runs with it, and the DS it hands the parent is the keys'."""

    def __init__(self, keys: KeyKeeper, changed: Callable[[], None]) -> None:
        super().__init__(keys.leadership, keys.planner, keys.settings, changed, keys.ds_of)
        self.keys = keys

    @classmethod
    def of(cls, reconciler: ReconcilerParts) -> KeysAndDelegation:
        keeper = KeyKeeper(
            reconciler.js, reconciler.leadership, reconciler.planner, reconciler.settings
        )
        return cls(keeper, reconciler._dirty.set)

    async def run(self) -> None:
        await asyncio.gather(super().run(), self.keys.run())
