"""`kgslb up` with its embedded nats-server killed (`kill -9`) right after its store was
deleted: the supervisor starts it again on an empty store, and the stack heals by itself:
the buckets hold the seed's names again, the DNS answers every member, every service is
ready again. No manual step."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.exception
import nats
from nats.js.errors import NotFoundError

from kgslb.embedded import free_port
from shared import subjects
from shared.follow import read_values
from tests.integration.test_up import pids, query, stack_file, start_up, stop_up, wait_until

MEMBERS = {"127.10.25.46", "127.10.26.40", "127.10.23.40"}
HEAL_BOUND_SECONDS = 30.0


def every_member_answered(port: int) -> bool:
    seen: set[str] = set()
    try:
        for _ in range(12):
            seen.update(rr.address for rrset in query(port, "hello.avi.iberia.local").answer
                        for rr in rrset)  # fmt: skip
    except dns.exception.DNSException:
        return False
    return seen == MEMBERS


async def _keys(url: str, bucket: str) -> list[str]:
    client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
    try:
        # Not nats-py's `keys()`: on a busy machine it can end before keys it has received
        # and then says there are none (a CI run read the seeded bucket empty this way).
        return list(await read_values(client.jetstream(), bucket, idle_seconds=2))
    except NotFoundError:
        return []
    finally:
        await client.close()


def bucket_keys(port: int, bucket: str) -> list[str]:
    try:
        return asyncio.run(_keys(f"nats://127.0.0.1:{port}", bucket))
    except Exception:
        return []


def all_ready(state: Path) -> bool:
    ops: dict[str, str] = json.loads((state / "stack.json").read_text())["ops"]
    for url in ops.values():
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as reply:
                if reply.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
    return bool(ops)


def test_nats_killed_after_its_store_was_deleted_heals_the_stack_with_no_manual_step(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = start_up(stack_file(tmp_path, dns_port, nats_port), state)
    try:
        wait_until(lambda: every_member_answered(dns_port), 30)
        wait_until(lambda: all_ready(state), 30)
        seeded = sorted(bucket_keys(nats_port, subjects.KV_SERVICES))
        before = pids(state)
        assert before["nats-server"] is not None
        shutil.rmtree(state / "jetstream")

        os.kill(before["nats-server"], signal.SIGKILL)
        killed = time.monotonic()

        wait_until(lambda: pids(state)["nats-server"] not in (None, before["nats-server"]), 20)
        wait_until(
            lambda: sorted(bucket_keys(nats_port, subjects.KV_SERVICES)) == seeded,
            HEAL_BOUND_SECONDS,
        )
        rebuilt_after = time.monotonic() - killed
        wait_until(lambda: bucket_keys(nats_port, subjects.KV_ZONES), 10)
        wait_until(lambda: every_member_answered(dns_port), 10)
        wait_until(lambda: all_ready(state), HEAL_BOUND_SECONDS)
        ready_after = time.monotonic() - killed
        after = pids(state)
        assert process.poll() is None, "kgslb up is still running"
    finally:
        stop_up(process)

    print(
        f"\nkgslb up, nats-server kill -9 on a deleted store: {len(seeded)} names back in KV "
        f"{rebuilt_after:.1f} s after the kill, every service ready at {ready_after:.1f} s"
    )
    assert seeded, "the seed's names were in KV before"
    assert {n: p for n, p in after.items() if n != "nats-server"} == {
        n: p for n, p in before.items() if n != "nats-server"
    }, "only nats-server was restarted: the services healed in place"
