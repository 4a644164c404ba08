"""`kgslb check FQDN`: the seed's check_dns.sh done properly. Resolve the name through the
kgslb DNS, fetch the page from the answer with the FQDN as Host, print which site served it,
and keep a tally per site against the configured weights."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass

import dns.asyncquery
import dns.message
import httpx
from nats.js.errors import KeyNotFoundError
from rich.console import Console
from rich.table import Table

from kgslb import natscmd
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
    """ip -> (cluster, weight) from the desired service; {} with one line on stderr when NATS
    does not answer within seconds or holds no such name (the check goes on without)."""
    settings = NatsSettings(nats_url=nats_url)
    try:
        async with natscmd.session(settings, "kgslb-check") as nc:
            kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
            entry = await kv.get(subjects.fqdn_key(fqdn))
            if not entry.value:
                return {}
            service = wire.decode(entry.value, GslbService)
            return {m.ip: (m.cluster, m.weight) for m in service.all_members()}
    except KeyNotFoundError:
        warn(f"{fqdn} is not in KV {subjects.KV_SERVICES}; no configured weights shown")
    except Exception as exc:
        line = natscmd.describe(exc, nats_url) or bus.attempt_reason(exc)
        warn(f"{line}; no configured weights shown")
    return {}


def warn(line: str) -> None:
    print(f"kgslb check: {line}", file=sys.stderr)


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


@dataclass
class CheckResult:
    tally: Counter[str]
    checks: int
    failed: int
    interrupted: bool

    @property
    def exit_code(self) -> int:
        """0 when every check answered; 1 when any failed (or none ran); 130 after Ctrl-C."""
        if self.interrupted:
            return 130
        return 1 if self.failed or not self.checks else 0


async def run_check(
    fqdn: str, server: str, port: int, http_port: int, interval_seconds: float,
    count: int, nats_url: str,
) -> CheckResult:  # fmt: skip
    """`count` checks (0: until Ctrl-C), then the tally; Ctrl-C prints the tally too."""
    console = Console(highlight=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    members = await configured_weights(nats_url, fqdn)
    colour_of: dict[str, str] = {}
    tally: Counter[str] = Counter()
    done = failed = 0
    async with httpx.AsyncClient(timeout=2) as client:
        while not stop.is_set() and (count == 0 or done < count):
            probe = await probe_once(client, fqdn, server, port, http_port, members)
            colour = colour_of.setdefault(probe.cluster, COLOURS[len(colour_of) % len(COLOURS)])
            stamp = time.strftime("%H:%M:%S", time.localtime(probe.at))
            text = probe.error or probe.message
            console.print(f"{stamp}  {probe.answer:<15} [{colour}]{probe.cluster:<8} {text}[/]")
            if probe.error:
                failed += 1
            else:
                tally[probe.cluster] += 1
            done += 1
            if count == 0 or done < count:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_seconds)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    console.print(tally_table(tally, members))
    if failed:
        console.print(f"[red]{failed} of {done} check(s) failed[/]")
    return CheckResult(tally, done, failed, stop.is_set())
