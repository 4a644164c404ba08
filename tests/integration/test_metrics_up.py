"""`kgslb up` (what `make up` runs) serves Prometheus /metrics for every service it starts,
at the URLs it prints."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from kgslb.embedded import free_port
from tests.integration.test_up import stack_file


def test_kgslb_up_serves_metrics_for_every_service(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(tmp_path, free_port(), free_port())),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        printed: list[str] = []
        while not any("Ctrl-C" in line for line in printed):
            line = process.stdout.readline()
            assert line, "kgslb up exited:\n" + "".join(printed)
            printed.append(line)
        endpoints = dict(re.findall(r"(\S+)\s+(http://127\.0\.0\.1:\d+/metrics)", "".join(printed)))

        scraped = {name: httpx.get(url, timeout=5) for name, url in endpoints.items()}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)

    assert {"reconciler", "health", "dns"} <= set(scraped)
    assert any(name.startswith("watcher") for name in scraped)
    for name, response in scraped.items():
        assert response.status_code == 200, name
        assert "process_cpu_seconds_total" in response.text, name
