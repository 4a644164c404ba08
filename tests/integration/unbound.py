"""A real `unbound` (Debian package `unbound`) as the resolver in front of kgslb: the one
configuration header and start-up the resolver tests share (tests/integration/test_sites.py,
test_delegation.py, test_dnssec.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kgslb.embedded import wait_for_tcp

UNBOUND = shutil.which("unbound") or (
    "/usr/sbin/unbound" if Path("/usr/sbin/unbound").exists() else None
)


def write_config(directory: Path, port: int, server: str, zones: str) -> Path:
    """unbound.conf in `directory`: in the foreground, on 127.0.0.1:`port`, logging to stderr,
    asking loopback servers, answering loopback clients, no remote control; `server` adds
    options (indented lines) and `zones` the stub zones."""
    config = directory / "unbound.conf"
    config.write_text(
        f"""
server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: "{directory}/unbound.pid"
    logfile: ""
    use-syslog: no
    verbosity: 1
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
{server.rstrip()}
{zones.strip()}
remote-control:
    control-enable: no
"""
    )
    return config


def start(config: Path, port: int) -> subprocess.Popen[bytes]:
    """unbound with `config` (checked by unbound-checkconf first), once it listens on `port`;
    its log in unbound.log beside the config."""
    assert UNBOUND is not None
    check = subprocess.run(["unbound-checkconf", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [UNBOUND, "-d", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "unbound.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_for_tcp("127.0.0.1", port, 10, "unbound")
    except BaseException:
        process.kill()
        raise
    return process
