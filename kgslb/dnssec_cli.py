"""`kgslb dnssec ds ZONE`: the DS record(s) of a signed zone's KSK, to hand to the parent zone
(or `--dnskey`: the DNSKEY RRset, a trust anchor for `delv`/`unbound` tests). Reads KV
`kgslb_keys` only (`kgslb.natscmd`: fails fast, changes nothing); needs no secret (the public
halves are stored in the clear)."""

from __future__ import annotations

from nats.js.errors import NotFoundError

from kgslb import natscmd
from shared import dnssec, subjects, wire
from shared.models import ZoneKeys
from shared.settings import NatsSettings
from shared.subjects import normalize_fqdn


class DnssecError(Exception):
    """Nothing to print: the zone has no keys (yet)."""


async def read_zone_keys(settings: NatsSettings, zone: str) -> ZoneKeys:
    async with natscmd.session(settings, "kgslb-dnssec") as nc:
        js = nc.jetstream()
        await natscmd.require(js, [f"KV_{subjects.KV_KEYS}"], settings.nats_url)
        kv = await js.key_value(subjects.KV_KEYS)
        try:
            entry = await kv.get(subjects.fqdn_key(normalize_fqdn(zone)))
        except NotFoundError:
            raise DnssecError(
                f"zone {normalize_fqdn(zone)} has no DNSSEC keys in KV {subjects.KV_KEYS}: is it "
                "signed (GSLBConfig zones[].dnssec.enabled: true) and the reconciler running "
                "with --dnssec-key-secret?"
            ) from None
        assert entry.value is not None
        return wire.decode(entry.value, ZoneKeys)


def zone_lines(keys: ZoneKeys, show_dnskey: bool, digest: str) -> list[str]:
    if not show_dnskey:
        return dnssec.ds_records(keys, digest)
    return [
        f"{keys.zone} IN DNSKEY {dnssec.dnskey(key).to_text()}  ; {key.role.value} "
        f"{key.state.value}, key tag {dnssec.key_tag(key)}"
        for key in keys.keys
    ]
