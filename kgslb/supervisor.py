"""Keeps the children of `kgslb up` running the way a kubelet keeps a pod's containers: a
child that exits, whatever the reason, is restarted after an exponential back-off that resets
once it has run stably, and its restarts are published for `kgslb status`. Children belong to
a site (or to none); a site's children can be stopped on purpose (`kgslb site fail`), and stay
stopped until resumed."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from kgslb.embedded import ManagedProcess

# Decisions (no I/O) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """CrashLoopBackOff with shorter times than a kubelet's (10 s doubling to 5 min, reset after
    10 min): a laptop demo should heal in under a second, and a child that keeps failing
    should still cost nothing."""

    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0
    stable_after_seconds: float = 60.0
    """A child that ran this long before exiting starts again from `first_delay_seconds`."""

    def delay_seconds(self, exits_in_a_row: int) -> float:
        doublings = max(exits_in_a_row - 1, 0)
        # Capped before the power, so a child failing for days never overflows a float.
        if doublings >= 64:
            return self.max_delay_seconds
        return min(self.first_delay_seconds * 2.0**doublings, self.max_delay_seconds)


class ChildState(StrEnum):
    RUNNING = "running"
    BACKING_OFF = "backing-off"
    """Exited; restarts at `restart_at`."""
    STOPPED = "stopped"
    """Stopped on purpose (`kgslb site fail`): not restarted until resumed."""


@dataclass(frozen=True, slots=True)
class ChildRecord:
    """What the supervisor knows of one child. Times are the supervisor's clock (monotonic:
    a wall-clock step must not delay a restart); `Supervisor.snapshot` publishes them as
    wall-clock times."""

    name: str
    state: ChildState
    started_at: float
    site: str = ""
    """The site (cluster) the child belongs to; empty: the whole stack's (the backends)."""
    restarts: int = 0
    exits_in_a_row: int = 0
    last_exit: str = ""
    last_exit_at: float | None = None
    restart_at: float | None = None
    stopped_at: float | None = None


def describe_exit(returncode: int) -> str:
    """`exit code 3`, or `signal 9 (SIGKILL)` for a child killed by a signal."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode} ({name})"


def after_exit(record: ChildRecord, how: str, now: float, policy: RestartPolicy) -> ChildRecord:
    """The record of a child that has just exited (`how`: see `describe_exit`): one more
    restart, due after the back-off for its exits in a row."""
    ran_seconds = now - record.started_at
    in_a_row = 1 if ran_seconds >= policy.stable_after_seconds else record.exits_in_a_row + 1
    return replace(
        record,
        state=ChildState.BACKING_OFF,
        restarts=record.restarts + 1,
        exits_in_a_row=in_a_row,
        last_exit=how,
        last_exit_at=now,
        restart_at=now + policy.delay_seconds(in_a_row),
    )


def restarted(record: ChildRecord, now: float) -> ChildRecord:
    return replace(record, state=ChildState.RUNNING, started_at=now, restart_at=None)


def stopped_on_purpose(record: ChildRecord, now: float) -> ChildRecord:
    """The record of a child stopped on purpose: no restart is due, whatever its state was."""
    return replace(record, state=ChildState.STOPPED, restart_at=None, stopped_at=now)


def resumed(record: ChildRecord, now: float) -> ChildRecord:
    """The record of a child started again after a stop on purpose. Not a restart: the stop
    was no failure, so neither the restart count nor the back-off moves."""
    return replace(
        record,
        state=ChildState.RUNNING,
        started_at=now,
        exits_in_a_row=0,
        restart_at=None,
        stopped_at=None,
    )


def exit_line(record: ChildRecord, log_path: Path) -> str:
    """The one line `kgslb up` prints for an exit (`record` as `after_exit` returned it)."""
    assert record.last_exit_at is not None and record.restart_at is not None
    return (
        f"{record.name} exited ({record.last_exit}); restart {record.restarts} in "
        f"{record.restart_at - record.last_exit_at:g} s (log {log_path})"
    )


# The supervisor (processes, clock, state file) ----------------------------------------------


class Supervisor:
    """Watches children already started (`adopt`), restarts those that exit (`tick`), stops
    them tier by tier (`stop_together`). Single-threaded: `kgslb up`'s main loop calls `tick`,
    so a stop never races a restart."""

    def __init__(
        self,
        policy: RestartPolicy,
        report: Callable[[str], None],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._report = report
        self._on_change = on_change
        self._clock = clock
        self._processes: dict[str, ManagedProcess] = {}
        self._records: dict[str, ChildRecord] = {}

    def adopt(self, process: ManagedProcess, site: str = "") -> None:
        """Supervise `process` from now on (started, in dependency order), as part of `site`."""
        self._processes[process.name] = process
        self._records[process.name] = ChildRecord(
            process.name, ChildState.RUNNING, started_at=self._clock(), site=site
        )

    @property
    def records(self) -> Mapping[str, ChildRecord]:
        return self._records

    def tick(self) -> None:
        """Record the children that exited since the last tick and restart those due."""
        changed = False
        for name, process in self._processes.items():
            record = self._records[name]
            if record.state is ChildState.STOPPED:
                continue
            now = self._clock()
            if record.state is ChildState.RUNNING and not process.running:
                assert process.process is not None
                how = describe_exit(process.process.returncode)
                record = after_exit(record, how, now, self.policy)
                self._report(exit_line(record, process.log_path))
                changed = True
            if record.restart_at is not None and now >= record.restart_at:
                try:
                    process.spawn()
                except OSError as exc:
                    failed = restarted(record, now)
                    record = after_exit(failed, f"could not start: {exc}", now, self.policy)
                    self._report(exit_line(record, process.log_path))
                else:
                    record = restarted(record, now)
                changed = True
            self._records[name] = record
        if changed:
            self._on_change()

    @property
    def names(self) -> list[str]:
        """The children in the order they were adopted: their dependency order."""
        return list(self._processes)

    def site_names(self, site: str) -> list[str]:
        """The children of `site`, in dependency order."""
        return [name for name, record in self._records.items() if record.site == site]

    def pid(self, name: str) -> int | None:
        process = self._processes[name].process
        running = self._records[name].state is ChildState.RUNNING
        return process.pid if running and process is not None else None

    def kill_and_hold(self, names: Iterable[str]) -> list[tuple[str, int | None]]:
        """SIGKILL each of `names` at once and keep them stopped until `resume`: nothing of
        theirs gets to say goodbye, as when a site loses power. Returns each child with the
        pid it had (None: it was not running, say backing off)."""
        names = list(names)
        pids = [(name, self.pid(name)) for name in names]
        for name in names:
            self._processes[name].kill()
        now = self._clock()
        for name in names:
            self._processes[name].reap()
            self._records[name] = stopped_on_purpose(self._records[name], now)
        self._on_change()
        return pids

    def resume(self, names: Iterable[str]) -> list[tuple[str, int | None]]:
        """Start again each of `names` that was stopped on purpose; returns each with its
        new pid (None: it was not stopped, it is left as it is). One that cannot be spawned
        backs off like one that exited."""
        started: list[tuple[str, int | None]] = []
        for name in names:
            record = self._records[name]
            if record.state is not ChildState.STOPPED:
                started.append((name, None))
                continue
            now = self._clock()
            try:
                self._processes[name].spawn()
            except OSError as exc:
                record = after_exit(
                    resumed(record, now), f"could not start: {exc}", now, self.policy
                )
                self._report(exit_line(record, self._processes[name].log_path))
            else:
                record = resumed(record, now)
            self._records[name] = record
            started.append((name, self.pid(name)))
        self._on_change()
        return started

    def stop_together(self, names: Iterable[str], grace_seconds: float) -> None:
        """SIGTERM to each of `names` at once, then SIGKILL to those still running after
        `grace_seconds`: stopping a tier takes one grace period, not one per child."""
        processes = [self._processes[name] for name in names]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + grace_seconds
        for process in processes:
            process.stop(max(deadline - time.monotonic(), 0.0))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The children as published in the state file, for `kgslb status`."""
        to_wall = time.time() - self._clock()

        def wall(seconds: float | None) -> str | None:
            if seconds is None:
                return None
            return datetime.fromtimestamp(seconds + to_wall, UTC).isoformat(timespec="milliseconds")

        out: dict[str, dict[str, Any]] = {}
        for name, record in self._records.items():
            process = self._processes[name].process
            running = record.state is ChildState.RUNNING
            out[name] = {
                "state": record.state.value,
                "site": record.site or None,
                "pid": process.pid if running and process is not None else None,
                "restarts": record.restarts,
                "started_at": wall(record.started_at) if running else None,
                "last_exit": record.last_exit or None,
                "last_exit_at": wall(record.last_exit_at),
                "restart_at": wall(record.restart_at),
                "stopped_at": wall(record.stopped_at),
                "log": str(self._processes[name].log_path),
            }
        return out


def write_json_atomically(path: Path, content: Mapping[str, Any]) -> None:
    """Readers (`kgslb status`, `kgslb backend`, scripts polling the file) never see half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(content, indent=2))
    os.replace(partial, path)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
