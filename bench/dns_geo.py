"""The DNS's cost of a Geo decision (services/dns/geo.py, algorithms.Geo), in process, no
NATS: a lookup in the MaxMind reader the DNS uses (pure Python, the file read into memory),
and a whole decision for a client address seen before (the lookup remembered) and for one
never seen (a new address every time).

    PYTHONPATH=. .venv/bin/python bench/dns_geo.py

Prints microseconds per operation (best of three runs of 20,000).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import maxminddb

from services.dns import wire
from services.dns.algorithms import Client
from services.dns.geo import GeoIp
from services.dns.gslb import decide
from tests.geoip_db import write_database
from tests.unit.test_dns_geo import geo_name

RUNS, N = 3, 20_000


def best_us(step: Callable[[int], object]) -> float:
    best = float("inf")
    for run in range(RUNS):
        started = time.perf_counter()
        for i in range(N):
            step(run * N + i)
        best = min(best, (time.perf_counter() - started) / N * 1e6)
    return best


def main() -> None:
    path = write_database(Path(tempfile.mkdtemp()) / "bench.mmdb")
    reader = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    name = geo_name(GeoIp(reader.get_with_prefix_len, str(path)))
    seen = Client("198.51.100.0", 24)

    def new_client(i: int) -> object:
        return decide(name, wire.A, Client(f"198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 32))

    print(
        f"reader lookup:               {best_us(lambda i: reader.get_with_prefix_len(f'198.51.100.{i & 255}')):6.1f} us"
    )
    print(f"Geo decision, address seen:  {best_us(lambda i: decide(name, wire.A, seen)):6.1f} us")
    print(f"Geo decision, new address:   {best_us(new_client):6.1f} us")


if __name__ == "__main__":
    main()
