"""Without NATS, every process says so at once and stops when told (issue 20, item 1).

A service pointed at a NATS URL that refuses logs each attempt with the URL and the reason,
answers /healthz 200 and /readyz 503 from its first second, and exits soon after SIGTERM. A
command that needs NATS fails within seconds with one line naming the URL and the reason, and
a read-only command never creates a stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from kgslb.embedded import NatsServer, free_port
from shared import bus
from shared.settings import NatsSettings

REFUSED = "nats://127.0.0.1:1"
UNRESOLVABLE = f"nats://{'x' * 64}.invalid:4222"
"""A host name no resolver can answer (a label longer than DNS allows): it fails before any
packet leaves the machine, as the tests' loopback-only rule wants."""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: s2
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: s2
  user: {token: test}
contexts:
- name: s2
  context: {cluster: s2, user: s2}
current-context: s2
"""

SERVICES = ["watcher", "reconciler", "health", "dns"]


def service_args(name: str, tmp_path: Path) -> list[str]:
    if name == "watcher":
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG)
        return ["--kubeconfig", str(kubeconfig), "--context", "s2"]
    if name == "dns":
        return ["--dns-port", str(free_port())]
    return []


def wait_for_line(log: Path, text: str, timeout: float) -> float:
    """Seconds until `text` appears in `log`; fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if log.exists() and text in log.read_text():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log} within {timeout} s:\n{log.read_text()}")


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_without_nats_says_why_answers_health_and_stops_on_sigterm(
    name: str, tmp_path: Path
) -> None:
    ops_port = free_port()
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kgslb", name, "--nats-url", REFUSED,
             "--ops-port", str(ops_port), *service_args(name, tmp_path)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        started = time.monotonic()
        wait_for_line(log, f"waiting for NATS at {REFUSED}: ", timeout=15)
        first_attempt = time.monotonic() - started
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        attempts = [line for line in lines if line["msg"].startswith("waiting for NATS")]
        assert attempts[0]["level"] == "WARNING"
        assert "refused" in attempts[0]["msg"].lower(), attempts[0]["msg"]
        assert attempts[0]["nats_url"] == REFUSED
        # From the service's first line (the interpreter's imports before it vary with the
        # machine's load) to its first attempt: well within the 2 s.
        since_first_line = stamp(attempts[0]) - stamp(lines[0])
        assert since_first_line < 2, lines[:3]

        healthz = httpx.get(f"http://127.0.0.1:{ops_port}/healthz", timeout=5)
        readyz = httpx.get(f"http://127.0.0.1:{ops_port}/readyz", timeout=5)
        assert healthz.status_code == 200
        assert readyz.status_code == 503
        assert f"waiting for NATS at {REFUSED}" in readyz.text

        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        code = process.wait(timeout=30)
        stopped_after = time.monotonic() - stopping
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The start-up (a Python interpreter and its imports) is slow on a loaded machine; the
    # first attempt comes right after it, and the stop must be quick whatever the load.
    print(f"{name}: first attempt logged after {first_attempt:.2f} s, "
          f"stopped {stopped_after:.2f} s after SIGTERM")  # fmt: skip
    assert stopped_after < 5, log.read_text()
    assert code == 0, log.read_text()
    assert f"{name} stopped" in log.read_text()


def stamp(line: dict[str, str]) -> float:
    return datetime.fromisoformat(line["time"]).timestamp()


def kgslb(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "kgslb", *args], capture_output=True, text=True, timeout=timeout
    )
    return result, time.monotonic() - started


COMMANDS = {
    "status": ["status"],
    "home": ["home"],
    "logs split": ["logs", "split", "hello.avi.iberia.local"],
    "logs export": ["logs", "export", "hello.avi.iberia.local", "--csv", "out.csv"],
    "dnssec ds": ["dnssec", "ds", "avi.iberia.local"],
}


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize(("url", "reason"), [(REFUSED, "refused"), (UNRESOLVABLE, "")])
def test_a_command_without_nats_fails_at_once_with_one_line(
    name: str, url: str, reason: str, tmp_path: Path
) -> None:
    args = [arg.replace("out.csv", str(tmp_path / "out.csv")) for arg in COMMANDS[name]]
    result, took = kgslb(*args, "--nats-url", url)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"kgslb {name}: cannot reach NATS at {url}: ")
    assert reason in lines[0].lower()
    assert result.stdout == ""
    # A Python start-up included; the connection itself is given up at once.
    assert took < 5 + 10, took


def test_status_fails_within_five_seconds(tmp_path: Path) -> None:
    """The issue's bound, the interpreter's start-up included."""
    result, took = kgslb("status", "--nats-url", REFUSED, "--state-dir", str(tmp_path))

    print(f"kgslb status failed after {took:.2f} s")
    assert result.returncode == 1
    assert took < 5, result.stderr


def test_read_only_commands_create_no_stream(nats_server: NatsServer, tmp_path: Path) -> None:
    for command in (["status", "--state-dir", str(tmp_path)], ["logs", "split", "x.example"]):
        result, _ = kgslb(*command, "--nats-url", nats_server.url)

        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "not found on NATS at" in lines[0] and "no kgslb reconciler" in lines[0]
    assert streams(nats_server.url) == []


def streams(url: str) -> list[str]:
    import asyncio

    async def names() -> list[str]:
        nc = await bus.connect_or_fail(NatsSettings(nats_url=url), "kgslb-test")
        try:
            return [info.config.name or "" for info in await nc.jetstream().streams_info()]
        finally:
            await nc.drain()

    return asyncio.run(names())


def test_check_exits_non_zero_when_the_dns_does_not_answer() -> None:
    port = free_port()  # nothing listens there: every query times out
    result, _ = kgslb(
        "check", "hello.avi.iberia.local", "--port", str(port), "--count", "2",
        "--interval", "0.1", "--nats-url", REFUSED,
    )  # fmt: skip

    assert result.returncode == 1
    assert "2 of 2 check(s) failed" in result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot reach NATS at {REFUSED}" in result.stderr


def test_version_and_shell_completion() -> None:
    version, _ = kgslb("--version")
    completion = subprocess.run(
        [sys.executable, "-m", "kgslb", "--show-completion", "bash"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )  # fmt: skip

    assert version.returncode == 0
    assert version.stdout.strip() == f"kgslb {metadata.version('kgslb')}"
    assert completion.returncode == 0, completion.stderr
    assert "complete" in completion.stdout


@pytest.mark.parametrize("command", [["status"], ["logs", "split"], ["logs", "export"], ["home"]])
def test_nats_flags_are_in_the_help_of_every_command_that_reads_nats(command: list[str]) -> None:
    result, _ = kgslb(*command, "--help")

    assert result.returncode == 0
    for flag in ("--nats-url", "--nats-user", "--nats-password", "--nats-creds", "--nats-tls-ca"):
        assert flag in result.stdout, flag


def test_check_prints_its_tally_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "check", "hello.avi.iberia.local", "--port",
         str(free_port()), "--count", "0", "--interval", "0.1", "--nats-url", REFUSED],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    first = process.stdout.readline()  # one check done (a DNS timeout): it is in its loop
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)

    assert "DNS:" in first
    assert "answers" in out and "check(s) failed" in out, out
    assert process.returncode == 130


def test_a_service_started_before_nats_gets_ready_once_nats_is_there(tmp_path: Path) -> None:
    nats_port, ops_port = free_port(), free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    log = tmp_path / "dns.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kgslb", "dns", "--nats-url", url, "--ops-port", str(ops_port),
             "--dns-port", str(free_port())],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = NatsServer(tmp_path / "jetstream", port=nats_port)
    try:
        wait_for_line(log, f"waiting for NATS at {url}: ", timeout=15)
        assert httpx.get(f"http://127.0.0.1:{ops_port}/readyz", timeout=5).status_code == 503

        server.start()

        deadline = time.monotonic() + 30
        ready = httpx.get(f"http://127.0.0.1:{ops_port}/readyz", timeout=5)
        while ready.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            ready = httpx.get(f"http://127.0.0.1:{ops_port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        server.stop()
    assert code == 0, log.read_text()
