"""`kgslb dnssec ds ZONE`: the DS record(s) of a signed zone's KSK, to hand to the parent zone
(or `--dnskey`: the DNSKEY RRset, a trust anchor for `delv`/`unbound` tests). Reads KV
`kgslb_keys`; needs no secret (the public halves are stored in the clear)."""

from __future__ import annotations

import asyncio

from nats.js.errors import BucketNotFoundError, NotFoundError

from shared import bus, dnssec, subjects, wire
from shared.models import ZoneKeys
from shared.settings import NatsSettings
from shared.subjects import normalize_fqdn


class DnssecError(Exception):
    """Nothing to print: the zone has no keys (yet), or the bucket cannot be read."""


async def read_zone_keys(settings: NatsSettings, zone: str) -> ZoneKeys:
    nc = await bus.connect(settings, "kgslb-dnssec")
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(subjects.KV_KEYS)
            entry = await kv.get(subjects.fqdn_key(normalize_fqdn(zone)))
        except (BucketNotFoundError, NotFoundError):
            raise DnssecError(
                f"zone {normalize_fqdn(zone)} has no DNSSEC keys in KV {subjects.KV_KEYS}: is it "
                "signed (GSLBConfig zones[].dnssec.enabled: true) and the reconciler running "
                "with --dnssec-key-secret?"
            ) from None
        assert entry.value is not None
        return wire.decode(entry.value, ZoneKeys)
    finally:
        await nc.drain()


def zone_lines(keys: ZoneKeys, show_dnskey: bool, digest: str) -> list[str]:
    if not show_dnskey:
        return dnssec.ds_records(keys, digest)
    return [
        f"{keys.zone} IN DNSKEY {dnssec.dnskey(key).to_text()}  ; {key.role.value} "
        f"{key.state.value}, key tag {dnssec.key_tag(key)}"
        for key in keys.keys
    ]


TIMEOUT_SECONDS = 15.0


def ds_command(settings: NatsSettings, zone: str, show_dnskey: bool, digest: str) -> list[str]:
    try:
        keys = asyncio.run(asyncio.wait_for(read_zone_keys(settings, zone), TIMEOUT_SECONDS))
    except TimeoutError:
        raise DnssecError(
            f"no answer from NATS at {bus.redact_url(settings.nats_url)} within "
            f"{TIMEOUT_SECONDS:g} s (--nats-url)"
        ) from None
    return zone_lines(keys, show_dnskey, digest)
