"""The seed walkthrough, step by step, against one `kgslb up`: delegation check, the GSLB
config, the hello Ingresses, status, check, TTL, 6:3:1, dnsperf, logs split, the 20:20:1
canary, AAAA in respond and drop mode, and a site failure.

Every command a user would type is run for real and, with KGSLB_WALKTHROUGH_TRANSCRIPT=FILE,
written with its output to FILE (docs/walkthrough.md is made from such a transcript).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kgslb.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
HELLO = "hello.avi.iberia.local"
VIPS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}
CLUSTER_OF = {ip: cluster for cluster, ip in VIPS.items()}
QUERIES = int(os.environ.get("KGSLB_WALKTHROUGH_QUERIES", "5000"))
RATE = int(os.environ.get("KGSLB_WALKTHROUGH_QPS", "1000"))
TRANSCRIPT = os.environ.get("KGSLB_WALKTHROUGH_TRANSCRIPT")
FAST_MONITOR = {
    "intervalSeconds": 0.5, "timeoutSeconds": 0.4, "successesToUp": 2, "failuresToDown": 2,
}  # fmt: skip

pytestmark = pytest.mark.timeout(600)


@dataclass
class Walkthrough:
    state: Path
    dns_port: int
    nats_url: str
    kubeconfig: Path
    http_port: int
    process: subprocess.Popen[str]

    def run(self, title: str, command: str, check: bool = True) -> str:
        """Run a shell command as the user would type it; record it in the transcript."""
        env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{Path(sys.executable).parent}:"
               + os.environ.get("PATH", "")}  # fmt: skip
        result = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
        )
        output = (result.stdout + result.stderr).rstrip()
        if TRANSCRIPT:
            with open(TRANSCRIPT, "a") as transcript:
                shown = self.shown(f"$ {command}\n{output}")
                transcript.write(f"\n### {title}\n\n```\n{shown}\n```\n")
        if check:
            assert result.returncode == 0, f"{command} failed:\n{output}"
        return output

    def shown(self, text: str) -> str:
        """Commands and output as the docs show them: the default ports and paths of `make up`."""
        nats_port = self.nats_url.rsplit(":", 1)[1]
        for actual, default in (
            (str(self.kubeconfig), ".kgslb/kubeconfig"),
            (str(self.state), ".kgslb"),
            (f"127.0.0.1:{nats_port}", "127.0.0.1:4222"),
            (f"127.0.0.1#{self.dns_port}", "127.0.0.1#1053"),
            (f"127.0.0.1:{self.dns_port}", "127.0.0.1:1053"),
            (f"-p {self.dns_port}", "-p 1053"),
            (f"--port {self.dns_port}", "--port 1053"),
            (f"--http-port {self.http_port}", "--http-port 80"),
            (f"'port': {self.http_port}", "'port': 80"),
            (f":{self.http_port}/", ":80/"),
        ):
            text = text.replace(actual, default)
        return text

    @property
    def kubectl(self) -> str:
        return f"kubectl --kubeconfig {self.kubeconfig}"

    @property
    def nats(self) -> str:
        return f"--nats-url {self.nats_url}"


def query(port: int, name: str, rdtype: str = "A", timeout: float = 1.0) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port,
                         timeout=timeout)  # fmt: skip


def wait_until(check: object, timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_seconds} s")


def picks(port: int, count: int) -> Counter[str]:
    return Counter(query(port, HELLO).answer[0][0].address for _ in range(count))


def stack_file(tmp: Path, dns_port: int, nats_port: int, http_port: int) -> Path:
    """The seed's clusters as a single site (one nats-server, one of each service)."""
    config = yaml.safe_load((SEED / "kgslb.yaml").read_text())
    config["dns"] = {"host": "127.0.0.1", "port": dns_port}
    config["nats"] = {"host": "127.0.0.1", "port": nats_port}
    config["kubeApi"]["port"] = 0
    config["backends"]["port"] = http_port
    gdp_docs = list(yaml.safe_load_all((SEED / "global-gdp.yaml").read_text()))
    gdp_docs[-1]["spec"]["healthMonitorTemplate"] = {**FAST_MONITOR, "port": http_port}
    (tmp / "global-gdp.yaml").write_text(yaml.safe_dump_all(gdp_docs))
    for name, cluster in config["clusters"].items():
        cluster["apply"] = [
            str(tmp / "global-gdp.yaml") if f == "global-gdp.yaml" else str(SEED / f)
            for f in cluster["apply"]
        ]
        assert name in VIPS
        cluster.pop("dns", None)
        cluster.pop("nats", None)
    path = tmp / "kgslb.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    tmp = tmp_path_factory.mktemp("walkthrough")
    dns_port, nats_port, http_port = free_port(), free_port(), free_port()
    state = tmp / "state"
    env = {**os.environ, "KGSLB_LOG_PER_SECOND": "0"}  # the seed turns log throttling off
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(tmp, dns_port, nats_port,
         http_port)), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Ctrl-C" in line or not line:
            break
    assert any("kgslb is up" in line for line in lines), "".join(lines)
    walk = Walkthrough(
        state, dns_port, f"nats://127.0.0.1:{nats_port}", state / "kubeconfig", http_port, process
    )
    if TRANSCRIPT:
        started = walk.shown("$ make up\n" + "".join(lines))
        Path(TRANSCRIPT).write_text(f"### make up\n\n```\n{started}```\n")
    wait_until(lambda: set(picks(dns_port, 12)) == set(VIPS.values()), 30, "all three sites")
    yield walk
    process.send_signal(signal.SIGINT)
    process.wait(30)


def dnsperf_load(walk: Walkthrough, title: str) -> None:
    """5000 queries for the GSLB name; dnsperf where installed (the seed's tool)."""
    if shutil.which("dnsperf") is None:
        counted = picks(walk.dns_port, QUERIES)
        assert sum(counted.values()) == QUERIES
        return
    queryfile = walk.state / "queryfile.txt"  # written by `kgslb up`
    assert queryfile.read_text() == f"{HELLO} A\n"
    output = walk.run(
        title,
        f"dnsperf -d {queryfile} -s 127.0.0.1 -p {walk.dns_port} -n {QUERIES} -Q {RATE}",
    )
    assert f"Queries completed:    {QUERIES} " in output, output


def exported_split(walk: Walkthrough, since_seconds: float) -> dict[str, float]:
    path = walk.state / "export.csv"
    walk.run(
        "Export the query log (the seed's CSV export)",
        f"kgslb logs export {HELLO} --since {int(since_seconds) + 1}s --csv {path} {walk.nats}",
    )
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["qtype"] == "A"]
    first_answers = Counter(row["answers"].split(";")[0].split(" ")[0] for row in rows)
    total = sum(first_answers.values())
    return {CLUSTER_OF.get(ip, ip): count / total for ip, count in first_answers.items()}


def served_answers(walk: Walkthrough) -> Counter[str]:
    """`kgslb_dns_answers_total` for hello, per cluster, from the DNS service's /metrics."""
    dns_ops = json.loads((walk.state / "stack.json").read_text())["ops"]["dns"]
    with urllib.request.urlopen(f"{dns_ops}/metrics", timeout=5) as response:
        text = response.read().decode()
    served: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kgslb_dns_answers_total" and sample.labels["fqdn"] == HELLO:
                served[sample.labels["cluster"]] += int(sample.value)
    return served


def patch_gdp(walk: Walkthrough, title: str, spec: str) -> None:
    walk.run(
        title,
        f"{walk.kubectl} --context s1az1 -n avi-system patch globaldeploymentpolicy global-gdp "
        f"--type merge -p '{spec}'",
    )


def split_spec(s1az1: int, s1az2: int, s2: int) -> str:
    weights = {"s1az1": s1az1, "s1az2": s1az2, "s2": s2}
    split = [{"cluster": cluster, "weight": weight} for cluster, weight in weights.items()]
    return json.dumps({"spec": {"trafficSplit": split}}, separators=(",", ":"))


def test_01_the_zone_is_delegable_soa_answered_authoritatively(walk: Walkthrough) -> None:
    output = walk.run("1. Delegation: the SOA check", f"dig @127.0.0.1 -p {walk.dns_port} "
                      "avi.iberia.local SOA" if shutil.which("dig") else "true")  # fmt: skip
    reply = query(walk.dns_port, "avi.iberia.local", "SOA")
    assert reply.flags & dns.flags.AA
    assert reply.answer[0][0].mname.to_text() == "g-dns.iberia.local."
    assert "aa" in output or not shutil.which("dig")


def test_02_the_gslb_config_and_policy_are_accepted(walk: Walkthrough) -> None:
    walk.run("2. The GSLB configuration", f"{walk.kubectl} --context s1az1 get gslbconfig -A")

    def accepted() -> bool:
        output = walk.run(
            "2. The GlobalDeploymentPolicy, Accepted",
            f"{walk.kubectl} --context s1az1 -n avi-system get gdp global-gdp "
            "-o jsonpath='{.status.state}: {.status.message}'",
        )
        return output.startswith("Accepted")

    wait_until(accepted, 15, "global-gdp Accepted")


def test_03_the_hello_ingress_exists_in_each_cluster_with_its_vip(walk: Walkthrough) -> None:
    for cluster, vip in VIPS.items():
        output = walk.run(
            f"3. The hello Ingress in {cluster}",
            f"{walk.kubectl} --context {cluster} get ingress hello",
        )
        assert vip in output


def test_04_status_shows_one_service_with_three_members(walk: Walkthrough) -> None:
    output = walk.run(
        "4. kgslb status", f"COLUMNS=160 kgslb status {walk.nats} --state-dir {walk.state}"
    )
    for vip in VIPS.values():
        assert vip in output
    # Piped, not a terminal: plain columns, the process name first.
    processes = [line.split()[0] for line in output.splitlines()
                 if re.search(r"\s{2}running\s{2}", line)]  # fmt: skip
    assert processes[0] == "nats-server" and "dns" in processes, "the processes of kgslb up"


def test_05_check_visits_every_site(walk: Walkthrough) -> None:
    output = walk.run(
        "5. kgslb check (the seed's check_dns.sh)",
        f"COLUMNS=120 kgslb check {HELLO} --count 12 --interval 0 --port {walk.dns_port} "
        f"--http-port {walk.http_port} {walk.nats}",
    )
    for site in ("SITE1 AZ1", "SITE1 AZ2", "SITE2"):
        assert f"This service resides in {site}" in output


def test_06_a_ttl_change_is_seen_by_the_next_query(walk: Walkthrough) -> None:
    patch_gdp(walk, "6. Lower the TTL to 2 s", '{"spec":{"ttl":2}}')
    wait_until(lambda: query(walk.dns_port, HELLO).answer[0].ttl == 2, 10, "TTL 2")
    if shutil.which("dig"):
        output = walk.run("6. dig sees TTL 2", f"dig @127.0.0.1 -p {walk.dns_port} {HELLO} "
                          "+noall +answer")  # fmt: skip
        assert "\t2\tIN\tA" in output


def test_07_08_09_split_6_3_1_over_5000_dnsperf_queries_is_within_one_point(
    walk: Walkthrough,
) -> None:
    patch_gdp(walk, "7. Edit trafficSplit to 6:3:1", split_spec(6, 3, 1))
    wait_until(lambda: picks(walk.dns_port, 10) == Counter(
        {VIPS["s1az1"]: 6, VIPS["s1az2"]: 3, VIPS["s2"]: 1}), 10, "6:3:1 in force")  # fmt: skip
    started = time.monotonic()
    before = served_answers(walk)
    dnsperf_load(walk, f"8. dnsperf, {QUERIES} queries")
    served = served_answers(walk) - before
    time.sleep(1)  # the last log records are on their way
    shares = exported_split(walk, time.monotonic() - started)
    chart = walk.state / "split-6-3-1.png"
    walk.run("9. Traffic split analysis", f"COLUMNS=120 kgslb logs split {HELLO} --since "
             f"{int(time.monotonic() - started) + 1}s --png {chart} {walk.nats}")  # fmt: skip
    for cluster, weight in (("s1az1", 0.6), ("s1az2", 0.3), ("s2", 0.1)):
        assert abs(shares[cluster] - weight) <= 0.01, shares
        # The DNS's own answer counter tells the same split as the exported logs.
        assert abs(served[cluster] / sum(served.values()) - weight) <= 0.01, served
    assert sum(served.values()) >= QUERIES


def test_10_canary_20_20_1_sends_one_in_41_to_s2(walk: Walkthrough) -> None:
    patch_gdp(walk, "10. The canary: 20:20:1", split_spec(20, 20, 1))
    wait_until(lambda: picks(walk.dns_port, 41)[VIPS["s2"]] == 1, 10, "20:20:1 in force")
    started = time.monotonic()
    dnsperf_load(walk, f"10. dnsperf, {QUERIES} queries")
    time.sleep(1)
    shares = exported_split(walk, time.monotonic() - started)
    walk.run("10. Canary split", f"COLUMNS=120 kgslb logs split {HELLO} --since "
             f"{int(time.monotonic() - started) + 1}s {walk.nats}")  # fmt: skip
    for cluster, weight in (("s1az1", 20 / 41), ("s1az2", 20 / 41), ("s2", 1 / 41)):
        assert abs(shares[cluster] - weight) <= 0.01, shares


def test_11_aaaa_is_an_empty_noerror_in_respond_mode_and_silence_in_drop_mode(
    walk: Walkthrough,
) -> None:
    reply = query(walk.dns_port, HELLO, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert reply.authority[0].rdtype == dns.rdatatype.SOA
    if shutil.which("dig"):
        walk.run("11. AAAA in respond mode", f"dig @127.0.0.1 -p {walk.dns_port} AAAA {HELLO}")
    walk.run(
        "11. Switch the zone to drop unhandled queries",
        f"{walk.kubectl} --context s1az1 -n avi-system patch gslbconfig gc-1 --type json "
        """-p '[{"op":"replace","path":"/spec/zones/0/unhandled","value":"drop"}]'""",
    )

    def dropped() -> bool:
        try:
            query(walk.dns_port, HELLO, "AAAA", timeout=0.3)
        except dns.exception.Timeout:
            return True
        return False

    wait_until(dropped, 10, "AAAA dropped")
    if shutil.which("dig"):
        walk.run("11. AAAA in drop mode: no answer at all", f"dig @127.0.0.1 -p {walk.dns_port} "
                 f"AAAA {HELLO} +tries=1 +time=2", check=False)  # fmt: skip
    assert query(walk.dns_port, HELLO).answer, "A queries are still answered in drop mode"
    walk.run(
        "11. Back to respond",
        f"{walk.kubectl} --context s1az1 -n avi-system patch gslbconfig gc-1 --type json "
        """-p '[{"op":"replace","path":"/spec/zones/0/unhandled","value":"respond"}]'""",
    )
    wait_until(lambda: not dropped(), 10, "AAAA answered again")


def test_12_a_stopped_site_leaves_the_answers_and_returns(walk: Walkthrough) -> None:
    walk.run("12. Stop the s2 backend", f"kgslb backend stop s2 --state-dir {walk.state}")
    wait_until(lambda: VIPS["s2"] not in picks(walk.dns_port, 41), 10, "s2 withdrawn")
    walk.run("12. s2 is down", f"COLUMNS=160 kgslb status {walk.nats} --state-dir {walk.state}")
    walk.run("12. Start it again", f"kgslb backend start s2 --state-dir {walk.state}")
    wait_until(lambda: VIPS["s2"] in picks(walk.dns_port, 41), 10, "s2 back")
