"""The settings of every service: pydantic-settings models read from `KGSLB_*` environment
variables, then from flags (defaults < environment < flags).

Every service declares its settings as a `KgslbSettings` model (`services/*/settings.py`);
`KGSLB_DNS_PORT` fills `dns_port`, and the CLI (`kgslb dns --dns-port`) gives one typed flag per
field. `load_settings` builds a model from both and turns a bad value into one line naming the
key (`KGSLB_DNS_PORT` or `--dns-port`), the value (never a secret's) and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "KGSLB_"

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("kgslb_settings_environ", default=None)
"""The environment `load_settings(..., environ=...)` reads instead of `os.environ`."""


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (tests, worker processes)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}


class KgslbSettings(BaseSettings):
    """Base of every settings model: field `x_y` is env `KGSLB_X_Y` and flag `--x-y`; no .env
    file and no secrets directory are read (a mounted secret is a `*_file` setting)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, env_ignore_empty=False
    )

    help_panel: ClassVar[str | None] = None
    """The `--help` section this class's own fields are listed under (None: Options)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is not None:
            env_settings = _MappingEnvSource(settings_cls, environ)
        return (init_settings, env_settings)


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the environment key or flag."""


class NatsSettings(KgslbSettings):
    """How every service reaches NATS (flags `--nats-*`, env `KGSLB_NATS_*`)."""

    help_panel: ClassVar[str] = "NATS"

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

    help_panel: ClassVar[str] = "Service"

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


class DnssecSecretSettings(KgslbSettings):
    """The secret the DNSSEC private keys in KV `kgslb_keys` are encrypted with (the reconciler
    encrypts new keys with it, every DNS decrypts them); only needed with a signed zone."""

    help_panel: ClassVar[str] = "DNSSEC key secret"

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


S = TypeVar("S", bound=KgslbSettings)


def env_key(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


@contextmanager
def _reading(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def load_settings(
    model: type[S], flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> S:
    """Build `model` from defaults, `KGSLB_*` variables (of `environ`, default `os.environ`)
    and `flags` (field name -> value; None: not given), later ones winning. A bad value raises
    SettingsError: one line naming the flag or variable it came from."""
    given = {name: value for name, value in (flags or {}).items() if value is not None}
    for name in given:
        if name not in model.model_fields:
            allowed = ", ".join(flag_name(f) for f in model.model_fields)
            raise SettingsError(f"unknown setting {flag_name(name)} (allowed: {allowed})")
    try:
        with _reading(environ):
            return model(**given)
    except ValidationError as exc:
        raise SettingsError(
            describe_error(model, exc, given, os.environ if environ is None else environ)
        ) from None


def describe_error(
    model: type[KgslbSettings],
    exc: ValidationError,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
) -> str:
    """`--dns-port=70000: Input should be less than or equal to 65535`: where the first bad
    value came from, the value (`<hidden>` for a secret) and pydantic's reason."""
    err = exc.errors()[0]
    reason = str(err["msg"]).removeprefix("Value error, ")
    name = str(err["loc"][0]) if err["loc"] else ""
    field = model.model_fields.get(name)
    if field is None:  # a check across fields: its message names the flags
        return reason
    env = {key.upper(): value for key, value in environ.items()}
    if name in flags:
        where, given = flag_name(name), flags[name]
    elif env_key(name) in env:
        where, given = env_key(name), env[env_key(name)]
    else:
        where, given = f"{flag_name(name)} / {env_key(name)} (default)", field.default
    shown = "<hidden>" if not field.repr else repr(given)
    return f"{where}={shown}: {reason}"
