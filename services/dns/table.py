"""The in-memory answer table: the zones and GSLB names the KV holds, kept up to date piece by
piece, and the lookup that turns one parsed query into one response packet. A query never
waits on anything; every change bumps `generation` so that the server's response cache knows
to start over.

What a zone answers lives in `zone.py`, what a GSLB name answers in `gslb.py` (its algorithm
in `algorithms.py`); this module finds the zone and the name, and assembles the packet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.dns import wire
from services.dns.algorithms import Caching, Client, Pick
from services.dns.denial import APEX_KEY_TYPES, NSEC, RRSIG, SigningKey
from services.dns.geo import GeoIp, Lookup
from services.dns.gslb import GslbName, NameSpec, decide
from services.dns.rotation import Rotation, Target
from services.dns.signed import SignedZone, Window, make_signer, rotation_section, types_at
from services.dns.zone import (
    SERIAL_MODULO,
    RRSet,
    Section,
    Zone,
    build_zone,
    is_under,
    store_epoch,
    strict_ancestors,
    with_serial,
    zone_serial,
)
from shared.models import GslbService, HealthState, ZoneSpec
from shared.names import BadName, hostname_problem
from shared.subjects import normalize_fqdn

MAX_CNAME_CHAIN = 8
ANY_PREFERENCE = (wire.A, wire.AAAA, wire.CNAME, wire.MX, wire.TXT, wire.SRV, wire.NS, wire.SOA)
"""RFC 8482: ANY gets one RRset; the first of these the name has."""


@dataclass(slots=True)
class Response:
    """One answer: the packet (None: stay silent) and what the query log and cache need."""

    packet: bytes | None
    rcode: int
    zone: str = ""
    members: tuple[Target, ...] = ()
    ips: tuple[str, ...] = ()
    """Addresses answered: the members', or a static A/AAAA set's."""
    rotation: Rotation | None = None
    """Set when the answer is a round-robin turn that depends on nothing but the packet:
    the response cache may then serve `variants[rotation.next_position()]`."""
    variants: tuple[bytes, ...] = ()
    cacheable: bool = False
    """The same packet always gets this response (or the rotation's next variant)."""


@dataclass
class AnswerTable:
    udp_payload_limit: int = wire.DEFAULT_EDNS_UDP_SIZE
    """The most we send over UDP and what our OPT record advertises."""
    zones: dict[bytes, Zone] = field(default_factory=dict)
    health: dict[str, HealthState] = field(default_factory=dict)
    gslb: dict[bytes, GslbName] = field(default_factory=dict)
    generation: int = 0
    """Bumped on every change: responses cached under an older generation are stale."""
    geoip: GeoIp = field(default_factory=GeoIp)
    """The GeoIP database of the Geo names (none until `set_geoip`)."""
    _by_health_key: dict[str, bytes] = field(default_factory=dict)
    """Member health key -> the GSLB name it belongs to (the key embeds the name)."""
    _interned: dict[str, str] = field(default_factory=dict)
    _ancestors: Counter[bytes] = field(default_factory=Counter)
    _zone_revisions: dict[bytes, int] = field(default_factory=dict)
    _service_revisions: dict[bytes, int] = field(default_factory=dict)
    """The last KV revision seen for each GSLB name, deletions included (for serials)."""
    _zone_services_revisions: dict[bytes, int] = field(default_factory=dict)
    """Per zone, the highest of `_service_revisions` at or under it."""
    epochs: dict[str, int] = field(default_factory=dict)
    _serials: dict[bytes, int] = field(default_factory=dict)
    """The last serial answered per zone, kept when the zone goes: a serial never goes back,
    not even after a lost JetStream store made every KV revision start from 1 again."""
    _retired_answers: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    """Per fqdn, answers counted on rotations that a change has since replaced, by (cluster,
    ip). Forgotten when the name is removed, so deleted names do not accumulate."""
    dnssec_window: Window = field(default_factory=Window)
    signed: dict[bytes, SignedZone] = field(default_factory=dict)
    """Per signed zone that has its keys: the signer and the signatures made so far."""
    _zone_keys: dict[bytes, Sequence[SigningKey]] = field(default_factory=dict)
    signatures_made: Counter[bytes] = field(default_factory=Counter)
    """RRsets signed since start, per zone key (the signatures of one RRset count once)."""
    _signing_time: int = 0
    """The clock as the shell last told it (keys or refresh): a zone loaded later signs from
    then; the next refresh moves it on."""

    # Updates ----------------------------------------------------------------------------

    def set_zone(self, spec: ZoneSpec, revision: int = 0) -> None:
        key = wire.name_to_wire(normalize_fqdn(spec.name))
        services_revision = self._zone_services_revisions.get(key)
        if services_revision is None:
            services_revision = self._services_revision(key)
        zone = build_zone(spec)  # its serial is derived once the zone is in place
        old = self.zones.get(zone.key)
        if old is not None:
            self._count_ancestors(old, -1)
        self.zones[zone.key] = zone
        self._zone_revisions[zone.key] = revision
        self._zone_services_revisions[zone.key] = services_revision
        self._reserial(zone.key, services_revision)
        self._count_ancestors(zone, +1)
        previous = self.signed.get(zone.key)
        self._sign_zone(zone.key, previous.signed_at if previous else None, keep=True)
        self.generation += 1

    def set_geoip(self, lookup: Lookup | None, source: str = "") -> None:
        """Look Geo clients up in a new database from now on (None: no database)."""
        self.geoip.replace(lookup, source)
        self.generation += 1

    def remove_zone(self, name: str) -> None:
        zone = self.zones.pop(wire.name_to_wire(normalize_fqdn(name)), None)
        if zone is not None:
            self._count_ancestors(zone, -1)
            self._zone_revisions.pop(zone.key, None)
            self._zone_services_revisions.pop(zone.key, None)
            self.signed.pop(zone.key, None)
            self.generation += 1

    # DNSSEC ------------------------------------------------------------------------------

    def set_zone_keys(self, name: str, keys: Sequence[SigningKey] | None, now: int) -> None:
        """The zone's keys (None: gone); signs from `now` on if the zone is signed. Raises
        ValueError when the keys cannot sign (no active KSK or ZSK); the old ones stay."""
        key = wire.name_to_wire(normalize_fqdn(name))
        self._signing_time = now
        previous = self._zone_keys.get(key)
        if keys is None:
            self._zone_keys.pop(key, None)
        else:
            self._zone_keys[key] = keys
        try:
            self._sign_zone(key, now)
        except ValueError:
            if previous is not None:
                self._zone_keys[key] = previous
            raise
        self.generation += 1

    def refresh_signatures(self, now: int) -> list[str]:
        """Re-sign (lazily) the zones whose signatures are `resign_seconds` old: returns them."""
        self._signing_time = now
        due = [
            key
            for key, signed in self.signed.items()
            if now - signed.signed_at >= self.dnssec_window.resign_seconds
        ]
        for key in due:
            self._sign_zone(key, now)
        if due:
            self.generation += 1
        return [self.zones[key].name for key in due]

    def _sign_zone(self, key: bytes, now: int | None, keep: bool = False) -> None:
        """(Re)build the zone's signer. `now` None: the zone's first signing, at once. `keep`:
        same keys and window (a zone update), so the signatures made so far stay valid."""
        zone = self.zones.get(key)
        keys = self._zone_keys.get(key)
        if zone is None or keys is None or not zone.spec.signed:
            self.signed.pop(key, None)
            return
        previous = self.signed.get(key)
        signed_at = now if now is not None else self._signing_time
        self.signed[key] = make_signer(
            zone, keys, signed_at, self.dnssec_window, self.signatures_made
        )
        if keep and previous is not None and previous.signed_at == signed_at:
            self.signed[key].signatures = previous.signatures

    def _count_ancestors(self, zone: Zone, sign: int) -> None:
        for owner in zone.static:
            for parent in strict_ancestors(owner, zone.key):
                self._ancestors[parent] += sign

    def set_service(self, service: GslbService, revision: int = 0) -> BadName | None:
        """Answer `service` from now on. A name that is not a hostname (never planned; written
        by hand or by an older reconciler) is refused and returned, and nothing changes."""
        if (bad := hostname_problem(service.fqdn)) is not None:
            return bad
        spec = NameSpec.of(service, self._interned, self.geoip)
        key = wire.name_to_wire(spec.fqdn)
        self._drop_service(key)
        self.gslb[key] = GslbName(spec, self.health)
        for target in spec.targets():
            self._by_health_key[target.health_key] = key
        for parent in strict_ancestors(key, b""):
            self._ancestors[parent] += 1
        self._service_changed(key, revision)
        return None

    def remove_service(self, fqdn: str, revision: int = 0) -> None:
        if hostname_problem(fqdn) is not None:
            return  # never set: nothing to remove
        key = wire.name_to_wire(normalize_fqdn(fqdn))
        self._drop_service(key)
        self._retired_answers.pop(normalize_fqdn(fqdn), None)
        self._service_changed(key, revision)

    def _drop_service(self, key: bytes) -> None:
        name = self.gslb.pop(key, None)
        if name is None:
            return
        self._retire(name)
        for target in name.spec.targets():
            self._by_health_key.pop(target.health_key, None)
        for parent in strict_ancestors(key, b""):
            self._ancestors[parent] -= 1

    def set_health(self, key: str, state: HealthState | None) -> None:
        """Only `down` removes a member: `unknown` (not probed yet) keeps answering."""
        was_down = self.health.get(key) == HealthState.DOWN
        if state is None:
            self.health.pop(key, None)
        else:
            self.health[key] = state
        if was_down == (state == HealthState.DOWN):
            return
        name = self._by_health_key.get(key)
        if name is not None:
            old = self.gslb[name]
            self._retire(old)
            self.gslb[name] = GslbName(old.spec, self.health)
            self.generation += 1

    def _retire(self, name: GslbName) -> None:
        """Keep what a replaced name counted: the answer counters only grow."""
        retired = self._retired_answers.setdefault(name.spec.fqdn, Counter())
        for target, times in name.answers_by_member():
            retired[(target.cluster, target.ip)] += times

    def answers_by_member(self) -> Counter[tuple[str, str, str]]:
        """Answers given per (fqdn, cluster, ip) since start: a scrape-time sum, not a
        per-query count. Response-cache hits are turns too, so they are included."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for fqdn, retired in list(self._retired_answers.items()):
            for (cluster, ip), times in list(retired.items()):
                counts[(fqdn, cluster, ip)] += times
        for name in list(self.gslb.values()):
            fqdn = name.spec.fqdn
            for target, times in name.answers_by_member():
                counts[(fqdn, target.cluster, target.ip)] += times
        return counts

    # Serials ----------------------------------------------------------------------------

    def _services_revision(self, zone_key: bytes) -> int:
        """The highest revision of any GSLB name at or under the zone, deletions included, and
        names of sub-zones too, so that adding a sub-zone never lowers it. Scans every name:
        only for a zone that appears; names that change later raise it in `_service_changed`."""
        return max(
            (
                revision
                for key, revision in self._service_revisions.items()
                if key == zone_key or (key.endswith(zone_key) and is_under(key, zone_key))
            ),
            default=0,
        )

    def _service_changed(self, key: bytes, revision: int) -> None:
        # KV revisions only grow, so a running maximum is the maximum over everything seen.
        self._service_revisions[key] = max(revision, self._service_revisions.get(key, 0))
        for suffix in (key, *wire.parents(key)):
            zone = self.zones.get(suffix)
            if zone is None or revision <= self._zone_services_revisions.get(suffix, 0):
                continue
            self._zone_services_revisions[suffix] = revision
            self._reserial(suffix, revision)
        self.generation += 1

    def set_store_epoch(self, bucket: str, created_seconds: int) -> None:
        """A followed bucket's creation time: its `store_epoch` (per bucket, in `epochs`) is
        in every serial, so a bucket created anew (lost store) moves serials on."""
        if self.epochs.setdefault(bucket, 0) == (epoch := store_epoch(created_seconds)):
            return  # unchanged (or before 2025): no floor bump, or replicas would disagree
        self.epochs[bucket] = epoch
        for key in self.zones:
            self._reserial(key, self._zone_services_revisions.get(key, 0))
        self.generation += 1

    def _reserial(self, key: bytes, services_revision: int) -> None:
        zone, epoch = self.zones[key], sum(self.epochs.values())
        serial = zone_serial(zone.spec, self._zone_revisions.get(key, 0), services_revision, epoch)
        self.zones[key] = with_serial(zone, self._not_back(key, serial))

    def _not_back(self, zone_key: bytes, serial: int) -> int:
        """`serial`, or one more than the last one when it would not move forward: the
        serial floor. Replicas that saw the same history agree; after a rebuild a running
        replica stays above what it answered before."""
        last = self._serials.get(zone_key)
        if last is not None and serial <= last:
            serial = (last + 1) % SERIAL_MODULO
        self._serials[zone_key] = serial
        return serial

    def forget_revisions(self) -> None:
        """The KV buckets were created anew (lost JetStream store) and count from 1 again:
        serials go on from the floor until the new revisions pass it."""
        self._zone_revisions.clear()
        self._service_revisions.clear()
        self._zone_services_revisions.clear()

    def serial(self, zone: str) -> int:
        return self.zones[wire.name_to_wire(normalize_fqdn(zone))].serial

    # Lookup -----------------------------------------------------------------------------

    def find_zone(self, key: bytes, label_offsets: Iterable[int]) -> Zone | None:
        zones = self.zones
        for offset in label_offsets:
            zone = zones.get(key[offset:])
            if zone is not None:
                return zone
        return zones.get(b"\x00")

    def answer(self, query: wire.Query, client_ip: str, udp: bool = True) -> Response:
        if query.edns and query.edns_version > 0:
            return self._badvers(query)
        zone = self.find_zone(query.key, query.label_offsets)
        qtype = query.qtype
        if zone is None or query.qclass != wire.CLASS_IN or qtype in (wire.AXFR, wire.IXFR):
            return self._reply(query, wire.REFUSED, False, udp, None, Section())
        key = query.key
        signed = self.signed.get(zone.key) if query.dnssec_ok else None
        cut = zone.delegation(key, qtype)
        if cut is not None:
            referral = cut.referral()
            if signed is not None:
                signed.add_no_ds(referral, cut.key, zone.negative_ttl)
            return self._reply(query, wire.NOERROR, False, udp, zone, referral)
        rrsets = zone.static.get(key)
        gslb = self.gslb.get(key)
        if qtype == wire.ANY:
            qtype = self._any_type(rrsets, gslb, key == zone.key)
        client = Client.of(query.client_subnet, client_ip)
        if gslb is not None and qtype in (wire.A, wire.AAAA):
            pick = decide(gslb, qtype, client)
            if pick is not None:
                return self._gslb_reply(query, udp, zone, pick, signed)
            if gslb.has_family(qtype) and gslb.all_down_is_empty:
                # EMPTY answers NODATA even in a zone that drops unhandled queries.
                return self._negative(query, zone, wire.NOERROR, udp, signed, rrsets, gslb, True)
        if qtype == RRSIG and zone.key in self.signed:
            rotations = [r for r in (gslb.a, gslb.aaaa) if r is not None] if gslb else []
            sigs = self.signed[zone.key].all_rrsigs(zone, key, rrsets, rotations)
            if sigs is not None:
                return self._reply(query, wire.NOERROR, True, udp, zone, sigs)
        if key == zone.key and qtype in APEX_KEY_TYPES and zone.key in self.signed:
            keyset = self.signed[zone.key].signer.apex_set(qtype)
            section = Section([keyset.render()], keyset.count)
            if signed is not None:
                signed.add_rrsig(section, key, keyset, wire.QUESTION_NAME_POINTER)
            return self._reply(query, wire.NOERROR, True, udp, zone, section)
        exists = rrsets is not None or gslb is not None or bool(self._ancestors.get(key))
        if qtype == NSEC and exists and zone.key in self.signed:
            nsec = self.signed[zone.key].nsec_answer(zone, key, rrsets, gslb, query.dnssec_ok)
            if nsec is not None:
                return self._reply(query, wire.NOERROR, True, udp, zone, nsec)
        if rrsets is not None:
            static = zone.static_answer(key, qtype)
            if static is not None:
                section, found = static
                if signed is not None:
                    signed.add_rrsig(section, key, found, wire.QUESTION_NAME_POINTER)
                    if qtype == wire.NS and key == zone.key:
                        signed.add_glue_rrsigs(section, zone)
                return self._reply(query, wire.NOERROR, True, udp, zone, section, found.ips)
            cname = rrsets.get(wire.CNAME)
            if cname is not None:
                return self._cname_reply(query, udp, zone, cname, qtype, client, signed)
        if exists:
            return self._negative(query, zone, wire.NOERROR, udp, signed, rrsets, gslb)
        return self._negative(query, zone, wire.NXDOMAIN, udp, signed, rrsets, gslb)

    def _negative(
        self,
        query: wire.Query,
        zone: Zone,
        rcode: int,
        udp: bool,
        signed: SignedZone | None,
        rrsets: Mapping[int, RRSet] | None,
        gslb: GslbName | None,
        always: bool = False,
    ) -> Response:
        """NXDOMAIN or NODATA: answered with the SOA (and, for a DO query in a signed zone, the
        NSEC proof), or dropped if the zone says so and not `always`."""
        if zone.drop_unhandled and not always:
            return Response(None, rcode, zone.name, cacheable=False)
        if signed is None:
            return self._reply(query, rcode, True, udp, zone, zone.negative())
        types = types_at(zone, query.key, rrsets, gslb, query.qtype)
        section = zone.negative()
        signed.add_negative(section, zone, rcode, query.key, types)
        return self._reply(query, rcode, True, udp, zone, section)

    @staticmethod
    def _any_type(rrsets: Mapping[int, RRSet] | None, gslb: GslbName | None, apex: bool) -> int:
        if gslb is not None:
            for qtype in (wire.A, wire.AAAA):
                if gslb.rotation(qtype) is not None:
                    return qtype
        for qtype in ANY_PREFERENCE:
            if rrsets is not None and (qtype in rrsets or (apex and qtype == wire.SOA)):
                return qtype
        return wire.ANY

    def _gslb_reply(
        self, query: wire.Query, udp: bool, zone: Zone, pick: Pick, signed: SignedZone | None
    ) -> Response:
        rotation = pick.rotation
        position = pick.take_position()
        members = rotation.chosen(position)
        ips = tuple(m.ip for m in members)
        response = self._reply(
            query, wire.NOERROR, True, udp, zone,
            rotation_section(rotation, position, query.key, signed), ips, pick.ecs_scope,
        )  # fmt: skip
        response.members = members
        if pick.caching is Caching.NEVER:
            response.cacheable = False
        elif pick.caching is Caching.TURNS and udp and response.packet is not None:
            response.rotation = rotation
            if len(rotation.cycle.order) == 1 or response.packet[2] & 0x02:
                response.variants = (response.packet,) * len(rotation.cycle.order)
            else:
                response.variants = tuple(
                    self._reply(
                        query, wire.NOERROR, True, udp, zone,
                        rotation_section(rotation, p, query.key, signed), (),
                        pick.ecs_scope,
                    ).packet or b""
                    for p in range(len(rotation.records))
                )  # fmt: skip
        return response

    def _cname_reply(
        self,
        query: wire.Query,
        udp: bool,
        zone: Zone,
        cname: RRSet,
        qtype: int,
        client: Client,
        signed: SignedZone | None,
    ) -> Response:
        """RFC 1034 4.3.2: answer the CNAME and, while the target is ours, its records (each
        RRset with its RRSIGs when the query has DO and the target's zone is signed)."""
        section = Section([cname.render()], cname.count)
        if signed is not None:
            signed.add_rrsig(section, query.key, cname, wire.QUESTION_NAME_POINTER)
        members: tuple[Target, ...] = ()
        ips: tuple[str, ...] = ()
        ecs_scope = 0
        cacheable = True
        rcode = wire.NOERROR
        seen = {query.key}
        target = cname.first_target
        while len(seen) <= MAX_CNAME_CHAIN and target not in seen:
            seen.add(target)
            target_zone = self.find_zone(target, wire.label_offsets(target))
            if target_zone is None or target_zone.delegation(target, qtype) is not None:
                break
            target_signed = self.signed.get(target_zone.key) if query.dnssec_ok else None
            gslb = self.gslb.get(target)
            if gslb is not None and qtype in (wire.A, wire.AAAA):
                pick = decide(gslb, qtype, client)
                if pick is not None:
                    position = pick.take_position()
                    section.answer.append(pick.rotation.render(position, target))
                    section.answer_count += pick.rotation.count
                    if target_signed is not None:
                        chosen = pick.rotation.cycle.chosen[position]
                        answered = RRSet(tuple(pick.rotation.tails[i] for i in chosen))
                        target_signed.add_rrsig(section, target, answered, target)
                    members = pick.rotation.chosen(position)
                    ips = tuple(m.ip for m in members)
                    ecs_scope = pick.ecs_scope
                    # Not cached, whatever the pick allows: a cached answer's hits are
                    # counted for the name asked (the alias), and a rotation's cached
                    # variants render under the question name, not the target.
                    cacheable = False
                    break
            rrsets = target_zone.static.get(target, {})
            rrset = rrsets.get(qtype)
            if rrset is not None:
                section.answer.append(rrset.render(target))
                section.answer_count += rrset.count
                if target_signed is not None:
                    target_signed.add_rrsig(section, target, rrset, target)
                ips = rrset.ips
                break
            next_cname = rrsets.get(wire.CNAME)
            if next_cname is None:
                # Ends in our zone at a name without this type, or at none: the last name's
                # rcode (RFC 6604 2), SOA (RFC 2308 2) and, signed, NSEC proof, as if asked.
                exists = bool(rrsets) or gslb is not None or bool(self._ancestors.get(target))
                rcode = wire.NOERROR if exists else wire.NXDOMAIN
                section.authority, section.authority_count = target_zone.negative_soa, 1
                if target_signed is not None:
                    types = types_at(target_zone, target, rrsets, gslb, qtype)
                    target_signed.add_negative(section, target_zone, rcode, target, types)
                break
            section.answer.append(next_cname.render(target))
            section.answer_count += next_cname.count
            if target_signed is not None:
                target_signed.add_rrsig(section, target, next_cname, target)
            target = next_cname.first_target
        response = self._reply(query, rcode, True, udp, zone, section, ips, ecs_scope)
        response.members = members
        response.cacheable = response.cacheable and cacheable
        return response

    # Packets ----------------------------------------------------------------------------

    def _opt(self, query: wire.Query, ecs_scope: int = 0, ext_rcode: int = 0) -> bytes:
        """Our OPT record for a query that has one: our UDP size, the query's ECS with our
        scope, and its DO bit copied back (RFC 3225 3)."""
        if not query.edns:
            return b""
        subnet = query.client_subnet
        options = subnet.option(ecs_scope) if subnet is not None else b""
        return wire.opt_record(self.udp_payload_limit, ext_rcode, options, query.dnssec_ok)

    def _badvers(self, query: wire.Query) -> Response:
        # RFC 6891 6.1.3: BADVERS is 16, so the upper 8 bits go in the OPT record.
        packet = (
            wire.header(query.id, query.flags, wire.BADVERS & 0xF, False, (1, 0, 0, 1))
            + query.question
            + self._opt(query, ext_rcode=wire.BADVERS >> 4)
        )
        return Response(packet, wire.BADVERS, cacheable=True)

    def _reply(
        self,
        query: wire.Query,
        rcode: int,
        aa: bool,
        udp: bool,
        zone: Zone | None,
        section: Section,
        ips: tuple[str, ...] = (),
        ecs_scope: int = 0,
    ) -> Response:
        opt = self._opt(query, ecs_scope)
        opt_count = 1 if opt else 0
        answer = b"".join(section.answer)
        head = (1, section.answer_count, section.authority_count)
        packet = b"".join(
            (
                wire.header(query.id, query.flags, rcode, aa, (*head, section.additional_count + opt_count)),
                query.question,
                answer,
                section.authority,
                section.additional,
                opt,
            )
        )  # fmt: skip
        if udp and len(packet) > query.max_udp_size(self.udp_payload_limit):
            packet = self._fit(query, rcode, aa, head, answer, section.authority, opt)
        return Response(packet, rcode, zone.name if zone else "", ips=ips, cacheable=True)

    def _fit(
        self,
        query: wire.Query,
        rcode: int,
        aa: bool,
        head: tuple[int, int, int],
        answer: bytes,
        authority: bytes,
        opt: bytes,
    ) -> bytes:
        """RFC 2181 9: drop the additional section first; set TC only when the answer and
        authority themselves do not fit."""
        opt_count = 1 if opt else 0
        without_extra = b"".join(
            (
                wire.header(query.id, query.flags, rcode, aa, (*head, opt_count)),
                query.question, answer, authority, opt,
            )
        )  # fmt: skip
        if len(without_extra) <= query.max_udp_size(self.udp_payload_limit):
            return without_extra
        return (
            wire.header(query.id, query.flags, rcode, aa, (1, 0, 0, opt_count), tc=True)
            + query.question
            + opt
        )
