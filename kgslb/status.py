"""`kgslb status`: the GSLB services as the DNS sees them (members per priority group,
weights, health, source objects) and every policy object that is Rejected, with its reason."""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

from shared import bus, subjects, wire
from shared.follow import read_values
from shared.models import GslbService, HealthState, MemberHealth, PolicyState, PolicyStatus
from shared.settings import NatsSettings


class StatusSettings(NatsSettings):
    pass


async def read_statuses(js: JetStreamContext) -> list[PolicyStatus]:
    statuses: list[PolicyStatus] = []
    for msg in await bus.read_last_per_subject(
        js, subjects.STREAM_STATUS, f"{subjects.STATUS_PREFIX}.>"
    ):
        with contextlib.suppress(wire.WireError):
            statuses.append(wire.decode(msg.data, PolicyStatus))
    return statuses


async def show_status(settings: StatusSettings) -> None:
    console = Console()
    nc = await bus.connect(settings, "kgslb-status")
    try:
        js = nc.jetstream()
        await bus.bootstrap(js)
        services = await read_values(js, subjects.KV_SERVICES)
        health_raw = await read_values(js, subjects.KV_HEALTH)
        statuses = await read_statuses(js)
    finally:
        await nc.drain()
    health: dict[str, MemberHealth] = {}
    for key, value in health_raw.items():
        with contextlib.suppress(wire.WireError):
            health[key] = wire.decode(value, MemberHealth)

    table = Table(title="GSLB services")
    for column in ("FQDN", "TTL", "algorithm", "prio", "member", "cluster", "weight", "health",
                   "sources"):  # fmt: skip
        table.add_column(column)
    for key in sorted(services):
        try:
            service = wire.decode(services[key], GslbService)
        except wire.WireError as exc:
            table.add_row(subjects.fqdn_from_key(key), "", f"[red]unreadable: {exc}")
            continue
        first = True
        for group in service.groups:
            for member in group.members:
                state = health.get(subjects.member_key(service.fqdn, member.probe_ip))
                shown = state.state if state else HealthState.UNKNOWN
                colour = {"up": "green", "down": "red"}.get(shown, "yellow")
                table.add_row(
                    service.fqdn if first else "",
                    str(service.ttl_seconds) if first else "",
                    service.algorithm if first else "",
                    str(group.priority),
                    member.ip,
                    member.cluster,
                    str(member.weight),
                    f"[{colour}]{shown}[/]",
                    ", ".join(member.sources),
                )
                first = False
    console.print(table)
    rejected = [s for s in statuses if s.state == PolicyState.REJECTED]
    if rejected:
        bad = Table(title="Rejected policy objects")
        bad.add_column("object")
        bad.add_column("generation")
        bad.add_column("reason")
        for status in rejected:
            bad.add_row(str(status.ref), str(status.observed_generation), status.message)
        console.print(bad)
    else:
        console.print(f"{len(statuses)} policy object(s), none rejected.")
