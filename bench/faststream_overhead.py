"""What FastStream costs on kgslb's message paths, against nats-py, on one nats-server.

    .venv/bin/python bench/faststream_overhead.py                 # 30,000 messages, 5 rounds
    .venv/bin/python bench/faststream_overhead.py --messages 10000 --rounds 3

Two paths, each run the nats-py way and the FastStream way alternately (the machine is shared
and noisy: alternation spreads the noise over both), each round on the same server:

1. live health verdicts (core NATS): N `MemberHealth` envelopes published as the health
   service does, received and decoded as the DNS does. nats-py: `nc.publish` and an
   `nc.subscribe` callback; FastStream: a router publisher and subscriber on a
   `shared.broker.ServiceBroker` (the envelope decoder of the services). What moved.
2. the events stream (JetStream): N `ObservedObject` envelopes in a stream, consumed from the
   start by an ordered push consumer, as the reconciler follows KGSLB_EVENTS at a cold start
   (30,000 events at 10,000 FQDNs); KV follows (shared/follow.py) are the same kind of
   consumer. nats-py: `js.subscribe(cb, ordered_consumer=True)`; FastStream: a subscriber
   with `stream=`, `ordered_consumer=True` and no acknowledgement (ordered consumers take
   none). What stayed on nats-py.

Prints the median wall time and process CPU per path and way, and the overhead; writes
bench/results/faststream_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import nats  # noqa: E402
from faststream.message import StreamMessage  # noqa: E402
from faststream.middlewares import AckPolicy  # noqa: E402
from faststream.nats import JStream, NatsRouter  # noqa: E402
from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js.api import DeliverPolicy, StreamConfig  # noqa: E402

from kgslb.embedded import NatsServer  # noqa: E402
from shared import wire  # noqa: E402
from shared.broker import MemberHealthMessage, ServiceBroker, envelope_decoder  # noqa: E402
from shared.models import (  # noqa: E402
    HealthState,
    MemberHealth,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    utcnow,
)

RESULTS = REPO / "bench" / "results"
LIVE = "bench.live"
STREAM = "BENCH_EVENTS"
Timed = tuple[float, float]


def verdicts(n: int) -> list[tuple[str, bytes]]:
    now = utcnow()
    out = []
    for i in range(n):
        record = MemberHealth(
            fqdn=f"app{i // 3}.avi.iberia.local",
            ip=f"127.{20 + i % 3}.{(i // 3) // 250}.{(i // 3) % 250 + 1}",
            cluster="s1az1",
            state=HealthState.UP,
            since=now,
            last_probe_at=now,
            replica="health-0",
        )
        out.append((f"{LIVE}.app{i // 3}.{i % 3}", wire.encode(record)))
    return out


def events(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        ref = ObjectRef(
            cluster=("s1az1", "s1az2", "s2")[i % 3],
            kind=ObjectKind.INGRESS,
            namespace="default",
            name=f"app{i // 3}",
        )
        obj = ObservedObject(
            ref=ref,
            resource_version="1",
            labels={"app": "gslb"},
            hosts=[f"app{i // 3}.avi.iberia.local"],
            vips=[f"127.{20 + i % 3}.{(i // 3) // 250}.{(i // 3) % 250 + 1}"],
        )
        out.append((f"bench.events.{i}", wire.encode(obj)))
    return out


async def timed(run: Callable[[], Awaitable[None]]) -> Timed:
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    return time.perf_counter() - wall, time.process_time() - cpu


async def live_nats_py(url: str, messages: list[tuple[str, bytes]]) -> Timed:
    sender, receiver = await nats.connect(url), await nats.connect(url)
    done, got = asyncio.Event(), [0]

    async def on_live(msg: Msg) -> None:
        wire.decode(msg.data, MemberHealth)
        got[0] += 1
        if got[0] == len(messages):
            done.set()

    await receiver.subscribe(f"{LIVE}.>", cb=on_live, pending_msgs_limit=len(messages) * 2)
    await receiver.flush()

    async def run() -> None:
        for subject, data in messages:
            await sender.publish(subject, data)
        await asyncio.wait_for(done.wait(), 120)

    result = await timed(run)
    await sender.close()
    await receiver.close()
    return result


async def live_faststream(url: str, messages: list[tuple[str, bytes]]) -> Timed:
    sender, receiver = await nats.connect(url), await nats.connect(url)
    done, got = asyncio.Event(), [0]
    routes = NatsRouter()

    @routes.subscriber(
        f"{LIVE}.>",
        pending_msgs_limit=len(messages) * 2,
        decoder=envelope_decoder(MemberHealth, "bench"),
    )
    async def on_live(message: MemberHealthMessage) -> None:
        got[0] += 1
        if got[0] == len(messages):
            done.set()

    out = NatsRouter()
    publisher = out.publisher(f"{LIVE}.{{member}}", schema=MemberHealthMessage)
    receiving, sending = ServiceBroker(receiver), ServiceBroker(sender)
    receiving.include_router(routes)
    sending.include_router(out)
    await receiving.start()
    await sending.connect()
    await receiver.flush()

    async def run() -> None:
        for subject, data in messages:
            await publisher.publish(data, subject)
        await asyncio.wait_for(done.wait(), 120)

    result = await timed(run)
    await receiving.stop()
    await sender.close()
    await receiver.close()
    return result


async def fill_stream(url: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["bench.events.>"]))
    acks = [await js.publish_async(subject, data) for subject, data in messages]
    await asyncio.gather(*acks)
    await nc.close()


async def events_nats_py(url: str, n: int) -> Timed:
    nc: Client = await nats.connect(url)
    done, got = asyncio.Event(), [0]

    async def on_event(msg: Msg) -> None:
        wire.decode(msg.data, ObservedObject)
        got[0] += 1
        if got[0] == n:
            done.set()

    async def run() -> None:
        await nc.jetstream().subscribe(
            "bench.events.>",
            stream=STREAM,
            cb=on_event,
            ordered_consumer=True,
            idle_heartbeat=2,
            deliver_policy=DeliverPolicy.ALL,
        )
        await asyncio.wait_for(done.wait(), 120)

    result = await timed(run)
    await nc.close()
    return result


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """The body as it arrived: decoded by the handler, as the reconciler does."""
    return message.body


async def events_faststream(url: str, n: int) -> Timed:
    nc: Client = await nats.connect(url)
    done, got = asyncio.Event(), [0]
    routes = NatsRouter()

    @routes.subscriber(
        "bench.events.>",
        stream=JStream(STREAM, declare=False),
        ordered_consumer=True,
        idle_heartbeat=2,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_body,
    )
    async def on_event(body: bytes) -> None:
        wire.decode(body, ObservedObject)
        got[0] += 1
        if got[0] == n:
            done.set()

    broker = ServiceBroker(nc)
    broker.include_router(routes)

    async def run() -> None:
        await broker.start()
        await asyncio.wait_for(done.wait(), 120)

    result = await timed(run)
    await broker.stop()
    await nc.close()
    return result


async def bench(url: str, n: int, rounds: int) -> dict[str, Any]:
    live, stream = verdicts(n), events(n)
    await fill_stream(url, stream)
    runs: dict[str, list[Timed]] = {
        "live/nats-py": [],
        "live/faststream": [],
        "events/nats-py": [],
        "events/faststream": [],
    }
    for round_ in range(rounds):
        order = ("nats-py", "faststream") if round_ % 2 == 0 else ("faststream", "nats-py")
        for way in order:
            run = live_nats_py if way == "nats-py" else live_faststream
            runs[f"live/{way}"].append(await run(url, live))
        for way in order:
            consume = events_nats_py if way == "nats-py" else events_faststream
            runs[f"events/{way}"].append(await consume(url, n))
        print(f"round {round_ + 1}/{rounds} (load {' '.join(map(str, os.getloadavg()))})")
    table: dict[str, Any] = {}
    for name, timings in runs.items():
        table[name] = {
            "wall_s": round(statistics.median(t[0] for t in timings), 3),
            "cpu_s": round(statistics.median(t[1] for t in timings), 3),
            "walls": [round(t[0], 3) for t in timings],
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "store")
        server.start()
        try:
            table = asyncio.run(bench(server.url, args.messages, args.rounds))
        finally:
            server.stop()
    load_after = os.getloadavg()
    print(f"\n{args.messages} messages, {args.rounds} rounds, medians")
    print(f"{'path':<20}{'wall s':>9}{'cpu s':>9}{'us/msg cpu':>12}")
    for name, row in table.items():
        per = row["cpu_s"] / args.messages * 1e6
        print(f"{name:<20}{row['wall_s']:>9.3f}{row['cpu_s']:>9.3f}{per:>12.1f}")
    for path in ("live", "events"):
        base, fast = table[f"{path}/nats-py"], table[f"{path}/faststream"]
        wall = (fast["wall_s"] / base["wall_s"] - 1) * 100
        cpu = (fast["cpu_s"] / base["cpu_s"] - 1) * 100
        print(f"{path}: FastStream {wall:+.0f} % wall, {cpu:+.0f} % CPU")
    print(f"load {load_before} -> {load_after}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "faststream_overhead.json"
    out.write_text(
        json.dumps(
            {
                "messages": args.messages,
                "rounds": args.rounds,
                "load_before": load_before,
                "load_after": load_after,
                "paths": table,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
