"""`kgslb check FQDN`: the seed's check_dns.sh done properly. Resolve the name through the
kgslb DNS, fetch the page from the answer with the FQDN as Host, print which site served it,
and keep a tally per site against the configured weights."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass

import dns.asyncquery
import dns.message
import httpx
from rich.console import Console
from rich.table import Table

from shared import bus, subjects, wire
from shared.models import GslbService
from shared.settings import NatsSettings

MESSAGE = re.compile(r"MESSAGE:\s*([^<\n]+)")
COLOURS = ("green", "cyan", "magenta", "yellow", "blue", "red")


@dataclass(frozen=True)
class Probe:
    at: float
    answer: str
    cluster: str
    message: str
    error: str = ""


async def configured_weights(nats_url: str, fqdn: str) -> dict[str, tuple[str, int]]:
    """ip -> (cluster, weight) from the desired service, or {} when NATS is not reachable."""
    try:
        nc = await asyncio.wait_for(bus.connect(NatsSettings(nats_url=nats_url), "kgslb-check"), 3)
    except Exception:
        return {}
    try:
        kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
        entry = await kv.get(subjects.fqdn_key(fqdn))
        if not entry.value:
            return {}
        service = wire.decode(entry.value, GslbService)
        return {m.ip: (m.cluster, m.weight) for m in service.all_members()}
    except Exception:
        return {}
    finally:
        await nc.drain()


async def probe_once(
    client: httpx.AsyncClient, fqdn: str, server: str, port: int, http_port: int,
    members: dict[str, tuple[str, int]],
) -> Probe:  # fmt: skip
    now = time.time()
    try:
        reply = await dns.asyncquery.udp(
            dns.message.make_query(fqdn, "A"), server, port=port, timeout=2
        )
    except Exception as exc:
        return Probe(now, "-", "-", "", f"DNS: {exc}")
    addresses = [rr.address for rrset in reply.answer for rr in rrset]
    if not addresses:
        return Probe(now, "-", "-", "", f"DNS: no answer (rcode {reply.rcode()})")
    answer = addresses[0]
    cluster = members.get(answer, ("?", 0))[0]
    try:
        response = await client.get(f"http://{answer}:{http_port}/", headers={"Host": fqdn})
    except httpx.HTTPError as exc:
        return Probe(now, answer, cluster, "", f"HTTP: {type(exc).__name__}")
    found = MESSAGE.search(response.text)
    return Probe(
        now, answer, cluster, found.group(1).strip() if found else f"HTTP {response.status_code}"
    )


def tally_table(tally: Counter[str], members: dict[str, tuple[str, int]]) -> Table:
    weights: dict[str, int] = {}
    for cluster, weight in members.values():
        weights[cluster] = weights.get(cluster, 0) + weight
    total_weight = sum(weights.values())
    total = sum(tally.values())
    table = Table(title=f"{total} answers")
    for column in ("cluster", "answers", "share", "configured"):
        table.add_column(column)
    for cluster in sorted(set(tally) | set(weights)):
        share = tally[cluster] / total if total else 0.0
        expected = weights.get(cluster, 0) / total_weight if total_weight else 0.0
        table.add_row(cluster, str(tally[cluster]), f"{share:.1%}", f"{expected:.1%}")
    return table


async def run_check(
    fqdn: str, server: str, port: int, http_port: int, interval_seconds: float,
    count: int | None, nats_url: str,
) -> Counter[str]:  # fmt: skip
    console = Console(highlight=False)
    members = await configured_weights(nats_url, fqdn)
    colour_of: dict[str, str] = {}
    tally: Counter[str] = Counter()
    done = 0
    async with httpx.AsyncClient(timeout=2) as client:
        while count is None or done < count:
            probe = await probe_once(client, fqdn, server, port, http_port, members)
            colour = colour_of.setdefault(probe.cluster, COLOURS[len(colour_of) % len(COLOURS)])
            stamp = time.strftime("%H:%M:%S", time.localtime(probe.at))
            text = probe.error or probe.message
            console.print(f"{stamp}  {probe.answer:<15} [{colour}]{probe.cluster:<8} {text}[/]")
            if not probe.error:
                tally[probe.cluster] += 1
            done += 1
            if count is None or done < count:
                await asyncio.sleep(interval_seconds)
    console.print(tally_table(tally, members))
    return tally
