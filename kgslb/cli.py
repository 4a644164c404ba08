"""The `kgslb` command: one subcommand per service, plus the tools around them.

Service subcommands take every setting as a typed flag (`--dns-port 1053`) or as an environment
variable (`KGSLB_DNS_PORT=1053`); flags win over the environment, the environment over the
defaults (`kgslb.settings_cli`, `shared.settings`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from kgslb.settings_cli import SettingsCommand, settings_flags
from shared.settings import KgslbSettings, NatsSettings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("kgslb")
        except PackageNotFoundError:
            shown = "unknown (not installed)"
        print(f"kgslb {shown}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version"
    ),
) -> None:
    """kgslb: multi-cluster global server load balancer for Kubernetes, on NATS.

    Shell completion: `kgslb --install-completion` (bash, zsh, fish, PowerShell)."""


def _service_command(name: str, package: str, settings_class: str, summary: str) -> None:
    """Register `kgslb <name>` with one typed flag per setting of the service. Only the
    settings module is imported here: a service module registers its metrics on import, and
    each process must expose only its own."""
    import importlib

    model: type[KgslbSettings] = getattr(
        importlib.import_module(f"{package}.settings"), settings_class
    )

    def command(settings: Any) -> None:
        from shared.runtime import ServiceFailed, run

        service = importlib.import_module(f"{package}.service")
        try:
            run(service.main(settings))
        except ServiceFailed:
            raise typer.Exit(1) from None  # run_service logged why

    command.__doc__ = (
        f"{summary}\n\nEvery setting is a flag or a KGSLB_* variable; flags win over the "
        "environment, the environment over the defaults."
    )
    app.command(name, cls=SettingsCommand)(settings_flags(model, skip=())(command))


_service_command(
    "reconciler", "services.reconciler", "ReconcilerSettings",
    "Turn observed objects and policies into desired GSLB services (KV kgslb_services).",
)  # fmt: skip
_service_command(
    "dns", "services.dns", "DnsSettings",
    "Serve the GSLB zones over UDP and TCP from the desired state and member health.",
)  # fmt: skip
_service_command(
    "health", "services.health", "HealthSettings",
    "Probe members and publish their health (KV kgslb_health).",
)  # fmt: skip


@app.command()
def up(
    stack_file: Path = typer.Option(
        Path("examples/seed/kgslb.yaml"), "--config", "-c", help="stack file (the seed's topology)"
    ),
    state_dir: Path = typer.Option(
        Path(".kgslb"), help="JetStream storage, the simulator's objects and process logs"
    ),
    clean: bool = typer.Option(
        False,
        "--clean",
        help="start afresh: forget the Kubernetes objects and the JetStream store of the "
        "last run (kept by default, as a cluster keeps them)",
    ),
) -> None:
    """Start the whole system on this machine, on embedded defaults.

    The simulated clusters keep their objects in STATE_DIR/kubesim across runs, so what you
    changed with kubectl is still there next time; --clean starts from the seed."""
    from kgslb.up import run_up

    raise typer.Exit(run_up(stack_file, state_dir, clean))


def _settings_model(module: str, name: str) -> type[KgslbSettings]:
    import importlib

    model: type[KgslbSettings] = getattr(importlib.import_module(module), name)
    return model


@app.command(cls=SettingsCommand)
@settings_flags(_settings_model("kgslb.command_settings", "StatusSettings"))
def status(settings: Any) -> None:
    """Show every GSLB service with its members, weights and health, and rejected policies.

    A terminal gets tables; a pipe or a file gets plain columns, nothing cut; -o json or
    -o yaml for scripts. Reads only: fails within seconds, with one line, when NATS does not
    answer."""
    from kgslb import natscmd
    from kgslb.status import show_status

    natscmd.run_command("status", settings, show_status(settings))


@app.command(cls=SettingsCommand)
@settings_flags(_settings_model("kgslb.command_settings", "HomeSettings"))
def home(settings: Any) -> None:
    """Show the active home cluster and each possible home.

    --activate CLUSTER fails over by hand."""
    from kgslb import natscmd
    from kgslb.home import run_home

    raise typer.Exit(natscmd.run_command("home", settings, run_home(settings)))


member_app = typer.Typer(help="Act on one member of a GSLB name.", no_args_is_help=True)
app.add_typer(member_app, name="member")


@member_app.command("resume", cls=SettingsCommand)
@settings_flags(NatsSettings)
def member_resume(
    fqdn: str = typer.Argument(..., help="the GSLB name, e.g. hello.avi.iberia.local"),
    cluster: str = typer.Argument(..., help="the member cluster (or third-party site)"),
    settings: Any = None,
) -> None:
    """Answer again the members of CLUSTER held under manualResume (they went down).

    Exits 1 when nothing is held there."""
    from kgslb import natscmd
    from kgslb.member import run_resume

    raise typer.Exit(
        natscmd.run_command("member resume", settings, run_resume(settings, fqdn, cluster))
    )


@app.command()
def check(
    fqdn: str = typer.Argument(..., help="the GSLB name, e.g. hello.avi.iberia.local"),
    interval: float = typer.Option(2.0, "--interval", "-i", help="seconds between checks"),
    count: int = typer.Option(
        20, "--count", "-n", min=0, help="stop after N checks; 0: until Ctrl-C"
    ),
    server: str = typer.Option("127.0.0.1", help="the kgslb DNS address"),
    port: int = typer.Option(1053, help="the kgslb DNS port"),
    http_port: int = typer.Option(80, help="port of the application behind each answer"),
    nats_url: str = typer.Option(
        "nats://127.0.0.1:4222", envvar="KGSLB_NATS_URL", help="for the configured weights"
    ),
) -> None:
    """Resolve FQDN through kgslb, fetch the page from the answer, show which site served it.

    Ends after --count checks (or Ctrl-C) with the tally per site; exits 1 when any check
    failed (no DNS answer, a timeout, an HTTP error)."""
    import asyncio

    from kgslb.check import run_check

    result = asyncio.run(run_check(fqdn, server, port, http_port, interval, count, nats_url))
    raise typer.Exit(result.exit_code)


@app.command()
def backend(
    action: str = typer.Argument(..., help="stop | start | error | hang | heal"),
    cluster: str = typer.Argument(..., help="the site's cluster, e.g. s2"),
    state_dir: Path = typer.Option(Path(".kgslb"), help="the state directory of `kgslb up`"),
) -> None:
    """Stop, start or break one site's hello backend in a running `kgslb up`."""
    from kgslb.backends import ACTIONS, control_site, describe_site
    from kgslb.embedded import StartupError
    from kgslb.up import read_state

    if action not in ACTIONS:
        print(
            f"kgslb backend: action {action!r} is not one of {', '.join(ACTIONS)}", file=sys.stderr
        )
        raise typer.Exit(2)
    try:
        state = read_state(state_dir)
        result = control_site(state["backends_control"], cluster, action)
    except (StartupError, OSError, RuntimeError) as exc:
        print(f"kgslb backend: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(describe_site(cluster, result))


site_app = typer.Typer(
    help="Take one site of a running `kgslb up` down, or bring it back (a stack file whose "
    "clusters each have their own dns and nats, like the seed's).",
    no_args_is_help=True,
)
app.add_typer(site_app, name="site")


def _site_command(cluster: str, action: str, state_dir: Path) -> None:
    from kgslb.control import site_action
    from kgslb.embedded import StartupError
    from kgslb.up import read_state

    try:
        state = read_state(state_dir)
        if "control" not in state:
            raise StartupError(
                f"the `kgslb up` of {state_dir} runs a single site: give each cluster of its "
                "stack file its own dns and nats (see examples/seed/kgslb.yaml)"
            )
        done = site_action(state["control"], cluster, action)
    except (StartupError, OSError, RuntimeError) as exc:
        print(f"kgslb site {action}: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    for line in done:
        print(f"{cluster}: {line}")


@site_app.command("fail")
def site_fail(
    cluster: str = typer.Argument(..., help="the site's cluster, e.g. s1az1"),
    cut: bool = typer.Option(
        False,
        "--cut",
        help="a network cut instead: stop only the site's nats-server and Kubernetes API; its "
        "DNS keeps answering from memory, its other services keep running, cut off",
    ),
    state_dir: Path = typer.Option(Path(".kgslb"), help="the state directory of `kgslb up`"),
) -> None:
    """Lose a whole site at once: kill its nats-server, DNS, health, reconciler and watcher,
    stop its cluster's API server and its hello backend. Prints one line per part."""
    _site_command(cluster, "cut" if cut else "fail", state_dir)


@site_app.command("restore")
def site_restore(
    cluster: str = typer.Argument(..., help="the site's cluster, e.g. s1az1"),
    state_dir: Path = typer.Option(Path(".kgslb"), help="the state directory of `kgslb up`"),
) -> None:
    """Bring a failed or cut site back: start whatever of it is stopped, its nats-server
    first. Prints one line per part."""
    _site_command(cluster, "restore", state_dir)


# ----- watcher and kube-sim (issue 4) -------------------------------------------------------

_service_command(
    "watcher", "services.watcher", "WatcherSettings",
    "List and watch one member cluster (a kubeconfig context) and publish what it holds.",
)  # fmt: skip

SEED_VIP_POOLS = "s1az1=127.10.25.46,s1az2=127.10.26.40,s2=127.10.23.40"


def parse_vip_pools(specs: list[str], clusters: list[str]) -> dict[str, list[str]]:
    """`s1az1=127.10.25.46,s2=127.10.23.40` (a cluster may repeat) -> {cluster: [ip, ...]}."""
    import ipaddress

    pools: dict[str, list[str]] = {}
    for entry in (e.strip() for spec in specs for e in spec.split(",")):
        if not entry:
            continue
        cluster, equals, ip = entry.partition("=")
        if not equals or cluster not in clusters:
            raise typer.BadParameter(
                f"{entry!r}: expected CLUSTER=IP with CLUSTER one of {', '.join(clusters)}",
                param_hint="--vip-pool",
            )
        try:
            pools.setdefault(cluster, []).append(str(ipaddress.ip_address(ip.strip())))
        except ValueError:
            raise typer.BadParameter(f"{entry!r}: {ip!r} is not an IP address") from None
    return pools


@app.command("kube-sim")
def kube_sim(
    clusters: str = typer.Option("s1az1,s1az2,s2", help="comma-separated cluster names"),
    host: str = typer.Option("127.0.0.1", help="listen address (loopback)"),
    port: int = typer.Option(0, help="port of the first cluster, the next ones follow; 0: any"),
    kubeconfig: Path = typer.Option(
        Path(".kgslb/kube-sim.kubeconfig"), help="where to write the kubeconfig (a context each)"
    ),
    vip_pool: list[str] = typer.Option(
        [SEED_VIP_POOLS], help="CLUSTER=IP,... addresses the AKO stand-in hands out (repeatable)"
    ),
) -> None:
    """Run the Kubernetes API simulator: one fake API server per cluster, for kubectl and the
    watchers, over HTTPS with its CA and an admin token in the kubeconfig, and RBAC enforced
    from the Roles and bindings applied to it. For trying kgslb and for tests, not a Kubernetes."""
    try:
        from kubesim import cli_main
    except ModuleNotFoundError as exc:
        # The service image leaves the simulator out; say so rather than print a traceback.
        if exc.name != "kubesim":
            raise
        print(
            "kgslb kube-sim: the Kubernetes API simulator (package `kubesim`) is not installed;"
            " it comes with a source install (`pip install -e .`), not with the service image",
            file=sys.stderr,
        )
        raise typer.Exit(2) from None

    names = [name.strip() for name in clusters.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter("at least one cluster name", param_hint="--clusters")
    cli_main(names, host, port, str(kubeconfig), parse_vip_pools(vip_pool, names))


# ----- import-amko (issue 5) ----------------------------------------------------------------


@app.command("import-amko")
def import_amko(
    source: Path = typer.Argument(
        ..., help="AMKO helm values (values_amko.yaml) or AMKO GSLBConfig/GDP/GSLBHostRule YAML"
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="write the kgslb resources here (default: stdout)"
    ),
    namespace: str = typer.Option(
        "avi-system", help="namespace of the resources made from helm values"
    ),
) -> None:
    """Convert AMKO configuration to kgslb custom resources (kgslb.io/v1alpha1).

    Every AMKO field is mapped or listed on stderr as unsupported, with the reason; likely
    mistakes (a cluster listed twice, a member cluster left out) are listed as warnings.
    """
    from kgslb.amko_import import AmkoInputError, convert, describe, load, render

    try:
        report = convert(load(source), namespace)
    except AmkoInputError as exc:
        print(f"kgslb import-amko: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    text = render(report.resources, source.name)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
    print(describe(report, str(source)), file=sys.stderr)


# --- asyncapi (deploy and operate) -------------------------------------------------------------


@app.command("asyncapi")
def asyncapi(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="write the document here (default: stdout)"
    ),
) -> None:
    """Print the AsyncAPI document of every kgslb subject and KV bucket (docs/asyncapi.yaml)."""
    from kgslb.asyncapi import render as render_asyncapi

    text = render_asyncapi()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


# ----- logs (issue 3) ------------------------------------------------------------------------

logs_app = typer.Typer(
    help="Read DNS query logs back from stream KGSLB_DNSLOG.", no_args_is_help=True
)
app.add_typer(logs_app, name="logs")


def _fqdn_argument(fqdn: str | None, deprecated: str | None) -> str:
    """`kgslb logs export FQDN`, like `logs split FQDN`; `--fqdn FQDN` still works, with a
    note."""
    if deprecated is not None:
        print("kgslb logs export: --fqdn is deprecated, give the name as the first argument "
              "(kgslb logs export FQDN --csv FILE)", file=sys.stderr)  # fmt: skip
        if fqdn is not None and fqdn != deprecated:
            print(f"kgslb logs export: two names, {fqdn!r} and --fqdn {deprecated!r}",
                  file=sys.stderr)  # fmt: skip
            raise typer.Exit(2)
        return deprecated
    if fqdn is None:
        print("kgslb logs export: missing the FQDN (kgslb logs export FQDN --csv FILE)",
              file=sys.stderr)  # fmt: skip
        raise typer.Exit(2)
    return fqdn


@logs_app.command("export", cls=SettingsCommand)
@settings_flags(_settings_model("kgslb.command_settings", "LogsSettings"))
def logs_export(
    settings: Any,
    fqdn: str | None = typer.Argument(None, help="the GSLB name whose queries to export"),
    since: str = typer.Option("1h", "--since", help="how far back: 90s, 10m, 2h, 1d"),
    csv_path: Path = typer.Option(..., "--csv", help="the CSV file to write"),
    fqdn_option: str | None = typer.Option(
        None, "--fqdn", help="deprecated: give FQDN as the argument", hidden=True
    ),
) -> None:
    """Write the query logs of one name as CSV (one row per query)."""
    from kgslb import natscmd
    from kgslb.logs import LogsError, export_command

    name = _fqdn_argument(fqdn, fqdn_option)
    try:
        natscmd.run_command(
            "logs export", settings, export_command(settings, name, since, csv_path)
        )
    except LogsError as exc:
        print(f"kgslb logs export: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


@logs_app.command("split", cls=SettingsCommand)
@settings_flags(_settings_model("kgslb.command_settings", "LogsSettings"))
def logs_split(
    settings: Any,
    fqdn: str = typer.Argument(..., help="the GSLB name to analyse"),
    since: str = typer.Option("1h", "--since", help="how far back: 90s, 10m, 2h, 1d"),
    png: Path | None = typer.Option(None, "--png", help="also draw a bar and pie chart here"),
    qtype: str = typer.Option("A", "--qtype", help="A or AAAA answers"),
) -> None:
    """Observed share per member and cluster against the configured weights, with a
    chi-square p-value (needs scipy; --png needs matplotlib: pip install scipy matplotlib)."""
    from kgslb import natscmd
    from kgslb.logs import LogsError, split_command

    try:
        natscmd.run_command(
            "logs split", settings, split_command(settings, fqdn, since, png, qtype.upper())
        )
    except LogsError as exc:
        print(f"kgslb logs split: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


# ----- dnssec (issue 21) ----------------------------------------------------------------------

dnssec_app = typer.Typer(help="DNSSEC of the signed zones.", no_args_is_help=True)
app.add_typer(dnssec_app, name="dnssec")


@dnssec_app.command("ds", cls=SettingsCommand)
@settings_flags(NatsSettings)
def dnssec_ds(
    settings: Any,
    zone: str = typer.Argument(..., help="the signed zone, e.g. avi.iberia.local"),
    dnskey: bool = typer.Option(False, "--dnskey", help="print the DNSKEY RRset instead"),
    digest: str = typer.Option("SHA256", "--digest", help="SHA256 or SHA384"),
) -> None:
    """Print the DS record of the zone's KSK, to add to the parent zone.

    Reads KV kgslb_keys only; exits 1 when NATS does not answer or the zone has no keys."""
    from kgslb import natscmd
    from kgslb.dnssec_cli import DnssecError, read_zone_keys, zone_lines

    if digest.upper() not in ("SHA256", "SHA384"):
        print(f"kgslb dnssec ds: --digest {digest}: SHA256 or SHA384", file=sys.stderr)
        raise typer.Exit(2)
    try:
        keys = natscmd.run_command("dnssec ds", settings, read_zone_keys(settings, zone))
    except DnssecError as exc:
        print(f"kgslb dnssec ds: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print("\n".join(zone_lines(keys, dnskey, digest.upper())))
