"""Conditional KV puts in one window (shared.kv_window) against a real JetStream: each put
keeps its own condition and gets its own outcome, in order."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError

from shared.kv_window import ConditionalPut, WindowedPuts


async def test_each_put_of_a_window_gets_its_own_outcome_in_order(nats_client: Client) -> None:
    js = nats_client.jetstream()
    kv = await js.create_key_value(bucket="window_test")
    existing = await kv.put("taken", b"first")

    outcomes = await WindowedPuts(nats_client).put(
        kv,
        [
            ConditionalPut("new.a", b"a", 0),
            ConditionalPut("taken", b"create over a value", 0),
            ConditionalPut("new.b", b"b", 0),
            ConditionalPut("taken", b"update from a stale revision", existing + 100),
            ConditionalPut("taken", b"update from its revision", existing),
        ],
    )

    assert isinstance(outcomes[0], int) and isinstance(outcomes[2], int)
    assert isinstance(outcomes[1], KeyWrongLastSequenceError)
    assert isinstance(outcomes[3], KeyWrongLastSequenceError)
    assert isinstance(outcomes[4], int) and outcomes[4] > existing
    assert (await kv.get("new.a")).value == b"a"
    assert (await kv.get("new.b")).revision == outcomes[2]
    taken = await kv.get("taken")
    assert (taken.value, taken.revision) == (b"update from its revision", outcomes[4])


async def test_a_window_of_thousands_is_stored_whole(nats_client: Client) -> None:
    js = nats_client.jetstream()
    kv = await js.create_key_value(bucket="window_many")
    puts = [ConditionalPut(f"k{index}", str(index).encode(), 0) for index in range(3000)]

    outcomes = await WindowedPuts(nats_client).put(kv, puts)

    assert all(isinstance(outcome, int) for outcome in outcomes)
    assert sorted(outcomes) == list(range(1, 3001))  # type: ignore[type-var]
    assert (await kv.get("k2999")).value == b"2999"


async def test_puts_to_a_missing_bucket_fail_each_without_raising(nats_client: Client) -> None:
    js = nats_client.jetstream()
    kv = await js.create_key_value(bucket="window_gone")
    await js.delete_key_value("window_gone")

    writer = WindowedPuts(nats_client, ack_timeout_seconds=1.0)
    outcomes = await writer.put(kv, [ConditionalPut("k", b"v", 0)])

    assert len(outcomes) == 1 and isinstance(outcomes[0], Exception)
