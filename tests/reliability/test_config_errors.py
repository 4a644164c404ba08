"""A broken setting stops a service before anything starts: one line on stderr naming the key,
exit code 2, no port bound and no state written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kgslb.embedded import free_port, port_in_use


def run_kgslb(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kgslb", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "key"),
    [
        (["dns"], {"KGSLB_DNS_PORT": "abc"}, "KGSLB_DNS_PORT"),
        (["dns", "--dns-port", "70000"], {}, "--dns-port"),
        (["dns"], {"KGSLB_WORKERS": "0"}, "KGSLB_WORKERS"),
        (["reconciler"], {"KGSLB_LEASE_TTL_SECONDS": "-3"}, "KGSLB_LEASE_TTL_SECONDS"),
        (["health"], {"KGSLB_OPS_PORT": "port"}, "KGSLB_OPS_PORT"),
        (["health", "--heartbeat-sekonds", "1"], {}, "--heartbeat-sekonds"),
        (["watcher", "--backoff-max-seconds", "0"], {}, "--backoff-max-seconds"),
    ],
    ids=["dns-env", "dns-flag", "dns-workers", "reconciler-env", "health-ops-port",
         "health-unknown-flag", "watcher-flag"],
)  # fmt: skip
def test_a_broken_setting_is_one_line_naming_the_key_and_exit_2(
    args: list[str], env: dict[str, str], key: str, tmp_path: Path
) -> None:
    ops_port = free_port()

    done = run_kgslb(args, {"KGSLB_OPS_PORT": str(ops_port), **env}, tmp_path)

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert key in done.stderr
    assert not port_in_use("127.0.0.1", ops_port)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("dns: {host: 127.0.0.1, port: abc}\n", "dns.port"),
        ("dns: [\n", "not valid YAML"),
        ("clusters:\n  s1: {vipPool: [127.0.0.1]}\n", "homeCluster"),
    ],
    ids=["bad-value", "bad-yaml", "missing-key"],
)
def test_kgslb_up_with_a_broken_file_is_one_line_and_exit_2_before_starting(
    text: str, key: str, tmp_path: Path
) -> None:
    (tmp_path / "broken.yaml").write_text(text)

    done = run_kgslb(["up", "-c", "broken.yaml", "--state-dir", "state"], {}, tmp_path)

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert key in done.stderr and "broken.yaml" in done.stderr
    assert not (tmp_path / "state").exists(), "nothing starts, nothing is written"
