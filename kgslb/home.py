"""`kgslb home`: which possible home cluster is active (KV `kgslb_leases/home`) and how the
watcher of each home is doing; `--activate CLUSTER` is the manual failover, for
`automaticHomeFailover: false` or to move the policy back on purpose."""

from __future__ import annotations

import contextlib

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from rich.console import Console
from rich.table import Table

from kgslb import natscmd
from kgslb.command_settings import HomeSettings
from shared import bus, subjects, wire
from shared.models import ActiveHome, WatcherHeartbeat, utcnow


class HomeError(RuntimeError):
    """The request cannot be carried out; the text says why and what to do."""


async def read_home(kv: KeyValue) -> tuple[ActiveHome | None, int | None]:
    try:
        entry = await kv.get(subjects.HOME_KEY)
    except KeyNotFoundError:
        return None, None
    return wire.decode(entry.value or b"", ActiveHome), entry.revision


async def activate(kv: KeyValue, cluster: str) -> ActiveHome:
    """Name `cluster` the active home with the next term, by compare-and-set: the reconciler
    leader keeps a reachable active home as it is, and the home watchers follow the key."""
    current, revision = await read_home(kv)
    if current is None or revision is None:
        raise HomeError(
            "no active home is decided yet: list the possible homes in the GSLBConfig's "
            "homeClusters and run the reconciler"
        )
    if cluster not in current.home_clusters:
        raise HomeError(
            f"{cluster} is not one of homeClusters ({', '.join(current.home_clusters)})"
        )
    if cluster == current.active:
        return current
    value = ActiveHome(
        active=cluster,
        term=current.term + 1,
        since=utcnow(),
        reason=f"activated by hand (kgslb home --activate {cluster}); was {current.active}",
        home_clusters=current.home_clusters,
    )
    try:
        await kv.update(subjects.HOME_KEY, wire.encode(value), last=revision)
    except KeyWrongLastSequenceError:
        raise HomeError("the active home changed meanwhile; look again and retry") from None
    return value


async def run_home(settings: HomeSettings) -> int:
    console = Console()
    async with natscmd.session(settings, "kgslb-home") as nc:
        await natscmd.require(
            nc.jetstream(), [bus.kv_stream(subjects.KV_LEASES)], settings.nats_url
        )
        kv = await nc.jetstream().key_value(subjects.KV_LEASES)
        if settings.activate:
            try:
                activated = await activate(kv, settings.activate)
            except HomeError as exc:
                console.print(f"kgslb home: {exc}", style="red")
                return 1
            console.print(f"active home cluster: {activated.active} (term {activated.term})")
            return 0
        home, _ = await read_home(kv)
        heartbeats = {}
        for cluster in home.home_clusters if home else []:
            with contextlib.suppress(KeyNotFoundError, wire.WireError):
                entry = await kv.get(subjects.watcher_key(cluster))
                heartbeats[cluster] = wire.decode(entry.value or b"", WatcherHeartbeat)
    if home is None:
        console.print("one home cluster (no homeClusters in the GSLBConfig in force)")
        return 0
    console.print(
        f"active home cluster: {home.active} (term {home.term}, since "
        f"{home.since:%Y-%m-%d %H:%M:%S}Z): {home.reason}"
    )
    table = Table(title="Home clusters, in failover order")
    for column in ("cluster", "role", "state", "heartbeat", "serving term"):
        table.add_column(column)
    for cluster in home.home_clusters:
        heartbeat = heartbeats.get(cluster)
        if heartbeat is None:
            table.add_row(cluster, "-", "no heartbeat", "-", "-")
            continue
        age = (utcnow() - heartbeat.heartbeat_at).total_seconds()
        role = "publishes" if heartbeat.publishing else "keeps copies"
        state = heartbeat.state.value if heartbeat.state else "starting"
        term = "-" if heartbeat.serving_term is None else str(heartbeat.serving_term)
        table.add_row(cluster, role, state, f"{age:.0f} s ago", term)
    console.print(table)
    return 0
