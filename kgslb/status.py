"""`kgslb status`: the GSLB services as the DNS sees them (members per priority group,
weights, health combined over the vantage points and, with sites, each one's verdict, source
objects) and every policy object that is Rejected, with its reason; first, when a `kgslb up`
runs here, its processes with their restarts."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

from kgslb import natscmd
from kgslb.command_settings import StatusSettings
from services.dns.quorum import HealthBook, Quorum, Verdict, Written
from shared import bus, subjects, wire
from shared.follow import read_values
from shared.models import (
    DelegationState,
    GslbService,
    HealthHeartbeat,
    HealthState,
    MemberHealth,
    PolicyState,
    PolicyStatus,
    utcnow,
)


def health_book(
    health_raw: dict[str, bytes], leases_raw: dict[str, bytes], quorum: Quorum
) -> HealthBook:
    """The vantage points' verdicts as KV holds them now, combined as the DNS does. A replica
    counts as heartbeating while its last heartbeat's `expires_at` is ahead of this machine's
    clock (the DNS uses its own monotonic clock; a one-off look has only the wall clock)."""
    book = HealthBook(quorum)
    now = utcnow()
    for key, value in leases_raw.items():
        if not key.startswith("health."):
            continue
        with contextlib.suppress(wire.WireError, ValueError):
            beat = wire.decode(value, HealthHeartbeat)
            left = (beat.expires_at - now).total_seconds()
            book.heartbeat(subjects.decode_token(key.split(".", 1)[1]), beat.site, left, 0.0)
    for key, value in health_raw.items():
        with contextlib.suppress(wire.WireError, ValueError):
            member, vantage = subjects.split_health_key(key)
            record = wire.decode(value, MemberHealth)
            book.set_verdict(member, vantage, Written(HealthState(record.state), record.replica))
    return book


COLOURS = {"up": "green", "down": "red"}


def shown_verdicts(verdicts: list[Verdict]) -> str:
    """`s1az1 up, s2 down (silent)`: each vantage point's verdict; silent when its replica
    does not heartbeat (the verdict does not count)."""
    shown = []
    for verdict in verdicts:
        state = verdict.state.value
        text = f"{verdict.vantage or 'no site'} [{COLOURS.get(state, 'yellow')}]{state}[/]"
        shown.append(text if verdict.fresh else f"{text} (silent)")
    return ", ".join(shown)


async def read_statuses(js: JetStreamContext) -> list[PolicyStatus]:
    statuses: list[PolicyStatus] = []
    for msg in await bus.read_last_per_subject(
        js, subjects.STREAM_STATUS, f"{subjects.STATUS_PREFIX}.>"
    ):
        if subjects.is_status_fence(msg.subject):
            continue
        with contextlib.suppress(wire.WireError):
            statuses.append(wire.decode(msg.data, PolicyStatus))
    return statuses


def show_up_processes(console: Console, state_dir: Path) -> None:
    """The children of the `kgslb up` in `state_dir` as it last published them (its state
    file, so this needs no NATS: it shows a stack whose nats-server is down). Nothing when
    no `kgslb up` has a state file there."""
    from kgslb.embedded import StartupError
    from kgslb.up import read_state, up_is_running

    try:
        state = read_state(state_dir)
    except StartupError as exc:
        if (state_dir / "stack.json").exists():
            console.print(f"kgslb up processes: {exc}")
        return
    children: dict[str, dict[str, Any]] = state.get("children", {})
    table = new_table(console, f"kgslb up processes ({state_dir})")
    add_columns(table, "process", "state", "pid", "restarts", "last exit", "when")
    now = datetime.now(UTC)
    for name, child in children.items():
        if child.get("stopped_at"):
            when = "stopped " + _duration(now - datetime.fromisoformat(child["stopped_at"]))
            when += " ago (kgslb site restore)"
        elif child.get("restart_at"):
            wait = datetime.fromisoformat(child["restart_at"]) - now
            when = f"restart in {max(wait.total_seconds(), 0):.1f} s"
        elif child.get("started_at"):
            when = "up " + _duration(now - datetime.fromisoformat(child["started_at"]))
        else:
            when = ""
        restarts = int(child.get("restarts", 0))
        table.add_row(
            name,
            child.get("state", "?"),
            str(child.get("pid") or ""),
            f"[yellow]{restarts}[/]" if restarts else "0",
            child.get("last_exit") or "",
            when,
        )
    console.print(table)
    if not up_is_running(state):
        console.print(
            f"[red]kgslb up (pid {state.get('supervisor_pid')}) is not running[/]: its children "
            "as it last wrote them; any still running were left behind."
        )


def _duration(elapsed: timedelta) -> str:
    seconds = max(int(elapsed.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def output_console() -> Console:
    """A terminal gets rich tables that fold long cells; a pipe or a file gets plain columns,
    never cut (`kgslb status | cat` shows whole FQDNs, addresses and sources)."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=100_000, color_system=None, highlight=False, soft_wrap=True)


def new_table(console: Console, title: str) -> Table:
    if console.is_terminal:
        return Table(title=title)
    return Table(title=title, box=None, title_justify="left", pad_edge=False)


def add_columns(table: Table, *columns: str) -> None:
    for column in columns:
        table.add_column(column, overflow="fold")


async def read_status(
    settings: StatusSettings,
) -> tuple[dict[str, bytes], HealthBook, list[PolicyStatus]]:
    """What `kgslb status` shows, read once. Lookups only: a read-only command creates and
    changes no stream (a missing one is named, see `natscmd.require`)."""
    async with natscmd.session(settings, "kgslb-status") as nc:
        js = nc.jetstream()
        await natscmd.require(
            js,
            [
                *(
                    bus.kv_stream(b)
                    for b in (subjects.KV_SERVICES, subjects.KV_HEALTH, subjects.KV_LEASES)
                ),
                subjects.STREAM_STATUS,
            ],
            settings.nats_url,
        )
        services = await read_values(js, subjects.KV_SERVICES)
        health_raw = await read_values(js, subjects.KV_HEALTH)
        leases_raw = await read_values(js, subjects.KV_LEASES)
        statuses = await read_statuses(js)
    book = health_book(health_raw, leases_raw, Quorum.parse(settings.health_quorum))
    return services, book, statuses


def status_document(
    services: dict[str, bytes], book: HealthBook, statuses: list[PolicyStatus]
) -> dict[str, Any]:
    """`kgslb status -o json|yaml`: every service with its members, their health and each
    vantage point's verdict, and the policy objects that were rejected."""
    shown: list[dict[str, Any]] = []
    for key in sorted(services):
        try:
            service = wire.decode(services[key], GslbService)
        except wire.WireError as exc:
            shown.append({"fqdn": subjects.fqdn_from_key(key), "error": f"unreadable: {exc}"})
            continue
        members = []
        for group in service.groups:
            for member in group.members:
                member_key = subjects.member_key(service.fqdn, member.probe_ip)
                members.append(
                    {
                        "priority": group.priority,
                        "ip": member.ip,
                        "cluster": member.cluster,
                        "weight": member.weight,
                        "disabled": member.disabled,
                        "health": book.combined.get(member_key, HealthState.UNKNOWN).value,
                        "vantagePoints": [
                            {"site": v.vantage, "state": v.state.value, "fresh": v.fresh}
                            for v in book.verdicts_of(member_key)
                        ],
                        "sources": list(member.sources),
                    }
                )
        shown.append(
            {
                "fqdn": service.fqdn,
                "ttl": service.ttl_seconds,
                "algorithm": str(service.algorithm),
                "members": members,
            }
        )
    rejected = [
        {"object": str(s.ref), "generation": s.observed_generation, "reason": s.message}
        for s in statuses
        if s.state == PolicyState.REJECTED
    ]
    return {"services": shown, "policyObjects": len(statuses), "rejected": rejected}


async def show_status(settings: StatusSettings) -> None:
    services, book, statuses = await read_status(settings)
    if settings.output != "table":
        document = status_document(services, book, statuses)
        if settings.output == "json":
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        else:
            sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
        return
    console = output_console()
    show_up_processes(console, settings.state_dir)

    # One vantage point without a site has nothing to add to the health column.
    sited = book.vantages() - {""}
    table = new_table(console, "GSLB services")
    add_columns(table, "FQDN", "TTL", "algorithm", "prio", "member", "cluster", "weight",
                "health", *(["vantage points"] if sited else []), "sources")  # fmt: skip
    for key in sorted(services):
        try:
            service = wire.decode(services[key], GslbService)
        except wire.WireError as exc:
            table.add_row(subjects.fqdn_from_key(key), "", f"[red]unreadable: {exc}")
            continue
        # A terminal shows a name once per service; plain output repeats it on every row,
        # so each line stands alone for grep and awk.
        first = True
        repeat = not console.is_terminal
        for group in service.groups:
            for member in group.members:
                first = first or repeat
                key = subjects.member_key(service.fqdn, member.probe_ip)
                shown = book.combined.get(key, HealthState.UNKNOWN)
                colour = COLOURS.get(shown, "yellow")
                table.add_row(
                    service.fqdn if first else "",
                    str(service.ttl_seconds) if first else "",
                    service.algorithm if first else "",
                    str(group.priority),
                    member.ip,
                    member.cluster,
                    "disabled"
                    if member.disabled
                    else f"{member.weight}" + (" (drained)" if member.weight == 0 else ""),
                    f"[{colour}]{shown}[/]",
                    *([shown_verdicts(book.verdicts_of(key))] if sited else []),
                    ", ".join(member.sources),
                )
                first = False
    console.print(table)
    rejected = [s for s in statuses if s.state == PolicyState.REJECTED]
    if rejected:
        bad = new_table(console, "Rejected policy objects")
        add_columns(bad, "object", "generation", "reason")
        for status in rejected:
            bad.add_row(str(status.ref), str(status.observed_generation), status.message)
        console.print(bad)
    else:
        console.print(f"{len(statuses)} policy object(s), none rejected.")
    delegations = [entry for status in statuses for entry in status.delegation]
    if delegations:
        table = Table(title="Automatic delegation (RFC 2136)")
        for column in ("zone", "parent", "server", "state", "since", "message"):
            table.add_column(column)
        for entry in delegations:
            color = "green" if entry.state == DelegationState.DELEGATED else "red"
            table.add_row(
                entry.zone, entry.parent, entry.server, f"[{color}]{entry.state.value}",
                entry.since.strftime("%Y-%m-%dT%H:%M:%SZ"), entry.message,
            )  # fmt: skip
        console.print(table)
