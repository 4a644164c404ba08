"""`kgslb logs`: DNS query logs read back from stream KGSLB_DNSLOG.

`export` writes them as CSV for any spreadsheet; `split` does the seed's spreadsheet step by
itself: the observed share of each member and cluster against the configured weights (KV
`kgslb_services`), a chi-square goodness-of-fit p-value, and optionally a bar and pie chart.
scipy and matplotlib are optional (`pip install 'kgslb[analysis]'`).
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from kgslb import natscmd
from kgslb.command_settings import LogsSettings
from shared import bus, subjects, wire
from shared.follow import read_values
from shared.models import DnsQueryLog, GslbService

CSV_COLUMNS = (
    "time", "client", "qname", "qtype", "rcode", "answers", "clusters", "latency_us",
    "replica", "zone",
)  # fmt: skip
FETCH_BATCH = 1000
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


LOGS_STREAMS = (
    subjects.STREAM_DNSLOG,
    bus.kv_stream(subjects.KV_ZONES),
    bus.kv_stream(subjects.KV_SERVICES),
)
"""What `kgslb logs` reads; looked up, never created."""


class LogsError(ValueError):
    """Something the operator must fix: the message says what and how."""


def parse_since(text: str) -> timedelta:
    """`90` or `90s`, `10m`, `2h`, `1d` -> a duration."""
    match = _SINCE.match(text)
    if match is None:
        raise LogsError(f"--since {text!r}: expected a number with s, m, h or d (e.g. 10m)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


# Reading ----------------------------------------------------------------------------------


def _zone_of(fqdn: str, zones: Iterable[str]) -> str | None:
    name = subjects.normalize_fqdn(fqdn)
    best = None
    for zone in zones:
        if (name == zone or name.endswith("." + zone)) and (best is None or len(zone) > len(best)):
            best = zone
    return best


async def _zone_names(js: JetStreamContext) -> list[str]:
    with contextlib.suppress(Exception):
        # Not KeyValue.keys(): it can end early on a busy server, and lists fence markers.
        return [subjects.fqdn_from_key(key) for key in await read_values(js, subjects.KV_ZONES)]
    return []


Progress = Callable[[int, int], None]
"""`progress(read, total)`: records read so far of those the stream holds for the window."""


async def read_logs(
    js: JetStreamContext, fqdn: str, since: timedelta, progress: Progress | None = None
) -> list[DnsQueryLog]:
    """Every query-log record for `fqdn` (case-insensitive) newer than `since`, oldest first.
    Only the subject of the name's zone is read when the zone is known."""
    zone = _zone_of(fqdn, await _zone_names(js))
    subject = subjects.dnslog_subject(zone) if zone else f"{subjects.DNSLOG_PREFIX}.>"
    wanted = subjects.normalize_fqdn(fqdn)
    psub = await js.pull_subscribe(
        subject,
        stream=subjects.STREAM_DNSLOG,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.now(UTC) - since,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30,
        ),
    )
    records: list[DnsQueryLog] = []
    try:
        remaining = (await psub.consumer_info()).num_pending or 0
        total, read = remaining, 0
        while remaining > 0:
            batch = await psub.fetch(min(remaining, FETCH_BATCH), timeout=5)
            read += len(batch)
            if progress is not None:
                progress(read, total)
            for msg in batch:
                with contextlib.suppress(wire.WireError):
                    record = wire.decode(msg.data, DnsQueryLog)
                    if subjects.normalize_fqdn(record.qname) == wanted:
                        records.append(record)
            remaining = batch[-1].metadata.num_pending if batch else 0
    finally:
        await psub.unsubscribe()
    return records


async def read_service(js: JetStreamContext, fqdn: str) -> GslbService | None:
    kv = await js.key_value(subjects.KV_SERVICES)
    try:
        entry = await kv.get(subjects.fqdn_key(fqdn))
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        return wire.decode(entry.value, GslbService)
    except wire.WireError:
        return None


# Export -----------------------------------------------------------------------------------


def write_csv(records: Sequence[DnsQueryLog], path: Path) -> None:
    """One row per query; `answers` and `clusters` are `;`-separated, in answer order."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            writer.writerow(
                (
                    r.time.isoformat(), r.client, r.qname, r.qtype, r.rcode,
                    ";".join(r.answers), ";".join(r.clusters), r.latency_us, r.replica, r.zone,
                )
            )  # fmt: skip


# Split ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberShare:
    ip: str
    cluster: str
    weight: int
    """0 for a member that answered but is not in the configured best group."""
    expected: float
    observed: int
    share: float


@dataclass(frozen=True)
class SplitReport:
    fqdn: str
    qtype: str
    answered: int
    """Queries counted: NOERROR with at least one address; the first address is the pick."""
    members: list[MemberShare]
    clusters: list[MemberShare]
    p_value: float | None
    """Chi-square goodness of fit of the counts to the weights; None when not testable."""
    note: str = ""


def _expected(service: GslbService | None, qtype: str) -> dict[str, tuple[str, int]]:
    """IP -> (cluster, weight) of the group answered while every member is healthy (drained
    and disabled members are never answered, so they are left out)."""
    if service is None:
        return {}
    family = 6 if qtype == "AAAA" else 4
    for group in sorted(service.groups, key=lambda g: -g.priority):
        members = {
            m.ip: (m.cluster, m.weight)
            for m in group.members
            if (":" in m.ip) == (family == 6) and m.answered
        }
        if members:
            return members
    return {}


def _cluster_share(cluster: str, members: list[MemberShare]) -> MemberShare:
    return MemberShare(
        ip="",
        cluster=cluster,
        weight=sum(m.weight for m in members),
        expected=sum(m.expected for m in members),
        observed=sum(m.observed for m in members),
        share=sum(m.share for m in members),
    )


def traffic_split(
    fqdn: str, records: Iterable[DnsQueryLog], service: GslbService | None, qtype: str = "A"
) -> SplitReport:
    """Observed shares against the configured weights. Pure: the p-value comes from
    `chi_square_p_value`, which needs scipy."""
    picks: Counter[str] = Counter()
    clusters_seen: dict[str, str] = {}
    for record in records:
        if record.qtype != qtype or record.rcode != "NOERROR" or not record.answers:
            continue
        picks[record.answers[0]] += 1
        if record.clusters:
            clusters_seen[record.answers[0]] = record.clusters[0]
    total = sum(picks.values())
    expected = _expected(service, qtype)
    weight_sum = sum(weight for _, weight in expected.values())
    members = [
        MemberShare(
            ip, cluster, weight, weight / weight_sum, picks[ip], picks[ip] / total if total else 0.0
        )
        for ip, (cluster, weight) in expected.items()
    ]
    members += [
        MemberShare(ip, clusters_seen.get(ip, ""), 0, 0.0, count, count / total)
        for ip, count in sorted(picks.items())
        if ip not in expected
    ]
    by_cluster: dict[str, list[MemberShare]] = {}
    for member in members:
        by_cluster.setdefault(member.cluster, []).append(member)
    clusters = [_cluster_share(cluster, group) for cluster, group in by_cluster.items()]
    note = ""
    if service is None:
        note = f"no GSLB service {fqdn} in KV {subjects.KV_SERVICES}: no weights to compare"
    elif any(m.weight == 0 for m in members):
        note = "some answers came from members outside the configured best group (health?)"
    return SplitReport(fqdn, qtype, total, members, clusters, None, note)


def chi_square_p_value(report: SplitReport) -> float | None:
    """The p-value that the counts of the configured members follow their weights."""
    tested = [m for m in report.members if m.weight > 0]
    counted = sum(m.observed for m in tested)
    if len(tested) < 2 or counted == 0:
        return None
    try:
        from scipy.stats import chisquare
    except ImportError:
        raise LogsError(
            "the chi-square test needs scipy: pip install 'kgslb[analysis]' (or scipy)"
        ) from None
    expected = [m.expected * counted for m in tested]
    return float(chisquare([m.observed for m in tested], expected).pvalue)


def write_chart(report: SplitReport, path: Path) -> None:
    """Bars of observed against configured share per member, and a pie per cluster."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LogsError(
            "--png needs matplotlib: pip install 'kgslb[analysis]' (or matplotlib)"
        ) from None
    figure, (bars, pie) = plt.subplots(1, 2, figsize=(12, 5))
    labels = [f"{m.ip}\n{m.cluster}" for m in report.members]
    positions = range(len(labels))
    width = 0.4
    bars.bar([p - width / 2 for p in positions], [100 * m.expected for m in report.members],
             width, label="configured weight")  # fmt: skip
    bars.bar([p + width / 2 for p in positions], [100 * m.share for m in report.members],
             width, label="observed")  # fmt: skip
    bars.set_xticks(list(positions), labels)
    bars.set_ylabel("share of answers (%)")
    bars.legend()
    observed_clusters = [c for c in report.clusters if c.observed]
    pie.pie(
        [c.observed for c in observed_clusters],
        labels=[c.cluster or "?" for c in observed_clusters],
        autopct="%1.1f%%",
    )
    pie.set_title("observed answers per cluster")
    p_value = "n/a" if report.p_value is None else f"{report.p_value:.3g}"
    figure.suptitle(f"{report.fqdn} {report.qtype}: {report.answered} answers, p = {p_value}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# Commands ---------------------------------------------------------------------------------


@contextlib.contextmanager
def reading_progress() -> Iterator[Progress | None]:
    """A progress bar on stderr while the query logs are read, when stderr is a terminal."""
    import sys

    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress as Bar

    with Bar(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading query logs", total=None)

        def update(read: int, total: int) -> None:
            bar.update(task, completed=read, total=total)

        yield update


async def export_command(settings: LogsSettings, fqdn: str, since: str, csv_path: Path) -> int:
    window = parse_since(since)
    async with natscmd.session(settings, "kgslb-logs") as nc:
        await natscmd.require(nc.jetstream(), LOGS_STREAMS, settings.nats_url)
        with reading_progress() as progress:
            records = await read_logs(nc.jetstream(), fqdn, window, progress)
    write_csv(records, csv_path)
    print(f"{len(records)} query log record(s) for {fqdn} since {since} written to {csv_path}")
    return len(records)


async def split_command(
    settings: LogsSettings, fqdn: str, since: str, png: Path | None, qtype: str
) -> SplitReport:
    from rich.console import Console
    from rich.table import Table

    window = parse_since(since)
    async with natscmd.session(settings, "kgslb-logs") as nc:
        js = nc.jetstream()
        await natscmd.require(js, LOGS_STREAMS, settings.nats_url)
        with reading_progress() as progress:
            records = await read_logs(js, fqdn, window, progress)
        service = await read_service(js, fqdn)
    report = traffic_split(fqdn, records, service, qtype)
    report = SplitReport(
        report.fqdn, report.qtype, report.answered, report.members, report.clusters,
        chi_square_p_value(report), report.note,
    )  # fmt: skip
    console = Console()
    for title, rows in (("member", report.members), ("cluster", report.clusters)):
        table = Table(title=f"{fqdn} {qtype} since {since}: observed share per {title}")
        table.add_column(title, no_wrap=True)
        table.add_column("cluster" if title == "member" else "members", no_wrap=True)
        for column in ("weight", "weight %", "answers", "observed %", "diff pp"):
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(
                row.ip if title == "member" else row.cluster,
                row.cluster if title == "member" else str(sum(
                    1 for m in report.members if m.cluster == row.cluster
                )),
                str(row.weight), f"{100 * row.expected:.1f}", str(row.observed),
                f"{100 * row.share:.1f}", f"{100 * (row.share - row.expected):+.1f}",
            )  # fmt: skip
        console.print(table)
    p_value = "n/a" if report.p_value is None else f"{report.p_value:.4f}"
    console.print(f"{report.answered} answers; chi-square goodness of fit p-value: {p_value}")
    if report.note:
        console.print(f"note: {report.note}")
    if png is not None:
        write_chart(report, png)
        console.print(f"chart written to {png}")
    return report
