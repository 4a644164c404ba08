"""How `kgslb up` restarts its children (the back-off, the exit line), and how the seed's
health monitors follow the backends' port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from kgslb.embedded import ManagedProcess, StartupError
from kgslb.status import show_up_processes
from kgslb.supervisor import (
    ChildRecord,
    ChildState,
    RestartPolicy,
    Supervisor,
    after_exit,
    describe_exit,
    exit_line,
    restarted,
    resumed,
    stopped_on_purpose,
)
from kgslb.up import load_stack_config, monitors_follow_backends

POLICY = RestartPolicy(first_delay_seconds=0.5, max_delay_seconds=30, stable_after_seconds=60)


def test_the_restart_delay_doubles_from_the_first_delay_up_to_the_cap() -> None:
    delays = [POLICY.delay_seconds(n) for n in range(1, 10)]

    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert POLICY.delay_seconds(10_000) == 30


def test_a_child_exiting_again_soon_waits_twice_as_long_for_its_next_restart() -> None:
    record = ChildRecord("dns", ChildState.RUNNING, started_at=100.0)

    first = after_exit(record, "exit code 1", 101.0, POLICY)
    second = after_exit(restarted(first, 102.0), "exit code 1", 103.0, POLICY)

    assert (first.restarts, first.restart_at) == (1, 101.5)
    assert (second.restarts, second.restart_at) == (2, 104.0)
    assert second.state is ChildState.BACKING_OFF


def test_a_child_that_ran_stably_before_exiting_restarts_after_the_first_delay() -> None:
    crashed_often = ChildRecord("dns", ChildState.RUNNING, started_at=0.0, exits_in_a_row=6)

    record = after_exit(crashed_often, "signal 9 (SIGKILL)", 60.0, POLICY)

    assert record.exits_in_a_row == 1
    assert record.restart_at == 60.5


@pytest.mark.parametrize(
    ("returncode", "shown"),
    [(0, "exit code 0"), (3, "exit code 3"), (-9, "signal 9 (SIGKILL)"),
     (-15, "signal 15 (SIGTERM)")],
)  # fmt: skip
def test_an_exit_is_described_by_its_code_or_its_signal(returncode: int, shown: str) -> None:
    assert describe_exit(returncode) == shown


def test_the_exit_line_names_the_child_how_it_exited_its_restart_count_and_the_delay() -> None:
    record = after_exit(
        ChildRecord("dns", ChildState.RUNNING, started_at=0.0, restarts=2, exits_in_a_row=2),
        "signal 9 (SIGKILL)",
        1.0,
        POLICY,
    )

    assert exit_line(record, Path(".kgslb/logs/dns.log")) == (
        "dns exited (signal 9 (SIGKILL)); restart 3 in 2 s (log .kgslb/logs/dns.log)"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_killed_child_is_restarted_once_its_back_off_has_passed(tmp_path: Path) -> None:
    child = ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", {}
    )
    clock, lines, changes = FakeClock(), [], []
    supervisor = Supervisor(POLICY, lines.append, lambda: changes.append(1), clock)
    child.start()
    supervisor.adopt(child)
    assert child.process is not None
    first_pid = child.process.pid
    try:
        child.process.send_signal(signal.SIGKILL)
        child.process.wait(5)
        clock.now += 1
        supervisor.tick()
        waiting = supervisor.records["sleeper"]
        clock.now += 0.4
        supervisor.tick()
        still_waiting = child.process.pid
        clock.now += 0.1
        supervisor.tick()

        assert lines == [
            f"sleeper exited (signal 9 (SIGKILL)); restart 1 in 0.5 s (log {tmp_path}/s.log)"
        ]
        assert waiting.state is ChildState.BACKING_OFF
        assert still_waiting == first_pid
        assert child.running and child.process.pid != first_pid
        assert supervisor.records["sleeper"].state is ChildState.RUNNING
        assert supervisor.snapshot()["sleeper"]["restarts"] == 1
        assert len(changes) == 2
    finally:
        supervisor.stop_together(["sleeper"], 5)
    assert not child.running


def test_a_child_that_cannot_be_started_again_is_retried_with_a_longer_back_off(
    tmp_path: Path,
) -> None:
    child = ManagedProcess("sleeper", [sys.executable, "-c", "pass"], tmp_path / "s.log", {})
    clock, lines = FakeClock(), []
    supervisor = Supervisor(POLICY, lines.append, clock=clock)
    child.start()
    supervisor.adopt(child)
    assert child.process is not None
    child.process.wait(10)
    child.argv = [str(tmp_path / "gone")]

    supervisor.tick()
    clock.now += 0.5
    supervisor.tick()

    assert lines[0].startswith("sleeper exited (exit code 0); restart 1 in 0.5 s")
    assert lines[1].startswith("sleeper exited (could not start: [Errno 2] No such file")
    assert "restart 2 in 1 s" in lines[1]
    assert supervisor.records["sleeper"].state is ChildState.BACKING_OFF


# Stopped on purpose (`kgslb site fail`) ------------------------------------------------------


def test_a_child_stopped_on_purpose_has_no_restart_due_even_while_backing_off() -> None:
    backing_off = after_exit(
        ChildRecord("dns-s2", ChildState.RUNNING, started_at=0.0, site="s2"), "exit code 1", 1.0,
        POLICY,
    )  # fmt: skip

    record = stopped_on_purpose(backing_off, 1.2)

    assert record.state is ChildState.STOPPED
    assert (record.restart_at, record.stopped_at, record.restarts) == (None, 1.2, 1)


def test_resuming_is_not_a_restart_and_forgets_the_exits_in_a_row() -> None:
    crashing = ChildRecord("dns-s2", ChildState.RUNNING, started_at=0.0, restarts=4,
                           exits_in_a_row=4)  # fmt: skip

    record = resumed(stopped_on_purpose(crashing, 5.0), 9.0)

    assert record.state is ChildState.RUNNING
    assert (record.restarts, record.exits_in_a_row, record.started_at) == (4, 0, 9.0)
    assert record.stopped_at is None


def sleeper(tmp_path: Path, name: str) -> ManagedProcess:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    return ManagedProcess(name, argv, tmp_path / f"{name}.log", {})


def test_a_sites_children_killed_on_purpose_stay_down_until_resumed(tmp_path: Path) -> None:
    clock, lines = FakeClock(), []
    supervisor = Supervisor(POLICY, lines.append, clock=clock)
    children = {name: sleeper(tmp_path, name) for name in ("dns-s1", "health-s1", "dns-s2")}
    for name, child in children.items():
        child.start()
        supervisor.adopt(child, site=name.split("-")[1])
    try:
        before = {name: supervisor.pid(name) for name in children}

        killed = supervisor.kill_and_hold(supervisor.site_names("s1"))
        clock.now += 60
        supervisor.tick()
        held = {name: children[name].running for name in children}
        snapshot = supervisor.snapshot()
        started = supervisor.resume(supervisor.site_names("s1"))

        assert killed == [("dns-s1", before["dns-s1"]), ("health-s1", before["health-s1"])]
        assert held == {"dns-s1": False, "health-s1": False, "dns-s2": True}
        assert lines == [], "a stop on purpose is no exit to report or restart"
        assert snapshot["dns-s1"]["state"] == "stopped" and snapshot["dns-s1"]["pid"] is None
        assert snapshot["dns-s1"]["site"] == "s1" and snapshot["dns-s1"]["stopped_at"]
        assert [name for name, _ in started] == ["dns-s1", "health-s1"]
        assert all(pid not in (None, before[name]) for name, pid in started)
        assert all(child.running for child in children.values())
        assert supervisor.records["dns-s1"].restarts == 0
    finally:
        supervisor.stop_together(list(children), 5)


GRACEFUL_CHILD = """
import signal, sys, time
terms = []
signal.signal(signal.SIGTERM, lambda *_: terms.append(time.monotonic()))
print("ready", flush=True)
while not terms:
    time.sleep(0.01)
time.sleep(0.5)  # a graceful stop takes a while: a lease released, a drain
print(f"stopped after {len(terms)} SIGTERM", flush=True)
sys.exit(0 if len(terms) == 1 else 3)
"""


def test_stopping_children_together_sends_each_one_sigterm_and_lets_it_stop_gracefully(
    tmp_path: Path,
) -> None:
    """The services take a second SIGTERM as "exit at once" (shared.runtime)."""
    supervisor = Supervisor(POLICY, print)
    children = {}
    for name in ("reconciler-s1", "dns-s1"):
        log_path = tmp_path / f"{name}.log"
        children[name] = ManagedProcess(name, [sys.executable, "-c", GRACEFUL_CHILD], log_path, {})
        children[name].start()
        supervisor.adopt(children[name], site="s1")
    for child in children.values():
        while "ready" not in child.log_path.read_text():
            time.sleep(0.01)

    supervisor.stop_together(list(children), 5)

    for child in children.values():
        assert child.process is not None and child.process.returncode == 0
        assert "stopped after 1 SIGTERM" in child.log_path.read_text()


def test_resuming_a_running_child_leaves_it_alone(tmp_path: Path) -> None:
    supervisor = Supervisor(POLICY, print)
    child = sleeper(tmp_path, "dns-s1")
    child.start()
    supervisor.adopt(child, site="s1")
    try:
        pid = supervisor.pid("dns-s1")

        assert supervisor.resume(["dns-s1"]) == [("dns-s1", None)]
        assert supervisor.pid("dns-s1") == pid
    finally:
        supervisor.stop_together(["dns-s1"], 5)


# The seed's monitors and backends.port ------------------------------------------------------

GDP = {"apiVersion": "kgslb.io/v1alpha1", "kind": "GlobalDeploymentPolicy",
       "metadata": {"name": "global-gdp"}, "spec": {"matchClusters": [{"cluster": "s2"}]}}  # fmt: skip


def with_monitor(kind: str, monitor: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"fqdn": "hello.avi.iberia.local"} if kind == "GSLBHostRule" else {}
    if monitor is not None:
        spec["healthMonitorTemplate"] = monitor
    return {"kind": kind, "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize(
    ("document", "monitor_after"),
    [
        (GDP, {"port": 8080}),
        (with_monitor("GlobalDeploymentPolicy", {"intervalSeconds": 1}),
         {"intervalSeconds": 1, "port": 8080}),
        (with_monitor("GlobalDeploymentPolicy", {"kind": "tcp"}), {"kind": "tcp", "port": 8080}),
        (with_monitor("GSLBHostRule", {"path": "/up"}), {"path": "/up", "port": 8080}),
        (with_monitor("GlobalDeploymentPolicy", {"port": 9000}), {"port": 9000}),
        (with_monitor("GlobalDeploymentPolicy", {"kind": "https"}), {"kind": "https"}),
        (with_monitor("GlobalDeploymentPolicy", {"kind": "none"}), {"kind": "none"}),
        (with_monitor("GSLBHostRule", None), None),
    ],
    ids=["gdp-without-monitor", "gdp-monitor-without-port", "tcp", "host-rule-monitor",
         "explicit-port-kept", "https-kept", "none-kept", "host-rule-without-monitor-kept"],
)  # fmt: skip
def test_the_seeds_monitors_probe_the_backends_port(
    document: dict[str, Any], monitor_after: dict[str, Any] | None
) -> None:
    [moved] = monitors_follow_backends([document], 8080)

    assert moved["spec"].get("healthMonitorTemplate") == monitor_after


def test_on_port_80_or_0_the_manifests_are_applied_as_written() -> None:
    for port in (80, 0):
        assert monitors_follow_backends([GDP], port) == [GDP]


def test_other_objects_and_the_given_manifests_are_left_untouched() -> None:
    service = {"kind": "Service", "metadata": {"name": "hello"}, "spec": {"ports": [{"port": 80}]}}
    original = [GDP, service]

    moved = monitors_follow_backends(original, 8080)

    assert moved[1] == service
    assert "healthMonitorTemplate" not in GDP["spec"]  # type: ignore[operator]


# `kgslb status` ---------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_shows_each_child_with_its_restarts_and_a_gone_up_as_such(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    state = {
        "supervisor_pid": dead_pid(),
        "children": {
            "nats-server": {"state": "running", "pid": 4321, "restarts": 0,
                            "started_at": (now - timedelta(minutes=5)).isoformat()},
            "dns": {"state": "backing-off", "pid": None, "restarts": 3,
                    "last_exit": "exit code 1", "restart_at": (now + timedelta(seconds=4)).isoformat()},
        },
    }  # fmt: skip
    (tmp_path / "stack.json").write_text(json.dumps(state))
    console = Console(record=True, width=200, force_terminal=True)

    show_up_processes(console, tmp_path)

    shown = console.export_text()
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in shown.splitlines() if line.startswith("│")}  # fmt: skip
    assert f"kgslb up (pid {state['supervisor_pid']}) is not running" in shown
    assert rows["nats-server"] == ["running", "4321", "0", "", "up 5 min"]
    assert rows["dns"][:4] == ["backing-off", "", "3", "exit code 1"]
    assert rows["dns"][4].startswith("restart in ")


def test_status_shows_a_child_stopped_on_purpose_and_how_to_bring_it_back(
    tmp_path: Path,
) -> None:
    stopped_at = (datetime.now(UTC) - timedelta(seconds=12)).isoformat()
    state = {
        "supervisor_pid": dead_pid(),
        "children": {"dns-s2": {"state": "stopped", "site": "s2", "pid": None, "restarts": 0,
                                "stopped_at": stopped_at}},
    }  # fmt: skip
    (tmp_path / "stack.json").write_text(json.dumps(state))
    console = Console(record=True, width=200, force_terminal=True)

    show_up_processes(console, tmp_path)

    row = next(line for line in console.export_text().splitlines() if "dns-s2" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells == ["dns-s2", "stopped", "", "0", "", "stopped 12 s ago (kgslb site restore)"]


def test_status_shows_no_processes_where_no_kgslb_up_runs(tmp_path: Path) -> None:
    console = Console(record=True, width=200, force_terminal=True)

    show_up_processes(console, tmp_path)

    assert console.export_text() == ""


# The stack file's supervision settings ---------------------------------------------------------

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"


def stack_with(tmp_path: Path, supervision: dict[str, Any]) -> Path:
    config = yaml.safe_load(SEED.read_text())
    config["supervision"] = supervision
    for cluster in config["clusters"].values():
        cluster["apply"] = [str(SEED.parent / name) for name in cluster["apply"]]
    path = tmp_path / "kgslb.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_seed_restarts_after_half_a_second_doubling_to_30_seconds() -> None:
    policy = load_stack_config(SEED).supervision.restart_policy

    assert policy == RestartPolicy(0.5, 30.0, 60.0)


@pytest.mark.parametrize(
    ("supervision", "error"),
    [
        ({"maxRestartDelaySeconds": 0},
         "supervision.maxRestartDelaySeconds: Input should be greater than 0"),
        ({"firstRestartDelaySeconds": 60},
         "supervision: Value error, firstRestartDelaySeconds (60) is above "
         "maxRestartDelaySeconds (30)"),
        ({"restartDelay": 1}, "supervision.restartDelay: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_supervision_setting_is_named_in_one_line(
    tmp_path: Path, supervision: dict[str, Any], error: str
) -> None:
    path = stack_with(tmp_path, supervision)

    with pytest.raises(StartupError) as raised:
        load_stack_config(path)

    assert str(raised.value) == f"{path}: {error}"
