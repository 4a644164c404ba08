"""Settings of the reconciler service (flags `--x-y`, environment `KGSLB_X_Y`); kept apart from
the service so the CLI can describe them without loading the service."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class ReconcilerSettings(ServiceSettings):
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
