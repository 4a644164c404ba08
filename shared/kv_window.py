"""Many conditional KV puts in one window: sent back to back, their acks awaited afterwards
under one moving deadline.

`KeyValue.create`/`update` make a request per key (a reply future, a timer) and gathering
them makes a task per key: a cold start's 300,000 first health verdicts cost ~40 us of the
writer's CPU each that way, ~22 us in windows (docs/benchmarks.md). Each put keeps its own
condition (`Nats-Expected-Last-Subject-Sequence`) and gets its own outcome.

The acks come to one wildcard reply subscription of ours, not nats-py's `publish_async`:
nats-py 2.16 raises in its reply handler on an error ack (a failed condition) instead of
failing the put's future, which then hangs until our deadline."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError
from nats.js.kv import KeyValue

ACK_TIMEOUT_SECONDS = 5.0
WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's error codes for a failed `Nats-Expected-Last-Subject-Sequence` condition."""
NO_RESPONDERS = "503"


@dataclass(frozen=True, slots=True)
class ConditionalPut:
    key: str
    value: bytes
    last: int
    """The key's revision the put expects; 0: the key must not exist (a create)."""


Outcome = int | Exception
"""The key's new revision, or why the put failed (`KeyWrongLastSequenceError`: the condition
did not hold; anything else: not stored, or not known to be)."""


class WindowedPuts:
    """One per NATS connection; its reply subscription is made at the first window."""

    def __init__(self, nc: Client, ack_timeout_seconds: float = ACK_TIMEOUT_SECONDS) -> None:
        self._nc = nc
        self.ack_timeout_seconds = ack_timeout_seconds
        self._prefix: str | None = None
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[int]] = {}

    async def put(self, kv: KeyValue, puts: Sequence[ConditionalPut]) -> list[Outcome]:
        """One outcome per put, in order. Never raises for a single put's failure."""
        prefix = await self._reply_prefix()
        subject_prefix = kv._pre  # "$KV.<bucket>." (nats-py's, JetStream domain included)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int] | Exception] = []
        for put in puts:
            token = str(next(self._tokens))
            pending: asyncio.Future[int] = loop.create_future()
            self._waiting[token] = pending
            headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(put.last)}
            try:
                await self._nc.publish(
                    subject_prefix + put.key, put.value, reply=prefix + token, headers=headers
                )
            except Exception as exc:  # not sent (NATS away)
                del self._waiting[token]
                futures.append(exc)
                continue
            futures.append(pending)
        outcomes: list[Outcome] = []
        try:
            # At most `ack_timeout_seconds` waiting for any one ack, as a request per key would.
            async with asyncio.timeout(self.ack_timeout_seconds) as deadline:
                for sent in futures:
                    if isinstance(sent, Exception):
                        outcomes.append(sent)
                        continue
                    if not sent.done():
                        deadline.reschedule(loop.time() + self.ack_timeout_seconds)
                    outcomes.append(await _outcome(sent))
        except TimeoutError:
            pass
        finally:
            for unacked in futures[len(outcomes) :]:
                if not isinstance(unacked, Exception):
                    unacked.cancel()
            self._forget_done()
        timed_out = TimeoutError(f"no JetStream ack within {self.ack_timeout_seconds} s")
        outcomes += [timed_out] * (len(futures) - len(outcomes))
        return outcomes

    async def _reply_prefix(self) -> str:
        if self._prefix is None:
            prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(prefix + "*", cb=self._on_ack)
            self._prefix = prefix
        return self._prefix

    def _forget_done(self) -> None:
        for token in [token for token, future in self._waiting.items() if future.done()]:
            del self._waiting[token]

    async def _on_ack(self, msg: Msg) -> None:
        assert self._prefix is not None
        future = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return  # late: the window gave up on it
        if msg.headers and msg.headers.get(Header.STATUS.value) == NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
            error = reply.get("error")
            if error is not None:
                future.set_exception(
                    APIError(
                        code=error.get("code"),
                        err_code=error.get("err_code"),
                        description=error.get("description"),
                    )
                )
            else:
                future.set_result(int(reply["seq"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            future.set_exception(APIError(description=f"unreadable JetStream ack: {exc}"))


async def _outcome(future: asyncio.Future[int]) -> Outcome:
    try:
        return await future
    except APIError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            return KeyWrongLastSequenceError(description=exc.description)
        return exc
    except NoStreamResponseError as exc:
        return exc
