"""The local hello backends that `kgslb up` and the health tests probe: the seed's page per
site, virtual hosts like an Ingress, and a control to stop, start and break one site."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kgslb.backends import HelloBackends, HelloSite, backends_command, control_site
from kgslb.embedded import free_port

HELLO = "hello.avi.iberia.local"
SITES = {"s1az1": ("127.20.2.1", "SITE1 AZ1"), "s2": ("127.20.2.2", "SITE2")}


@pytest.fixture
async def backends() -> AsyncIterator[HelloBackends]:
    port = free_port()
    running = HelloBackends(
        HelloSite(cluster, ip, port, site, (HELLO,)) for cluster, (ip, site) in SITES.items()
    )
    await running.start()
    yield running
    await running.stop()


def url(backends: HelloBackends, cluster: str) -> str:
    return f"http://{SITES[cluster][0]}:{backends.port_of(cluster)}/"


async def get(address: str, host: str = HELLO, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(timeout=0.3) as client:
        return await client.request(method, address, headers={"Host": host})


async def test_each_site_answers_the_seed_message_with_its_pod_and_node(
    backends: HelloBackends,
) -> None:
    s1, s2 = await get(url(backends, "s1az1")), await get(url(backends, "s2"))

    assert "MESSAGE: This service resides in SITE1 AZ1" in s1.text
    assert "MESSAGE: This service resides in SITE2" in s2.text
    assert "<th>pod:</th>" in s1.text and "<th>node:</th>" in s1.text
    assert s1.headers["content-type"].startswith("text/html")


async def test_head_is_answered_without_a_body(backends: HelloBackends) -> None:
    reply = await get(url(backends, "s2"), method="HEAD")

    assert (reply.status_code, reply.content) == (200, b"")


async def test_an_unknown_host_gets_the_ingress_default_404(backends: HelloBackends) -> None:
    reply = await get(url(backends, "s2"), host="other.avi.iberia.local")

    assert reply.status_code == 404


async def test_a_wildcard_host_serves_every_name_of_the_zone() -> None:
    port = free_port()
    running = HelloBackends([HelloSite("s2", "127.20.2.2", port, "SITE2", ("*.avi.iberia.local",))])
    await running.start()
    try:
        address = f"http://127.20.2.2:{port}/"
        shop = await get(address, host="shop.avi.iberia.local")
        deeper = await get(address, host="a.b.avi.iberia.local:80")
        outside = await get(address, host="shop.example.org")
        apex_lookalike = await get(address, host="evilavi.iberia.local")
    finally:
        await running.stop()

    assert "MESSAGE: This service resides in SITE2" in shop.text
    assert deeper.status_code == 200
    assert (outside.status_code, apex_lookalike.status_code) == (404, 404)


async def test_a_stopped_site_refuses_connections_and_serves_again_once_started(
    backends: HelloBackends,
) -> None:
    await backends.stop_site("s2")
    with pytest.raises(httpx.ConnectError):
        await get(url(backends, "s2"))
    assert (await get(url(backends, "s1az1"))).status_code == 200

    await backends.start_site("s2")

    assert (await get(url(backends, "s2"))).status_code == 200


async def test_control_endpoint_breaks_and_heals_one_site(backends: HelloBackends) -> None:
    control = f"http://127.0.0.1:{await backends.serve_control()}"

    await asyncio.to_thread(control_site, control, "s2", "error")
    broken = await get(url(backends, "s2"))
    await asyncio.to_thread(control_site, control, "s2", "hang")
    with pytest.raises(httpx.ReadTimeout):
        await get(url(backends, "s2"))
    await asyncio.to_thread(control_site, control, "s2", "heal")
    healed = await get(url(backends, "s2"))

    assert broken.status_code == 500
    assert healed.status_code == 200


async def test_control_endpoint_names_what_it_does_not_know(backends: HelloBackends) -> None:
    control = f"http://127.0.0.1:{await backends.serve_control()}"

    with pytest.raises(
        RuntimeError, match=r"no hello backend for cluster 's3' \(known: s1az1, s2\)"
    ):
        await asyncio.to_thread(control_site, control, "s3", "stop")
    with pytest.raises(RuntimeError, match="unknown action 'reboot'"):
        await asyncio.to_thread(control_site, control, "s2", "reboot")


def test_backends_process_serves_sites_and_stops_one_on_request(tmp_path: Path) -> None:
    port, control_file = free_port(), tmp_path / "control-url"
    sites = [HelloSite(cluster, ip, port, site, (HELLO,)) for cluster, (ip, site) in SITES.items()]
    argv = [sys.executable, "-m", "kgslb.backends", *backends_command(sites, 0, control_file)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(len(sites) + 1)]
        control = control_file.read_text().strip()
        assert lines[-1].strip() == f"control {control}"

        stopped = control_site(control, "s2", "stop")

        assert stopped["running"] is False
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{SITES['s2'][0]}:{port}/", headers={"Host": HELLO})
        page = httpx.get(f"http://{SITES['s1az1'][0]}:{port}/", headers={"Host": HELLO})
        assert "resides in SITE1 AZ1" in page.text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    assert process.returncode == 0
    assert not control_file.exists()
