"""Settings of the watcher service (flags `--x-y`, environment `KGSLB_X_Y`); kept apart from
the service so the CLI can describe them without loading the service."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from shared.quorum import QUORUM_HELP, Quorum
from shared.settings import ServiceSettings


class WatcherSettings(ServiceSettings):
    help_panel: ClassVar[str] = "Watcher"

    kubeconfig: str = Field(
        default="",
        description="kubeconfig file, e.g. the seed's multi-cluster gslb-members; "
        "empty: in-cluster config",
    )
    context: str = Field(default="", description="kubeconfig context; empty: its current context")
    cluster: str = Field(
        default="", description="member cluster name in events; default: the context name"
    )
    home: bool = Field(
        default=False,
        description="the home cluster: also watch the kgslb CRDs and write their status "
        "(--home true)",
    )
    page_size: int = Field(default=500, ge=1, le=10000, description="list page size")
    watch_timeout_seconds: int = Field(
        default=300, ge=1, le=3600, description="server-side watch timeout (randomised up to 2x)"
    )
    dead_watch_seconds: float = Field(
        default=75.0,
        gt=0,
        le=3600,
        description="a watch that receives nothing, not even a bookmark, this long is dead: "
        "abandoned and relisted (kube-apiserver sends a bookmark every minute)",
    )
    unreachable_grace_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="a request to the API unanswered this long (the relist after a dead "
        "watch, too) reports the cluster Unreachable until it answers",
    )
    backoff_initial_seconds: float = Field(default=0.5, gt=0, le=60)
    backoff_max_seconds: float = Field(default=30.0, gt=0, le=600)
    max_pending_changes: int = Field(
        default=10000, ge=1, description="watch events read ahead of publishing (back-pressure)"
    )
    heartbeat_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often the watcher rewrites its heartbeat in KV kgslb_leases and a "
        "home watcher reads the active home cluster",
    )
    sources: str = Field(
        default="all",
        description="the kinds to watch, comma-separated: all, or some of Ingress, Service, "
        "HTTPRoute, GRPCRoute, TLSRoute, Route (Namespaces always; Gateways with any route "
        "kind). A kind whose CRD the cluster lacks (Gateway API, OpenShift) counts as none",
    )
    absent_recheck_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="how often a kind the API does not serve (404: CRD not installed) is "
        "asked for again",
    )
    hostname_refresh_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="load balancers that report only a hostname: resolve it again this often "
        "(or at its TTL when shorter, with --hostname-resolver)",
    )
    hostname_min_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="the shortest time between two resolutions of a hostname (a TTL of 0)",
    )
    hostname_resolver: str = Field(
        default="",
        description="DNS server for load-balancer hostnames, HOST or HOST:PORT (TTL-driven "
        "refresh); empty: the system resolver (getaddrinfo, /etc/hosts included)",
    )
    hostname_timeout_seconds: float = Field(
        default=2.0, gt=0, le=60, description="one resolution of a load-balancer hostname"
    )

    serving_status: bool = Field(
        default=True,
        description="a home watcher follows KV kgslb_services and kgslb_health and writes, per "
        "FQDN a GDP or GSLBHostRule governs, the members serving now into its status "
        "(status.serving), with Kubernetes Events for failovers and recoveries",
    )
    serving_status_max_fqdns: int = Field(
        default=100,
        ge=0,
        le=1000,
        description="FQDNs listed in one policy's status.serving (the rest are counted in "
        "status.servingOmitted, so a GDP of 10,000 names stays a small object)",
    )
    health_quorum: str = Field(
        default="majority",
        description="as the DNS's --health-quorum (the same KGSLB_HEALTH_QUORUM): how many "
        "vantage points must say down for status.serving to show a member down: " + QUORUM_HELP,
    )

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: str) -> str:
        from services.watcher.sources import select  # the kinds, without the service

        select(value.split(","))  # ValueError naming the unknown kind and the known ones
        return value

    @field_validator("hostname_resolver")
    @classmethod
    def _resolver_address(cls, value: str) -> str:
        from services.watcher.resolve import parse_server

        if value:
            parse_server(value)
        return value

    @field_validator("health_quorum")
    @classmethod
    def _quorum(cls, value: str) -> str:
        return Quorum.parse(value).rule
