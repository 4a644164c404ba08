"""The DNS's cost of combining health from several vantage points (services/dns/quorum.py),
in process, no NATS: loading every site's verdict on every member (the DNS's cold start reads
them all), and a site falling silent (every member it judged is recombined at once, on the
event loop, so this is how long the DNS stops answering while it happens).

    .venv/bin/python bench/dns_quorum.py              # 10,000 / 30,000 / 100,000 members
    .venv/bin/python bench/dns_quorum.py --sites 5

Prints one line per size: microseconds per verdict loaded, milliseconds to recombine when one
site goes silent (best of three).
"""

from __future__ import annotations

import argparse
import time

from services.dns.quorum import HealthBook, Written
from shared.models import HealthState

VALID_SECONDS = 6.0


def loaded(members: int, sites: list[str]) -> tuple[HealthBook, float]:
    book = HealthBook()
    for site in sites:
        book.heartbeat(f"health-{site}", site, VALID_SECONDS, 0.0)
    started = time.perf_counter()
    for n in range(members):
        member = f"app{n}=2Etest.10=2E0=2E0=2E1"
        for site in sites:
            book.set_verdict(member, site, Written(HealthState.UP, f"health-{site}"))
    return book, time.perf_counter() - started


def silent_site(book: HealthBook, sites: list[str]) -> float:
    """Every site but the first heartbeats again; the first falls silent."""
    later = VALID_SECONDS - 1
    for site in sites[1:]:
        book.heartbeat(f"health-{site}", site, VALID_SECONDS, later)
    started = time.perf_counter()
    book.expire(VALID_SECONDS + 1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--members", type=int, nargs="*", default=[10_000, 30_000, 100_000])
    args = parser.parse_args()
    sites = [f"s{n}" for n in range(1, args.sites + 1)]
    for members in args.members:
        load_times, silent_times = [], []
        for _ in range(3):
            book, load = loaded(members, sites)
            load_times.append(load)
            silent_times.append(silent_site(book, sites))
        per_verdict_us = min(load_times) / (members * len(sites)) * 1e6
        print(
            f"{members:>7} members x {len(sites)} sites: {per_verdict_us:.1f} us a verdict "
            f"loaded, one site falling silent recombines in {min(silent_times) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
