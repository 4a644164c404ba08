"""Settings of the DNS service (flags `--x-y`, environment `KGSLB_X_Y`); kept apart from
the service so the CLI can describe them without loading the service and its metrics."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from services.dns.quorum import QUORUM_HELP, Quorum
from shared.settings import DnssecSecretSettings, ServiceSettings


class DnsSettings(ServiceSettings, DnssecSecretSettings):
    help_panel: ClassVar[str] = "DNS"

    dns_host: str = "127.0.0.1"
    dns_port: int = Field(default=1053, ge=0, le=65535)
    workers: int = Field(
        default=1, ge=1, le=64,
        description="processes answering on the same port (SO_REUSEPORT), one per core",
    )  # fmt: skip
    dns_socket_fds: str = Field(
        default="",
        description="'udp_fd,tcp_fd': listening sockets inherited from a parent process "
        "(set by --workers for its worker processes)",
    )
    log_queries: bool = Field(default=True, description="publish query logs to kgslb.dnslog.<zone>")
    log_per_second: int = Field(
        default=50, ge=0, description="query-log records per second; 0 logs every query"
    )
    edns_udp_size: int = Field(
        default=1232, ge=512, le=4096,
        description="largest UDP response sent, and the size our OPT record advertises",
    )  # fmt: skip
    tcp_idle_seconds: float = Field(
        default=10.0, gt=0,
        description="close a TCP connection this long after its last whole query (RFC 7766); "
        "bytes of an unfinished message do not count",
    )  # fmt: skip
    tcp_message_seconds: float = Field(
        default=5.0, gt=0,
        description="close a TCP connection whose message (length and body) is not whole this "
        "long after its first byte",
    )  # fmt: skip
    tcp_max_connections: int = Field(
        default=1000, ge=1,
        description="TCP connections per process; at the cap a new one closes the one idle "
        "longest (lowered to fit the open-file limit)",
    )  # fmt: skip
    tcp_max_pipelined: int = Field(
        default=100, ge=1,
        description="whole queries read from one TCP connection and not answered yet; reading "
        "it stops at this many",
    )  # fmt: skip
    tcp_write_buffer_bytes: int = Field(
        default=65536, ge=1024,
        description="reply bytes queued for a TCP client that does not read before reading it "
        "stops (resumes below a quarter of this)",
    )  # fmt: skip
    tcp_blocked_seconds: float = Field(
        default=5.0, gt=0,
        description="close a TCP client whose replies stay over --tcp-write-buffer-bytes this long",
    )  # fmt: skip
    tcp_client_queries_per_second: int = Field(
        default=5000, ge=0,
        description="TCP queries per second per client network (the RRL prefix lengths); past "
        "it the client is read no further until the next second; 0: no limit",
    )  # fmt: skip
    rrl_responses_per_second: int = Field(
        default=0, ge=0, description="response rate limit per client network; 0 turns RRL off"
    )
    rrl_slip: int = Field(
        default=2, ge=0, le=10,
        description="every Nth rate-limited response is sent truncated (0: drop them all)",
    )  # fmt: skip
    answer_metrics: Literal["member", "cluster", "off"] = Field(
        default="member",
        description="kgslb_dns_answers_total labels: member (fqdn, cluster, ip: one series "
        "per member of every name), cluster (summed over names), or off",
    )
    rrl_ipv4_prefix_length: int = Field(default=24, ge=8, le=32)
    rrl_ipv6_prefix_length: int = Field(default=56, ge=16, le=128)
    health_quorum: str = Field(
        default="majority",
        description="how many vantage points (sites' health replicas with a fresh verdict) "
        "must say down to withdraw a member: " + QUORUM_HELP,
    )
    health_verdict_metrics: Literal["vantage", "member"] = Field(
        default="vantage",
        description="kgslb_dns_health_verdicts per vantage point and state (vantage), or also "
        "kgslb_dns_health_member_verdict, one series per member and vantage point (member)",
    )
    geoip_database: str = Field(
        default="",
        description="path of a MaxMind-format database (GeoIP2/GeoLite2 City or Country, .mmdb) "
        "for lbAlgorithm Geo; read into memory, and read again when the file changes; empty: "
        "none (Geo names answer with their fallback)",
    )
    geoip_check_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="how often the GeoIP database file is checked for a change (mtime, size, inode)",
    )  # fmt: skip

    dnssec_signature_validity_seconds: int = Field(
        default=7 * 86400, ge=3600, le=90 * 86400,
        description="RRSIG validity: expiration this long after signing (inception an hour "
        "before it)",
    )  # fmt: skip
    dnssec_resign_seconds: int = Field(
        default=86400, ge=60,
        description="signatures older than this are made anew (lazily, on the next query); "
        "must stay well under --dnssec-signature-validity-seconds",
    )  # fmt: skip

    @field_validator("health_quorum")
    @classmethod
    def _quorum(cls, value: str) -> str:
        return Quorum.parse(value).rule

    @model_validator(mode="after")
    def _resign_before_expiry(self) -> DnsSettings:
        if self.dnssec_resign_seconds * 2 > self.dnssec_signature_validity_seconds:
            raise ValueError(
                "--dnssec-resign-seconds must be at most half of "
                "--dnssec-signature-validity-seconds, so signatures are made anew long before "
                "they expire"
            )
        return self
