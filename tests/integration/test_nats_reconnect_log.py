"""A NATS that goes away after the first connection is not silent (issue 20, item 1): every
failed reconnect attempt is a WARNING line with the URL (password hidden) and the reason, at
most one line per URL every few seconds (the attempts in between are counted), and the
reconnection is a line of its own. A real nats-server with a password is stopped and started
again on the same port."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from kgslb.embedded import NatsServer
from shared import bus
from shared.reconnects import RECONNECT_LOG_SECONDS
from shared.settings import NatsSettings
from tests.integration.conftest import eventually

PASSWORD = "s3cret-reconnect"


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


async def test_each_failed_reconnect_is_logged_with_url_and_reason_then_the_reconnection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "auth.conf"
    config.write_text(f'authorization {{ user: kgslb, password: "{PASSWORD}" }}\n')
    server = NatsServer(tmp_path / "jetstream", config=config)
    server.start()
    shown = f"nats://kgslb:***@127.0.0.1:{server.port}"
    caplog.set_level(logging.DEBUG, logger="shared.bus")
    nc = await bus.connect(
        NatsSettings(nats_url=f"nats://kgslb:{PASSWORD}@127.0.0.1:{server.port}"), "test"
    )
    try:
        server.stop()
        await eventually(lambda: lines(caplog, "nats connection disconnected"))
        # Two lines of failed attempts: the first at once, the next RECONNECT_LOG_SECONDS later.
        await eventually(
            lambda: len(lines(caplog, "reconnecting to NATS")) >= 2,
            timeout_seconds=RECONNECT_LOG_SECONDS * 4,
        )
        first, second = lines(caplog, "reconnecting to NATS")[:2]
        for record in (first, second):
            assert record.levelno == logging.WARNING
            text = record.getMessage()
            assert text.startswith(f"reconnecting to NATS at {shown}: "), text
            assert "111" in text or "refused" in text.lower(), text  # ECONNREFUSED
            assert record.nats_url == shown  # type: ignore[attr-defined]
        assert first.failed_attempts == 1  # type: ignore[attr-defined]
        # nats-py tried again every 0.5 s in between: counted, not each logged.
        assert second.failed_attempts > 2, second.getMessage()  # type: ignore[attr-defined]
        assert re.search(r"\(attempt \d+, down \d+\.\d s\)$", second.getMessage())

        server.start()
        reconnected = await eventually(lambda: lines(caplog, "nats connection reconnected"))
        text = reconnected[0].getMessage()
        assert text.startswith(f"nats connection reconnected to {shown} after "), text
        failed = reconnected[0].failed_attempts  # type: ignore[attr-defined]
        assert failed >= second.failed_attempts
        assert f"after {failed} failed attempts" in text
        await nc.flush(timeout=5)  # and it works again
    finally:
        await nc.close()
        server.stop()
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]
