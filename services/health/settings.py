"""Settings of the health service (flags `--x-y`, environment `KGSLB_X_Y`); kept apart from
the service so the CLI can describe them without loading the service."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, IPvAnyAddress

from shared.settings import ServiceSettings


class HealthSettings(ServiceSettings):
    help_panel: ClassVar[str] = "Health"

    heartbeat_seconds: float = Field(
        default=2.0, gt=0, le=60, description="how often this replica announces itself"
    )
    dead_after_heartbeats: int = Field(
        default=3,
        ge=2,
        le=100,
        description="a replica silent this many heartbeats is dead and its members move",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="probes (one connection each) in flight; needs probes/s x timeout",
    )
    tls_ca_file: str | None = Field(
        default=None, description="CA bundle for https monitors with tlsVerify (default: system)"
    )
    site: str = Field(
        default="",
        max_length=253,
        description="the site this replica probes from (its vantage point): its verdicts go to "
        "kgslb_health keys <fqdn>.<ip>.<site> and it shares members only with replicas of the "
        "same site; empty: one vantage point, keys <fqdn>.<ip>",
    )
    probe_source: IPvAnyAddress | None = Field(
        default=None,
        description="source address of probes (an address of this host, e.g. the interface a "
        "firewall lets monitors through); members of the other address family, and every "
        "member when unset, are probed from the address the OS picks",
    )
