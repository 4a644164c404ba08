"""The settings of the NATS-reading commands (`status`, `home`, `logs`), apart from the
commands: `kgslb` builds every command's flags when it starts, the services' too, and
importing the commands themselves (rich, yaml, their readers) cost every service process
~0.1-0.2 CPU-s at start for nothing."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from shared.quorum import QUORUM_HELP, Quorum
from shared.settings import NatsSettings

OUTPUTS = ("table", "json", "yaml")


class StatusSettings(NatsSettings):
    state_dir: Path = Field(
        default=Path(".kgslb"),
        description="the state directory of a `kgslb up` whose processes to show, if any",
    )
    health_quorum: str = Field(
        default="majority",
        description="combine the vantage points' verdicts as a DNS with this --health-quorum "
        "does: " + QUORUM_HELP,
    )

    output: str = Field(default="table", description="table, json or yaml")

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        if value not in OUTPUTS:
            raise ValueError(f"{value!r} is not one of {', '.join(OUTPUTS)}")
        return value

    @field_validator("health_quorum")
    @classmethod
    def _quorum(cls, value: str) -> str:
        return Quorum.parse(value).rule


class HomeSettings(NatsSettings):
    activate: str = Field(
        default="", description="make this home cluster active now (a manual failover)"
    )


class LogsSettings(NatsSettings):
    pass
