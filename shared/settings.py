"""The one settings loader: defaults, then `KGSLB_*` environment variables, then flags.

Every service declares its settings as a pydantic model; `load_settings` fills it. A bad value
fails before anything starts, with one line naming the key (`KGSLB_DNS_PORT`) and the problem.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "KGSLB_"


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the environment key or flag."""


class NatsSettings(BaseModel):
    """How every service reaches NATS (flags `--nats-*`, env `KGSLB_NATS_*`)."""

    model_config = ConfigDict(extra="forbid")

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="comma-separated URLs")
    nats_user: str | None = None
    nats_password: str | None = Field(default=None, repr=False)
    nats_token: str | None = Field(default=None, repr=False)
    nats_creds: str | None = Field(default=None, description="path of a .creds file (JWT+nkey)")
    nats_nkey_seed: str | None = Field(default=None, description="path of an nkey seed file")
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JetStream replicas of kgslb's streams and buckets: created with this many, "
        "raised to it, never lowered (3 for the 3-node NATS cluster)",
    )
    state_check_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="how often every service checks that kgslb's streams and KV buckets still "
        "exist (also at once after a NATS reconnect), recreating the missing ones; a lost "
        "JetStream store heals without a manual step",
    )


class ServiceSettings(NatsSettings):
    """Settings every service has."""

    log_level: str = "INFO"
    ops_host: str = Field(default="127.0.0.1", description="where /healthz /readyz /metrics listen")
    ops_port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    replica: str = Field(default="", description="replica name; default: hostname-pid")
    shutdown_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="after SIGTERM/SIGINT, stop gracefully within this many seconds, else exit "
        "1 (a second signal exits at once)",
    )


class DnssecSecretSettings(BaseModel):
    """The secret the DNSSEC private keys in KV `kgslb_keys` are encrypted with (the reconciler
    encrypts new keys with it, every DNS decrypts them); only needed with a signed zone."""

    dnssec_key_secret: str = Field(
        default="",
        repr=False,
        description="Fernet key (32 bytes, url-safe base64) encrypting the DNSSEC private keys "
        "at rest in NATS; the same for the reconciler and every DNS",
    )
    dnssec_key_secret_file: str = Field(
        default="", description="a file holding --dnssec-key-secret (a mounted Secret)"
    )

    @field_validator("dnssec_key_secret")
    @classmethod
    def _fernet_key(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                raw = base64.urlsafe_b64decode(value.encode())
            except (ValueError, binascii.Error):
                raw = b""
            if len(raw) != 32:
                raise ValueError("must be 32 bytes in url-safe base64 (44 characters)")
        return value


S = TypeVar("S", bound=BaseModel)


def env_key(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(
    model: type[S], flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> S:
    """Build `model` from env and flags. Flags given as None fall back to env, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in model.model_fields:
        key = env_key(name)
        if key in environ:
            values[name] = environ[key]
            origin[name] = key
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in model.model_fields:
            raise SettingsError(f"unknown setting {name!r}")
        values[name] = value
        origin[name] = "--" + name.replace("_", "-")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        where = origin.get(name, env_key(name))
        given = values.get(name, "<unset>")
        raise SettingsError(f"{where}={given!r}: {err['msg']}") from None
