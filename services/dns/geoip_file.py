"""The shell around the GeoIP database: read the `--geoip-database` file into memory, give
its lookup to the answer table, and read it again when the file changes (its mtime, size or
inode; polled every `--geoip-check-seconds`, no file-watching dependency).

The whole file is read into memory (`maxminddb.MODE_MEMORY`), never memory-mapped: a file
rewritten in place under a mapping would crash the process (SIGBUS) instead of being read
again. A file that is missing or not a valid database leaves the last good one in use, logged
and counted (`kgslb_dns_geoip_loads_total{result}`).
"""

from __future__ import annotations

import asyncio
import logging
import os

import maxminddb
from prometheus_client import Counter, Gauge

from services.dns.table import AnswerTable

log = logging.getLogger(__name__)

GEOIP_LOADS = Counter(
    "kgslb_dns_geoip_loads_total",
    "GeoIP database reads: ok, missing (no such file), invalid (not a MaxMind database)",
    ["result"],
)
GEOIP_LOADED = Gauge(
    "kgslb_dns_geoip_loaded_timestamp_seconds",
    "When the GeoIP database in use was read (its build time is in the log)",
)

FileState = tuple[int, int, int]
"""(mtime_ns, size, inode): a change of any one means the file was replaced or rewritten."""


class GeoIpFile:
    def __init__(self, path: str, table: AnswerTable, check_seconds: float) -> None:
        self.path = path
        self.table = table
        self.check_seconds = check_seconds
        self._seen: FileState | None = None
        self._missing_logged = False

    def _state(self) -> FileState | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    async def check(self) -> bool:
        """Read the file again if it changed since the last read; True when a new database
        is in use."""
        state = self._state()
        if state is None:
            if not self._missing_logged:
                GEOIP_LOADS.labels("missing").inc()
                log.warning(
                    "GeoIP database %s: no such file (Geo names answer with their fallback "
                    "until it appears)",
                    self.path,
                    extra={"path": self.path, "in_use": self.table.geoip.loaded},
                )
                self._missing_logged = True
            return False
        self._missing_logged = False
        if state == self._seen:
            return False
        self._seen = state
        try:
            reader = await asyncio.to_thread(
                maxminddb.open_database, self.path, maxminddb.MODE_MEMORY
            )
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            GEOIP_LOADS.labels("invalid").inc()
            log.error(
                "GeoIP database %s cannot be read, keeping the one in use: %s",
                self.path,
                exc,
                extra={"path": self.path, "in_use": self.table.geoip.loaded},
            )
            return False
        metadata = reader.metadata()
        self.table.set_geoip(reader.get_with_prefix_len, self.path)
        GEOIP_LOADS.labels("ok").inc()
        GEOIP_LOADED.set_to_current_time()
        log.info(
            "GeoIP database loaded",
            extra={
                "path": self.path,
                "database_type": metadata.database_type,
                "build_epoch": metadata.build_epoch,
                "nodes": metadata.node_count,
            },
        )
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            await self.check()
