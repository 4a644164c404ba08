"""Render `permissions.conf`: the NATS publish/subscribe permissions of every kgslb service,
derived from shared/subjects.py so that a renamed subject cannot drift from its grant.

Run from the repository root: `.venv/bin/python -m deploy.nats.render_permissions`. A unit
test fails when the checked-in file differs from what this writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared import subjects
from shared.bus import KV_BUCKETS

HERE = Path(__file__).resolve().parent

STREAMS = (
    subjects.STREAM_EVENTS,
    subjects.STREAM_STATUS,
    subjects.STREAM_DNSLOG,
    subjects.STREAM_DEADLETTER,
)
INBOX = "_INBOX.>"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


@dataclass(frozen=True)
class Grant:
    """What one service may do on NATS; anything not granted is refused by the server."""

    summary: str
    publishes: tuple[str, ...] = ()
    reads_streams: tuple[str, ...] = ()
    reads_buckets: tuple[str, ...] = ()
    writes_buckets: tuple[str, ...] = ()
    owns_streams: bool = False
    """Create and update every stream and bucket (`bus.bootstrap`); others only look them up."""
    subscribes: tuple[str, ...] = ()
    """Core NATS subjects it listens to, besides the replies to its own requests."""

    def publish_allow(self) -> list[str]:
        every = (*STREAMS, *(kv_stream(b) for b in KV_BUCKETS))
        allow = [f"$JS.API.STREAM.INFO.{stream}" for stream in every]
        if self.owns_streams:
            allow += [f"$JS.API.STREAM.{op}.{s}" for s in every for op in ("CREATE", "UPDATE")]
        for stream in self.reads_streams:
            allow += consume(stream)
        for bucket in (*self.reads_buckets, *self.writes_buckets):
            allow += read_bucket(bucket)
        allow += [f"$KV.{bucket}.>" for bucket in self.writes_buckets]
        return allow + list(self.publishes)


def consume(stream: str) -> list[str]:
    """Ordered, pull and durable consumers on one stream, with their acks and flow control."""
    api = "$JS.API.CONSUMER"
    return [
        f"{api}.CREATE.{stream}",
        f"{api}.CREATE.{stream}.>",
        f"{api}.DURABLE.CREATE.{stream}.>",
        f"{api}.INFO.{stream}.>",
        f"{api}.DELETE.{stream}.>",
        f"{api}.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def read_bucket(bucket: str) -> list[str]:
    """Watch and get the keys of one KV bucket."""
    stream = kv_stream(bucket)
    return [
        *consume(stream),
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
    ]


def every_cluster_status() -> str:
    """`kgslb.status.cluster.*`, from the one function that names that subject."""
    return subjects.cluster_status_subject("any").rpartition(".")[0] + ".*"


def dead_letter(service: str) -> str:
    return f"{subjects.DEADLETTER_PREFIX}.{subjects.encode_token(service)}.>"


def watcher_heartbeats() -> str:
    """`$KV.kgslb_leases.watcher.*`: a watcher writes its own heartbeat, never a lease."""
    return f"$KV.{subjects.KV_LEASES}.{subjects.WATCHER_KEYS}"


GRANTS: dict[str, Grant] = {
    "watcher": Grant(
        summary="publishes what its cluster holds and whether it reaches it, and its heartbeat; "
        "the home watcher reads CR and cluster status back and the active home cluster, and "
        "the services and their health for the serving members in policy status",
        publishes=(
            f"{subjects.EVENTS_PREFIX}.>",
            f"{subjects.SYNC_PREFIX}.>",
            f"{subjects.POLICY_PREFIX}.>",
            every_cluster_status(),
            dead_letter("watcher"),
            watcher_heartbeats(),
            # manualResume: the home watcher holds a member that went down.
            f"$KV.{subjects.KV_LEASES}.{subjects.HOLD_KEYS}",
        ),
        reads_streams=(subjects.STREAM_EVENTS, subjects.STREAM_STATUS),
        reads_buckets=(subjects.KV_LEASES, subjects.KV_SERVICES, subjects.KV_HEALTH),
        # The reconciler asks for everything again after JetStream lost its state.
        subscribes=(subjects.RESYNC_SUBJECT,),
    ),
    "reconciler": Grant(
        summary="owns the streams and buckets, writes desired state and CR status",
        publishes=(
            f"{subjects.STATUS_PREFIX}.>",
            # Purging the status of a deleted CR, so a new CR of that name starts clean.
            f"$JS.API.STREAM.PURGE.{subjects.STREAM_STATUS}",
            dead_letter("reconciler"),
            subjects.RESYNC_SUBJECT,
        ),
        reads_streams=(subjects.STREAM_EVENTS, subjects.STREAM_STATUS),
        writes_buckets=(
            subjects.KV_SERVICES,
            subjects.KV_ZONES,
            subjects.KV_LEASES,
            subjects.KV_KEYS,
        ),
        owns_streams=True,
    ),
    "health": Grant(
        summary="reads desired services, writes member health and its replica heartbeat",
        publishes=(dead_letter("health"), f"{subjects.HEALTH_LIVE_PREFIX}.>"),
        reads_buckets=(subjects.KV_SERVICES,),
        writes_buckets=(subjects.KV_HEALTH, subjects.KV_LEASES),
    ),
    "dns": Grant(
        summary="reads state (with the health replicas' heartbeats) and live health verdicts, "
        "publishes query logs, nothing else",
        publishes=(f"{subjects.DNSLOG_PREFIX}.>",),
        reads_buckets=(
            subjects.KV_SERVICES,
            subjects.KV_ZONES,
            subjects.KV_HEALTH,
            subjects.KV_LEASES,
            subjects.KV_KEYS,
        ),
        subscribes=(f"{subjects.HEALTH_LIVE_PREFIX}.>",),
    ),
}


def variable(service: str) -> str:
    return f"{service.upper()}_PERMISSIONS"


def render() -> str:
    lines = [
        "# Generated by deploy/nats/render_permissions.py from shared/subjects.py; do not edit.",
        "# One variable per kgslb service, used by accounts.conf and accounts-nkeys.conf.",
        "# Replies to a service's requests arrive on its _INBOX subscription.",
        "",
    ]
    for service, grant in GRANTS.items():
        block = {
            "publish": {"allow": grant.publish_allow()},
            "subscribe": {"allow": [INBOX, *grant.subscribes]},
        }
        lines.append(f"# {service}: {grant.summary}")
        body = json.dumps(block, indent=2)
        lines.append(f"{variable(service)} = {body}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    (HERE / "permissions.conf").write_text(render())
