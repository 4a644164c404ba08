"""`kgslb up`, as a user runs it: one command, answers within 30 s, Ctrl-C leaves nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import yaml

from kgslb.embedded import free_port, port_in_use

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"


def stack_file(
    tmp_path: Path, dns_port: int, nats_port: int, monitor: dict[str, object] | None = None
) -> Path:
    """The seed stack on free ports, its manifests referenced from examples/seed."""
    config = yaml.safe_load(SEED.read_text())
    config["dns"]["port"] = dns_port
    config["nats"]["port"] = nats_port
    config["kubeApi"]["port"] = 0
    config["backends"]["port"] = free_port()
    for cluster in config["clusters"].values():
        cluster["apply"] = [str(SEED.parent / name) for name in cluster["apply"]]
    if monitor is not None:
        documents = list(yaml.safe_load_all((SEED.parent / "global-gdp.yaml").read_text()))
        documents[-1]["spec"]["healthMonitorTemplate"] = {
            **monitor,
            "port": config["backends"]["port"],
        }
        gdp = tmp_path / "global-gdp.yaml"
        gdp.write_text(yaml.safe_dump_all(documents))
        home = config["clusters"][config["homeCluster"]]
        home["apply"] = [str(gdp) if name.endswith("global-gdp.yaml") else name
                         for name in home["apply"]]  # fmt: skip
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=1)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout_seconds: float) -> str:
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not printed; output was:\n{''.join(seen)}")


def test_up_answers_the_seed_within_30_seconds_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    dns_port, nats_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(tmp_path, dns_port, nats_port)),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = wait_for_line(process, "kgslb is up", 30)
        assert f"dig @127.0.0.1 -p {dns_port} hello.avi.iberia.local" in output + (
            wait_for_line(process, "Ctrl-C", 5)
        )
        children = children_of(process.pid)
        assert len(children) == 8, "nats-server, backends, 3 watchers, reconciler, health, dns"

        hello = query(dns_port, "hello.avi.iberia.local")
        soa = query(dns_port, "avi.iberia.local", "SOA")
        test = query(dns_port, "test.avi.iberia.local")

        assert hello.answer[0][0].address in {"127.10.25.46", "127.10.26.40", "127.10.23.40"}
        assert soa.flags & dns.flags.AA and soa.answer
        assert [rr.address for rr in test.answer[0]] == ["10.10.24.200"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    assert process.returncode == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    assert not port_in_use("127.0.0.1", dns_port, udp=True)


def test_up_refuses_a_busy_port_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        dns_port = squatter.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kgslb", "up", "-c",
             str(stack_file(tmp_path, dns_port, free_port())),
             "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kgslb up: port already in use: dns (udp) 127.0.0.1:{dns_port}"
    )
    assert not (tmp_path / "state" / "logs" / "nats-server.log").exists()


def answers(port: int, count: int) -> set[str]:
    return {query(port, "hello.avi.iberia.local").answer[0][0].address for _ in range(count)}


def wait_until(check: object, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_seconds} s")


def test_stopping_the_s2_backend_takes_s2_out_of_the_answers_and_starting_it_brings_it_back(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    fast = {"intervalSeconds": 0.5, "timeoutSeconds": 0.4, "successesToUp": 2, "failuresToDown": 2}
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c",
         str(stack_file(tmp_path, dns_port, nats_port, fast)), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    backend = [sys.executable, "-m", "kgslb", "backend", "--state-dir", str(state)]
    s2 = "127.10.23.40"
    try:
        wait_for_line(process, "Ctrl-C", 30)
        wait_until(lambda: s2 in answers(dns_port, 12), 15)

        subprocess.run([*backend, "stop", "s2"], check=True, capture_output=True)
        wait_until(lambda: s2 not in answers(dns_port, 12), 10)
        assert answers(dns_port, 12) == {"127.10.25.46", "127.10.26.40"}

        subprocess.run([*backend, "start", "s2"], check=True, capture_output=True)
        wait_until(lambda: s2 in answers(dns_port, 12), 10)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
