"""The `kgslb` command: one subcommand per service, plus the tools around them.

Service subcommands take every setting as a flag (`--dns-port 1053`) or as an environment
variable (`KGSLB_DNS_PORT=1053`); both go through `shared.settings.load_settings`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from shared.settings import SettingsError, env_key, load_settings

app = typer.Typer(
    help="kgslb: multi-cluster global server load balancer for Kubernetes, on NATS.",
    no_args_is_help=True,
    add_completion=False,
)

SETTINGS_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def parse_flags(args: list[str], model: type[BaseModel]) -> dict[str, Any]:
    """`--dns-port 1053` / `--dns-port=1053` -> {"dns_port": "1053"}, checked against model."""
    flags: dict[str, Any] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--"):
            raise SettingsError(f"unexpected argument {arg!r}")
        name, _, value = arg[2:].partition("=")
        field = name.replace("-", "_")
        if field not in model.model_fields:
            allowed = ", ".join("--" + f.replace("_", "-") for f in model.model_fields)
            raise SettingsError(f"unknown flag --{name} (allowed: {allowed})")
        if not value:
            if index + 1 >= len(args):
                raise SettingsError(f"flag --{name} needs a value")
            index += 1
            value = args[index]
        flags[field] = value
        index += 1
    return flags


def settings_help(model: type[BaseModel]) -> str:
    rows = []
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "" if field.default is None else f" (default {field.default!r})"
        rows.append(f"{flag} / {env_key(name)}{default}")
    return "Settings (flag / environment):\n\n" + "\n\n".join(rows)


def run_service_command(
    ctx: typer.Context, model: type[BaseModel], main: Callable[[Any], Coroutine[Any, Any, None]]
) -> None:
    from shared.runtime import run

    try:
        settings = load_settings(model, parse_flags(ctx.args, model))
    except SettingsError as exc:
        print(f"kgslb {ctx.info_name}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    run(main(settings))


def _service_command(name: str, module: str, settings_class: str, summary: str) -> None:
    import importlib

    def command(ctx: typer.Context) -> None:
        mod = importlib.import_module(module)
        run_service_command(ctx, getattr(mod, settings_class), mod.main)

    mod = importlib.import_module(module)
    command.__doc__ = f"{summary}\n\n{settings_help(getattr(mod, settings_class))}"
    app.command(name, context_settings=SETTINGS_CONTEXT)(command)


_service_command(
    "reconciler", "services.reconciler.service", "ReconcilerSettings",
    "Turn observed objects and policies into desired GSLB services (KV kgslb_services).",
)  # fmt: skip
_service_command(
    "dns", "services.dns.service", "DnsSettings",
    "Serve the GSLB zones over UDP and TCP from the desired state and member health.",
)  # fmt: skip
_service_command(
    "health", "services.health.service", "HealthSettings",
    "Probe members and publish their health (KV kgslb_health).",
)  # fmt: skip


@app.command()
def up(
    stack_file: Path = typer.Option(
        Path("examples/seed/kgslb.yaml"), "--config", "-c", help="stack file (the seed's topology)"
    ),
    state_dir: Path = typer.Option(Path(".kgslb"), help="JetStream storage and process logs"),
) -> None:
    """Start the whole system on this machine, on embedded defaults."""
    from kgslb.up import run_up

    raise typer.Exit(run_up(stack_file, state_dir))


@app.command(context_settings=SETTINGS_CONTEXT)
def status(ctx: typer.Context) -> None:
    """Show every GSLB service with its members, weights and health, and rejected policies."""
    from kgslb.status import StatusSettings, show_status
    from shared.runtime import run

    try:
        settings = load_settings(StatusSettings, parse_flags(ctx.args, StatusSettings))
    except SettingsError as exc:
        print(f"kgslb status: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    run(show_status(settings))


@app.command()
def check(
    fqdn: str = typer.Argument(..., help="the GSLB name, e.g. hello.avi.iberia.local"),
    interval: float = typer.Option(2.0, "--interval", "-i", help="seconds between checks"),
    count: int | None = typer.Option(None, "--count", "-n", help="stop after N checks"),
    server: str = typer.Option("127.0.0.1", help="the kgslb DNS address"),
    port: int = typer.Option(1053, help="the kgslb DNS port"),
    http_port: int = typer.Option(80, help="port of the application behind each answer"),
    nats_url: str = typer.Option(
        "nats://127.0.0.1:4222", envvar="KGSLB_NATS_URL", help="for the configured weights"
    ),
) -> None:
    """Resolve FQDN through kgslb, fetch the page from the answer, show which site served it."""
    import asyncio

    from kgslb.check import run_check

    asyncio.run(run_check(fqdn, server, port, http_port, interval, count, nats_url))
