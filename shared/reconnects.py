"""Which failed NATS reconnect attempts get a log line (pure; `shared.bus.connect` logs them).

Once connected, nats-py retries a lost server every 0.5 s (`bus.RECONNECT_WAIT_SECONDS`), so a
NATS that stays away an hour would write 7,200 lines. The first failed attempt of each URL is
logged at once, then at most one line per URL every `every_seconds`; the lines in between are
counted, and each line says how many attempts failed and for how long the connection is
down, so nothing is hidden, only summarised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECONNECT_LOG_SECONDS = 5.0


@dataclass(frozen=True)
class Attempt:
    """What a line says: the attempt's number since the connection was lost, and for how long
    it has been down."""

    number: int
    down_seconds: float


@dataclass
class ReconnectLog:
    every_seconds: float = RECONNECT_LOG_SECONDS
    _down_since: float | None = None
    _failed: int = 0
    _last_line: dict[str, float] = field(default_factory=dict)

    def disconnected(self, now: float) -> None:
        if self._down_since is None:
            self._down_since = now
            self._failed = 0
            self._last_line.clear()

    def failed(self, url: str, now: float) -> Attempt | None:
        """A failed attempt on `url`: the line to log, or None when `url` had one less than
        `every_seconds` ago."""
        self.disconnected(now)  # an attempt without a disconnect seen: down since now
        assert self._down_since is not None
        self._failed += 1
        last = self._last_line.get(url)
        if last is not None and now - last < self.every_seconds:
            return None
        self._last_line[url] = now
        return Attempt(self._failed, now - self._down_since)

    def reconnected(self, now: float) -> Attempt:
        """Connected again: how many attempts failed, for how long it was down."""
        down = 0.0 if self._down_since is None else now - self._down_since
        done = Attempt(self._failed, down)
        self._down_since = None
        self._failed = 0
        self._last_line.clear()
        return done
