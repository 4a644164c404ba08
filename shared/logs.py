"""One logging setup: JSON lines on stderr, with the service and replica on every record."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, replica: str) -> None:
        super().__init__()
        self.service = service
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "replica": self.replica,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, replica: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, replica))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # The NATS client logs every reconnect attempt at ERROR; our own callbacks report them.
    logging.getLogger("nats").setLevel(logging.CRITICAL)


def set_level(level: str) -> None:
    """Change the level at runtime (GSLBConfig.logLevel)."""
    logging.getLogger().setLevel("WARNING" if level.upper() == "WARN" else level.upper())
