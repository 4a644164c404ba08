"""How a CLI command uses NATS: fail fast, say why in one line, never change JetStream.

A command (`kgslb status`, `kgslb logs ...`, `kgslb home`) connects with a deadline
(`bus.connect_or_fail`), looks its streams and buckets up instead of bootstrapping them (a
read-only command must not create or change a stream), and any NATS failure becomes one line
on stderr, `kgslb status: cannot reach NATS at nats://127.0.0.1:1: [Errno 111] Connection
refused`, and exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import typer
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from shared import bus
from shared.settings import NatsSettings

T = TypeVar("T")
DRAIN_SECONDS = 2.0


class MissingState(LookupError):
    """A stream or bucket the command reads does not exist on this NATS."""


@asynccontextmanager
async def session(settings: NatsSettings, name: str) -> AsyncIterator[Client]:
    """A connection that answered within `bus.CLI_CONNECT_SECONDS`, closed on the way out."""
    nc = await bus.connect_or_fail(settings, name)
    try:
        yield nc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), DRAIN_SECONDS)
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()


async def require(js: JetStreamContext, streams: Iterable[str], url: str) -> None:
    """Look `streams` up (a KV bucket `b` is stream `KV_b`); `MissingState` names those that
    do not exist. Lookups only: nothing is created or updated."""
    missing = []
    for stream in streams:
        try:
            await js.stream_info(stream)
        except NotFoundError:
            missing.append(stream)
    if missing:
        raise MissingState(
            f"{', '.join(missing)} not found on NATS at {bus.redact_url(url)}: no kgslb "
            "reconciler has created them there yet (this command only reads; start `kgslb "
            "reconciler` or `kgslb up`, or check --nats-url)"
        )


def describe(exc: BaseException, url: str) -> str | None:
    """The one line for a NATS failure, or None when `exc` is not one."""
    where = bus.redact_url(url)
    if isinstance(exc, (bus.NatsUnreachable, MissingState)):
        return str(exc)
    if isinstance(exc, (NoRespondersError, ServiceUnavailableError)):
        return f"NATS at {where} has no JetStream answering ({bus.attempt_reason(exc)})"
    if isinstance(exc, (NatsTimeoutError, TimeoutError)):
        return f"NATS at {where} did not answer in time (JetStream down or no permission?)"
    if isinstance(exc, APIError):
        return f"NATS at {where} refused: {exc.description or bus.attempt_reason(exc)}"
    if isinstance(exc, NatsError):
        return f"NATS at {where}: {bus.attempt_reason(exc)}"
    return None


def run_command(command: str, settings: NatsSettings, main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a NATS failure exits 1 with one line on stderr."""
    from shared.runtime import run

    try:
        return run(main)
    except Exception as exc:
        line = describe(exc, settings.nats_url)
        if line is None:
            raise
        print(f"kgslb {command}: {line}", file=sys.stderr)
        raise typer.Exit(1) from None
