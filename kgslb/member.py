"""`kgslb member resume FQDN CLUSTER`: let the members of CLUSTER that are held under
manualResume (KV `kgslb_leases`, keys `hold.<fqdn>.<ip>`) be answered again. The DNS replicas
follow those keys, so all of them answer the member again at once."""

from __future__ import annotations

import sys

from nats.js.errors import KeyNotFoundError

from kgslb import natscmd
from shared import bus, subjects, wire
from shared.models import GslbService, MemberHold
from shared.settings import NatsSettings


class MemberError(RuntimeError):
    """The request cannot be carried out; the text says why and what to do."""


async def resume(settings: NatsSettings, fqdn: str, cluster: str) -> list[MemberHold]:
    """Delete the holds of the FQDN's members in CLUSTER; returns what was held."""
    name = subjects.normalize_fqdn(fqdn)
    async with natscmd.session(settings, "kgslb-member") as nc:
        js = nc.jetstream()
        buckets = (subjects.KV_SERVICES, subjects.KV_LEASES)
        await natscmd.require(js, [bus.kv_stream(b) for b in buckets], settings.nats_url)
        services = await js.key_value(subjects.KV_SERVICES)
        try:
            entry = await services.get(subjects.fqdn_key(name))
        except KeyNotFoundError:
            raise MemberError(
                f"{name} is not a GSLB service (no key in KV kgslb_services)"
            ) from None
        service = wire.decode(entry.value or b"", GslbService)
        members = [m for m in service.all_members() if m.cluster == cluster]
        if not members:
            clusters = sorted({m.cluster for m in service.all_members()})
            raise MemberError(
                f"{name} has no member in cluster {cluster!r} (its clusters: "
                f"{', '.join(clusters) or 'none'})"
            )
        leases = await js.key_value(subjects.KV_LEASES)
        resumed = []
        for member in members:
            key = subjects.hold_key(subjects.member_key(name, member.probe_ip))
            try:
                held = await leases.get(key)
            except KeyNotFoundError:
                continue
            resumed.append(wire.decode(held.value or b"", MemberHold))
            await leases.delete(key)
        if not resumed:
            state = "" if service.manual_resume else " (the name has no manualResume)"
            raise MemberError(f"nothing is held for {name} in cluster {cluster}{state}")
        return resumed


async def run_resume(settings: NatsSettings, fqdn: str, cluster: str) -> int:
    """What `kgslb member resume` prints; the exit code."""
    try:
        resumed = await resume(settings, fqdn, cluster)
    except MemberError as exc:
        print(f"kgslb member resume: {exc}", file=sys.stderr)
        return 1
    for hold in resumed:
        print(
            f"resumed {hold.fqdn} {hold.cluster} {hold.ip} (held since "
            f"{hold.since:%Y-%m-%d %H:%M:%S}Z); if it is still down it is held again"
        )
    return 0
