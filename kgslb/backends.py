"""Local `hello-kubernetes` backends for `kgslb up` and the tests: one small HTTP server per site
on its loopback VIP, answering like the seed's hello app, with a switch to stop, start or break
one site (in-process, over an HTTP control endpoint, or `python -m kgslb.backends`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import platform
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from aiohttp import web

ACTIONS = ("start", "stop", "error", "hang", "heal")
"""Control verbs: `stop` closes the listener (connection refused), `error` answers 500, `hang`
never answers (a monitor times out), `heal` undoes `error` and `hang`."""


class Fault(StrEnum):
    NONE = "none"
    ERROR = "error"
    HANG = "hang"


@dataclass(frozen=True)
class HelloSite:
    """One site's hello app: where it listens and what it says."""

    cluster: str
    ip: str
    port: int = 80
    site: str = ""
    """Shown as `MESSAGE: This service resides in <site>`; default: the cluster in capitals."""
    hosts: tuple[str, ...] = ()
    """Virtual hosts it serves, like an Ingress rule; other Host headers get 404. Empty: any.
    `*.avi.iberia.local` serves every name below the zone (`kgslb up`'s default, so a second
    app added by hand is answered and stays up)."""

    @property
    def message(self) -> str:
        return f"MESSAGE: This service resides in {self.site or self.cluster.upper()}"

    @property
    def pod(self) -> str:
        digest = hashlib.sha256(self.cluster.encode()).hexdigest()
        return f"hello-{digest[:9]}-{digest[9:14]}"


PAGE = """<!DOCTYPE html>
<html>
<head>
    <title>Hello Kubernetes!</title>
</head>
<body>
  <div class="main">
    <div class="content">
      <div id="message">
  {message}
</div>
<div id="info">
  <table>
    <tr>
      <th>pod:</th>
      <td>{pod}</td>
    </tr>
    <tr>
      <th>node:</th>
      <td>{node}</td>
    </tr>
  </table>
</div>
    </div>
  </div>
</body>
</html>
"""


def serves(hosts: Iterable[str], host: str) -> bool:
    """Whether a Host header matches one of `hosts`: a name exactly (case-insensitive), or
    `*.zone` any name below the zone, at any depth."""
    host = host.rstrip(".").lower()
    for pattern in hosts:
        pattern = pattern.rstrip(".").lower()
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


def render_page(site: HelloSite) -> str:
    node = f"{platform.system()} ({platform.release()})"
    return PAGE.format(
        message=html.escape(site.message), pod=html.escape(site.pod), node=html.escape(node)
    )


@dataclass
class _Running:
    site: HelloSite
    fault: Fault = Fault.NONE
    runner: web.AppRunner | None = None
    port: int = 0
    hung: asyncio.Event = field(default_factory=asyncio.Event)


class HelloBackends:
    """The hello servers of every site; each can be stopped, started and broken on its own."""

    def __init__(self, sites: Iterable[HelloSite]) -> None:
        self._sites = {site.cluster: _Running(site) for site in sites}
        self._control: web.AppRunner | None = None

    @property
    def clusters(self) -> list[str]:
        return list(self._sites)

    def _get(self, cluster: str) -> _Running:
        try:
            return self._sites[cluster]
        except KeyError:
            known = ", ".join(self._sites) or "none"
            raise KeyError(f"no hello backend for cluster {cluster!r} (known: {known})") from None

    def port_of(self, cluster: str) -> int:
        """The port the site listens on (the bound one when configured as 0)."""
        running = self._get(cluster)
        return running.port or running.site.port

    def is_running(self, cluster: str) -> bool:
        return self._get(cluster).runner is not None

    async def start(self) -> None:
        for cluster in self._sites:
            await self.start_site(cluster)

    async def stop(self) -> None:
        for cluster in self._sites:
            await self.stop_site(cluster)
        if self._control is not None:
            await self._control.cleanup()
            self._control = None

    async def start_site(self, cluster: str) -> None:
        running = self._get(cluster)
        if running.runner is not None:
            return
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handler(running))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, running.site.ip, running.port or running.site.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno,
                f"hello backend of {cluster} cannot listen on "
                f"{running.site.ip}:{running.site.port}: {exc.strerror}",
            ) from None
        running.port = int(runner.addresses[0][1])
        running.runner = runner

    async def stop_site(self, cluster: str) -> None:
        """Close the site's listener and connections: its VIP now refuses connections."""
        running = self._get(cluster)
        if running.runner is None:
            return
        runner, running.runner = running.runner, None
        running.hung.set()
        await runner.cleanup()
        running.hung = asyncio.Event()

    def set_fault(self, cluster: str, fault: Fault) -> None:
        running = self._get(cluster)
        running.fault = fault
        if fault is not Fault.HANG:
            running.hung.set()
            running.hung = asyncio.Event()

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            cluster: {
                "ip": running.site.ip,
                "port": running.port or running.site.port,
                "site": running.site.site,
                "running": running.runner is not None,
                "fault": running.fault.value,
            }
            for cluster, running in self._sites.items()
        }

    async def act(self, cluster: str, action: str) -> None:
        """One control verb (see `ACTIONS`) on one site."""
        if action == "start":
            await self.start_site(cluster)
        elif action == "stop":
            await self.stop_site(cluster)
        elif action == "error":
            self.set_fault(cluster, Fault.ERROR)
        elif action == "hang":
            self.set_fault(cluster, Fault.HANG)
        elif action == "heal":
            self.set_fault(cluster, Fault.NONE)
        else:
            raise ValueError(f"unknown action {action!r} (allowed: {', '.join(ACTIONS)})")

    def _handler(self, running: _Running) -> Any:
        hosts = running.site.hosts
        page = render_page(running.site)

        async def handle(request: web.Request) -> web.StreamResponse:
            host = (request.host or "").rsplit(":", 1)[0]
            if hosts and not serves(hosts, host):
                # What an ingress controller's default backend says to an unknown Host.
                return web.Response(status=404, text="default backend - 404\n")
            if running.fault is Fault.HANG:
                await running.hung.wait()
            if running.fault is Fault.ERROR:
                return web.Response(status=500, text="Internal Server Error\n")
            return web.Response(text=page, content_type="text/html")

        return handle

    # Control endpoint ---------------------------------------------------------------------

    async def serve_control(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """`GET /sites`, `POST /sites/<cluster>/<action>`; returns the bound port."""
        app = web.Application()
        app.router.add_get("/sites", self._list)
        app.router.add_post("/sites/{cluster}/{action}", self._control_action)
        self._control = web.AppRunner(app, access_log=None)
        await self._control.setup()
        site = web.TCPSite(self._control, host, port)
        await site.start()
        return int(self._control.addresses[0][1])

    async def _list(self, _: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _control_action(self, request: web.Request) -> web.Response:
        cluster, action = request.match_info["cluster"], request.match_info["action"]
        try:
            await self.act(cluster, action)
        except KeyError as exc:
            return web.json_response({"error": exc.args[0]}, status=404)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except OSError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(self.status()[cluster])


def describe_site(cluster: str, state: dict[str, Any]) -> str:
    """One line for a site's backend as the control endpoint reports it (`kgslb backend`)."""
    where = f"http://{state['ip']}:{state['port']}/"
    site = f" ({state['site']})" if state.get("site") else ""
    line = f"{cluster}: the hello backend{site} at {where} is "
    line += "running" if state["running"] else "stopped"
    fault = state.get("fault", Fault.NONE)
    if fault != Fault.NONE:
        line += {Fault.ERROR: ", answering HTTP 500", Fault.HANG: ", hanging (no reply)"}.get(
            fault, f", fault {fault}"
        )
    return line


def control_site(control_url: str, cluster: str, action: str) -> dict[str, Any]:
    """Client side of the control endpoint (for a `kgslb` CLI verb); raises RuntimeError with
    the endpoint's reason on refusal."""
    import httpx

    reply = httpx.post(f"{control_url.rstrip('/')}/sites/{cluster}/{action}", timeout=5)
    body: dict[str, Any] = reply.json()
    if reply.status_code != 200:
        raise RuntimeError(body.get("error", f"HTTP {reply.status_code}"))
    return body


def parse_site(text: str, port: int, hosts: tuple[str, ...]) -> HelloSite:
    """`CLUSTER=IP[=SITE NAME]`, e.g. `s1az1=127.10.25.46=SITE1 AZ1`."""
    cluster, sep, rest = text.partition("=")
    ip, _, site = rest.partition("=")
    if not sep or not cluster or not ip:
        raise ValueError(f"{text!r}: expected CLUSTER=IP[=SITE NAME]")
    return HelloSite(cluster=cluster, ip=ip, port=port, site=site, hosts=hosts)


def backends_command(
    sites: Iterable[HelloSite], control_port: int, control_file: Path | None = None
) -> list[str]:
    """Arguments after `python -m kgslb.backends` that serve `sites` (all on one port)."""
    sites = list(sites)
    args = ["--port", str(sites[0].port if sites else 80), "--control-port", str(control_port)]
    for host in sorted({host for site in sites for host in site.hosts}):
        args += ["--host", host]
    for site in sites:
        args += ["--site", f"{site.cluster}={site.ip}={site.site}"]
    if control_file is not None:
        args += ["--control-file", str(control_file)]
    return args


async def serve(
    sites: list[HelloSite], control_host: str, control_port: int, control_file: Path | None
) -> None:
    backends = HelloBackends(sites)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await backends.start()
    port = await backends.serve_control(control_host, control_port)
    url = f"http://{control_host}:{port}"
    if control_file is not None:
        control_file.write_text(url + "\n")
    for cluster, state in backends.status().items():
        print(f"hello backend {cluster} on http://{state['ip']}:{state['port']}/", flush=True)
    print(f"control {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await backends.stop()
        if control_file is not None:
            with contextlib.suppress(OSError):
                control_file.unlink()


def main(
    site: list[str] = typer.Option([], "--site", help="CLUSTER=IP[=SITE NAME] (repeatable)"),
    port: int = typer.Option(80, "--port", help="port every site listens on"),
    host: list[str] = typer.Option([], "--host", help="virtual host served (repeatable)"),
    control_host: str = typer.Option("127.0.0.1", "--control-host"),
    control_port: int = typer.Option(0, "--control-port"),
    control_file: Path | None = typer.Option(
        None, "--control-file", help="write the control URL here"
    ),
) -> None:
    """The demo hello backends of `kgslb up`, one per site, and their control endpoint."""
    try:
        sites = [parse_site(text, port, tuple(host)) for text in site]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--site") from None
    from shared.runtime import run

    try:
        run(serve(sites, control_host, control_port, control_file))
    except OSError as exc:
        raise SystemExit(f"kgslb backends: {exc.strerror or exc}") from None


if __name__ == "__main__":
    typer.run(main)
