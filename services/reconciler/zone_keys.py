"""DNSSEC keys for signed zones: the leader makes a KSK and a ZSK for a signed zone that has
none and stores them in KV `kgslb_keys` (private keys encrypted with --dnssec-key-secret),
where every DNS replica of every site reads the same ones.

A key is created with a KV *create* (it fails when the key exists), so two replicas that both
believe they lead for a moment cannot both store keys: the second one's create is refused and
the first one's keys stay. Keys are never deleted or replaced here: a zone that stops being
signed keeps its keys (signing again later needs no new DS in the parent), and rollovers are
an operator's step (docs/architecture.md, "DNSSEC").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from cryptography.fernet import Fernet
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from services.reconciler.lease import Leadership
from services.reconciler.plan import Planner
from shared import dnssec, subjects, wire
from shared.models import DnssecAlgorithm, ZoneSpec, utcnow
from shared.settings import DnssecSecretSettings

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


class KeyKeeper:
    def __init__(
        self,
        js: JetStreamContext,
        leadership: Leadership,
        planner: Planner,
        settings: DnssecSecretSettings,
    ) -> None:
        self.js = js
        self.leadership = leadership
        self.planner = planner
        self.settings = settings
        self._secret: Fernet | None = None
        self._have: set[str] = set()
        self._complained: set[str] = set()

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
