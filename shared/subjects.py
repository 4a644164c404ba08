"""Every NATS subject, stream, consumer and KV bucket kgslb uses, in one place.

Names from Kubernetes (dotted names, `user@cluster` contexts, IPv6 VIPs) are encoded with
`encode_token` before they become a subject token or KV key, so they can never split a subject;
the full identity always travels in the payload as well.
"""

from __future__ import annotations

import re

# Streams ------------------------------------------------------------------------------------
STREAM_EVENTS = "KGSLB_EVENTS"
"""The observed world and the policies: last message per subject, file storage, replayable."""
STREAM_STATUS = "KGSLB_STATUS"
"""CR status for the home watcher to write back; last message per subject."""
STREAM_DNSLOG = "KGSLB_DNSLOG"
"""Throttled DNS query logs, kept for a day for `kgslb logs`."""
STREAM_DEADLETTER = "KGSLB_DEADLETTER"
"""Messages a service could not decode, kept for inspection with `nats stream view`."""

# Subject prefixes ---------------------------------------------------------------------------
EVENTS_PREFIX = "kgslb.events"
SYNC_PREFIX = "kgslb.sync"
POLICY_PREFIX = "kgslb.policy"
STATUS_PREFIX = "kgslb.status"
DNSLOG_PREFIX = "kgslb.dnslog"
DEADLETTER_PREFIX = "kgslb.deadletter"

RESYNC_SUBJECT = "kgslb.resync"
"""Core NATS, not stored: the reconciler asks every watcher to publish everything again after
the bus lost its state (`ResyncRequest`)."""

EVENTS_STREAM_SUBJECTS = (f"{EVENTS_PREFIX}.>", f"{SYNC_PREFIX}.>", f"{POLICY_PREFIX}.>")

# KV buckets ---------------------------------------------------------------------------------
KV_SERVICES = "kgslb_services"
"""key = FQDN (`fqdn_key`), value = the desired GSLB service."""
KV_ZONES = "kgslb_zones"
"""key = zone name (`fqdn_key`), value = the zone's SOA, NS, glue and static records."""
KV_HEALTH = "kgslb_health"
"""key = one vantage point's verdict on a member (`health_key`), value = the member's health
as that vantage point sees it."""
KV_LEASES = "kgslb_leases"
"""Leader lease of the reconciler and heartbeats of health replicas (TTL'd bucket)."""
KV_KEYS = "kgslb_keys"
"""key = signed zone name (`fqdn_key`), value = its DNSSEC keys (`ZoneKeys`), private keys
encrypted; created by the reconciler leader, read by every DNS replica."""

FENCE_KEYS = "_kgslb/fence/"
"""In every bucket the reconciler leader writes (`kgslb_services`, `kgslb_zones`): the keys of
the leader's fence (`fence_key`), delete markers a new leader writes on taking over. Every
write of a term is published on condition that its fence key's last sequence is still the one
its leader fenced, so JetStream refuses the writes of any older term (docs/architecture.md,
"Leader fencing"). `fqdn_key` and `member_key` never produce one: they escape `/` (and
`decode_token` refuses it), so readers skip them with `is_fence_key` rather than misread them
as names."""


def fence_key(slot: int) -> str:
    """One of the fence's keys: a replicated stream lets one conditional write per key be in
    flight, so the leader's concurrent writes each hold a slot of their own."""
    return f"{FENCE_KEYS}{slot}"


def is_fence_key(key: str) -> bool:
    return key.startswith(FENCE_KEYS)


STATUS_FENCE_SUBJECT = f"{STATUS_PREFIX}._kgslb/fence"
"""Stream `KGSLB_STATUS`: the reconciler leader's fence there (the leader publishes statuses
one at a time, so one marker does). Readers of `kgslb.status.>` skip it (`is_status_fence`);
no CR or cluster status subject can be it: theirs are longer, with encoded tokens."""


def is_status_fence(subject: str) -> bool:
    return subject == STATUS_FENCE_SUBJECT


RECONCILER_LEASE_KEY = "reconciler"
HOME_KEY = "home"
"""KV `kgslb_leases`: the active home cluster (`ActiveHome`), written by the reconciler leader."""

_SAFE = re.compile(r"[A-Za-z0-9_-]")
_ESCAPE = "="


class _Escapes(dict[int, str]):
    """`str.translate` table: each character outside ``[A-Za-z0-9_-]`` to its escape, filled
    on first use. Every subject and KV key passes here (30,000 per cold start and more): the
    translation runs in C, where a regex match per character took 5-15 % of a service."""

    def __missing__(self, code: int) -> str:
        char = chr(code)
        escaped = (
            char
            if _SAFE.fullmatch(char)
            else "".join(f"{_ESCAPE}{byte:02X}" for byte in char.encode("utf-8"))
        )
        if len(self) < _MAX_CACHED_ESCAPES:
            self[code] = escaped
        return escaped


_MAX_CACHED_ESCAPES = 4096
_ESCAPES = _Escapes()


def encode_token(value: str) -> str:
    """Encode any string into one NATS subject token that is also a valid KV key part.

    Characters outside ``[A-Za-z0-9_-]`` become ``=HH`` per UTF-8 byte; the empty string
    becomes a lone ``=``, which no other input produces.
    """
    if value == "":
        return _ESCAPE
    return value.translate(_ESCAPES)


def decode_token(token: str) -> str:
    """Invert `encode_token`; raises ValueError on a token it could not have produced."""
    if token == _ESCAPE:
        return ""
    raw = bytearray()
    index = 0
    while index < len(token):
        char = token[index]
        if char == _ESCAPE:
            hex_digits = token[index + 1 : index + 3]
            if len(hex_digits) != 2 or not re.fullmatch(r"[0-9A-F]{2}", hex_digits):
                raise ValueError(f"bad escape at {index} in subject token {token!r}")
            raw.append(int(hex_digits, 16))
            index += 3
        elif _SAFE.fullmatch(char):
            raw.extend(char.encode("ascii"))
            index += 1
        else:
            raise ValueError(f"character {char!r} cannot appear in an encoded token {token!r}")
    return raw.decode("utf-8")


def normalize_fqdn(fqdn: str) -> str:
    """DNS names compare case-insensitively and without the root dot."""
    return fqdn.strip().rstrip(".").lower()


def fqdn_key(fqdn: str) -> str:
    """KV key for a DNS name: labels stay readable (`hello.avi.iberia.local`), each escaped."""
    return ".".join(encode_token(label) for label in normalize_fqdn(fqdn).split("."))


def fqdn_from_key(key: str) -> str:
    return ".".join(decode_token(label) for label in key.split("."))


HEALTH_LIVE_PREFIX = "kgslb.health.live"
"""Core NATS (not JetStream): every member health verdict, published by the health replica
as it writes it to KV `kgslb_health`, on `kgslb.health.live.<member key>`. The DNS applies it
at once; the KV stays the durable copy that a starting DNS reads. A site lost with the leader
of the `kgslb_health` stream makes KV writes wait for an election (4 to 9 s); the live
verdicts cross the NATS routes without waiting."""


def health_live_subject(key: str) -> str:
    return f"{HEALTH_LIVE_PREFIX}.{key}"


def key_from_health_live_subject(subject: str) -> str:
    """The member key of a live verdict's subject; ValueError for any other subject."""
    prefix = f"{HEALTH_LIVE_PREFIX}."
    if not subject.startswith(prefix) or len(subject) == len(prefix):
        raise ValueError(f"not a live health subject: {subject!r}")
    return subject[len(prefix) :]


def member_key(fqdn: str, ip: str) -> str:
    """Health is per (FQDN, member IP): the monitor sends the FQDN as Host header."""
    return f"{encode_token(normalize_fqdn(fqdn))}.{encode_token(ip)}"


def health_key(member: str, site: str = "") -> str:
    """KV `kgslb_health` key of one vantage point's verdict on a member (`member_key`): the
    member key itself for a health replica without a site (one vantage point, the layout
    before sites), `<fqdn>.<ip>.<site>` for the replicas of one site."""
    return f"{member}.{encode_token(site)}" if site else member


def split_health_key(key: str) -> tuple[str, str]:
    """(member key, site) of a KV `kgslb_health` key; site "" for a key without a site.
    Raises ValueError for a key no health replica writes."""
    tokens = key.split(".")
    if len(tokens) == 2:
        return key, ""
    if len(tokens) == 3 and tokens[2] != _ESCAPE:
        return f"{tokens[0]}.{tokens[1]}", decode_token(tokens[2])
    raise ValueError(
        f"KV {KV_HEALTH} key {key!r} is neither <fqdn>.<ip> nor <fqdn>.<ip>.<site> "
        "(each part one encoded token)"
    )


def health_keys_of_site(site: str) -> str:
    """KV `kgslb_health` filter for the verdicts of one site's replicas (`*.*` without a
    site: exactly the two-token keys, never a site's)."""
    return f"*.*.{encode_token(site)}" if site else "*.*"


def event_subject(cluster: str, kind: str, namespace: str, name: str) -> str:
    tokens = (cluster, kind, namespace, name)
    return f"{EVENTS_PREFIX}." + ".".join(encode_token(token) for token in tokens)


def events_of_cluster(cluster: str) -> str:
    """Wildcard for every event of one cluster (used to purge or inspect a cluster)."""
    return f"{EVENTS_PREFIX}.{encode_token(cluster)}.>"


def sync_subject(cluster: str) -> str:
    return f"{SYNC_PREFIX}.{encode_token(cluster)}"


def policy_subject(kind: str, namespace: str, name: str) -> str:
    return f"{POLICY_PREFIX}." + ".".join(encode_token(t) for t in (kind, namespace, name))


def status_subject(kind: str, namespace: str, name: str) -> str:
    return f"{STATUS_PREFIX}." + ".".join(encode_token(t) for t in (kind, namespace, name))


def cluster_status_subject(cluster: str) -> str:
    """A member cluster's reachability (`ClusterStatus`), kept in the status stream; one token
    shorter than a CR's status subject, so `kgslb.status.*.*.*` matches only CR statuses."""
    return f"{STATUS_PREFIX}.cluster.{encode_token(cluster)}"


def dnslog_subject(zone: str) -> str:
    return f"{DNSLOG_PREFIX}.{encode_token(normalize_fqdn(zone))}"


def deadletter_subject(service: str, original_subject: str) -> str:
    return f"{DEADLETTER_PREFIX}.{encode_token(service)}.{encode_token(original_subject)}"


HEALTH_REPLICA_KEYS = "health.*"
"""KV `kgslb_leases` filter matching the heartbeat of every health replica."""


def health_replica_key(replica: str) -> str:
    return f"health.{encode_token(replica)}"


HOLD_KEYS = "hold.*.*"
"""KV `kgslb_leases` filter matching every held member (`MemberHold`, GDP manualResume)."""
_HOLD = "hold."


def hold_key(member: str) -> str:
    """The hold of a member (`member_key(fqdn, ip)`): it went down under manualResume and is
    not answered until an operator resumes it (`kgslb member resume`)."""
    return f"{_HOLD}{member}"


def member_of_hold_key(key: str) -> str:
    if not key.startswith(_HOLD) or key.count(".") != 2:
        raise ValueError(f"KV {KV_LEASES} key {key!r} is not hold.<fqdn>.<ip>")
    return key[len(_HOLD) :]


WATCHER_KEYS = "watcher.*"
"""KV `kgslb_leases` filter matching the heartbeat of every watcher."""


def watcher_key(cluster: str) -> str:
    """The heartbeat of the watcher of one cluster (`WatcherHeartbeat`)."""
    return f"watcher.{encode_token(cluster)}"
