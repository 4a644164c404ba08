"""Settings of the reconciler service (flags `--x-y`, environment `KGSLB_X_Y`); kept apart from
the service so the CLI can describe them without loading the service."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shared.settings import DnssecSecretSettings, ServiceSettings


class ReconcilerSettings(ServiceSettings, DnssecSecretSettings):
    help_panel: ClassVar[str] = "Reconciler"

    debounce_seconds: float = Field(default=0.005, ge=0, description="coalesce event bursts")
    lease_ttl_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="leader lease TTL: a standby takes over within 2 x TTL of a leader's death",
    )
    home_check_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often the home watchers' heartbeats are read and the active home "
        "cluster is decided (GSLBConfig homeClusters)",
    )
    home_heartbeat_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="a home cluster whose watcher's heartbeat is older than this is not "
        "reachable, so no failover goes to it",
    )
    first_sync_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="at start, names are planned once every member cluster's watcher has "
        "published its first complete list; a cluster not synced this long after the first "
        "one did (or, when no watcher publishes anything, after the start) is left out and "
        "logged, so an unreachable cluster does not hold back the others",
    )
    first_sync_max_wait_seconds: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        description="at start, plan names after this long whatever arrived (a watcher that "
        "publishes but never completes its first list)",
    )
    dnssec_zsk_lifetime_seconds: float = Field(
        default=30 * 86400,
        ge=0,
        description="a signed zone's ZSK is rolled (pre-publish) after signing this long; 0 "
        "never rolls",
    )
    dnssec_rollover_wait_seconds: float = Field(
        default=86400,
        gt=0,
        description="a new ZSK is published this long before it signs, and an old one kept "
        "this long after; at least the zone's longest TTL (DNSKEY's included)",
    )
    tsig_secrets_dir: str = Field(
        default="/etc/kgslb/tsig",
        description="where the Secrets named by GSLBConfig zones[].delegation.tsigKey.secretRef "
        "are mounted: the secret is the file <dir>/<secret name>/<key>",
    )
    delegation_check_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="how often the leader checks each delegated zone's NS, glue (and DS) in "
        "its parent and repairs them (a configuration change is checked at once)",
    )
    delegation_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="timeout of one query or update to the parent"
    )
