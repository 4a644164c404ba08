"""A cold start writes each name once: the reconciler plans names only when every member
cluster's first list is in (or a bounded wait runs out), so a name served by three clusters is
not written with one cluster's member and again with all three. Simulator -> three watcher
processes -> NATS -> reconciler -> KV, with the reconciler's default first-sync settings."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from kubesim.resources import INGRESSES
from shared import subjects, wire
from shared.follow import read_entries
from shared.models import GslbService
from tests.integration.conftest import Services, eventually
from tests.integration.test_reconciler_policies import WritesSettled, metric, ops_get
from tests.integration.test_watcher import CLUSTERS, VIPS, Kube, ingress, kube, start_watcher
from tests.integration.test_watcher_pipeline import publish_seed_policies

__all__ = ["kube"]  # the fixture, shared with test_watcher

NAMES = 40
DEFAULT_FIRST_SYNC = {
    "KGSLB_FIRST_SYNC_TIMEOUT_SECONDS": "10",
    "KGSLB_FIRST_SYNC_MAX_WAIT_SECONDS": "120",
}
SERVICES_STREAM = f"KV_{subjects.KV_SERVICES}"


def app_host(index: int) -> str:
    return f"app{index}.avi.iberia.local"


def create_apps(kube: Kube, clusters: list[str]) -> None:
    """NAMES Ingresses in each cluster, app<i> with the same host everywhere."""
    for cluster in clusters:
        store = kube.sim.store(cluster)
        for index in range(NAMES):
            store.create(INGRESSES, "default", ingress(f"app{index}", host=app_host(index)))


async def members_of_every_name(nc: Client) -> dict[str, set[str]]:
    kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
    out = {}
    for index in range(NAMES):
        entry = await kv.get(subjects.fqdn_key(app_host(index)))
        service = wire.decode(entry.value or b"", GslbService)
        out[app_host(index)] = {member.ip for member in service.all_members()}
    return out


async def every_name_has(nc: Client, vips: set[str]) -> bool:
    return all(found == vips for found in (await members_of_every_name(nc)).values())


async def kv_writes(nc: Client) -> int:
    """Every put and delete of a name the services bucket ever took: its stream's sequence,
    less the leader's fence markers (one per slot at its takeover; one leader here)."""
    info = await nc.jetstream().stream_info(SERVICES_STREAM, subjects_filter=">")
    prefix = f"$KV.{subjects.KV_SERVICES}."
    fences = sum(
        count
        for subject, count in (info.state.subjects or {}).items()
        if subjects.is_fence_key(subject.removeprefix(prefix))
    )
    return int(info.state.last_seq) - fences


async def name_revisions(nc: Client) -> dict[str, int]:
    """The revision of every name in the services bucket (a rewrite changes it)."""
    entries = await read_entries(nc.jetstream(), subjects.KV_SERVICES)
    return {key: entry.revision or 0 for key, entry in entries.items()}


def start_reconciler(services: Services, **env: str) -> None:
    services.start("reconciler", "reconciler", env={**DEFAULT_FIRST_SYNC, **env})


async def readiness(services: Services, name: str) -> tuple[int, str]:
    response = await ops_get(services, name, "/readyz")
    return response.status_code, response.text


async def test_a_cold_start_of_three_clusters_writes_each_name_once(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    create_apps(kube, CLUSTERS)
    await publish_seed_policies(nats_client)
    start_reconciler(services)
    # s2 lists last, well after the others' objects are in the stream: planning as events
    # arrive would write every name with two members, then again with three.
    for cluster in ("s1az1", "s1az2"):
        start_watcher(services, kube, cluster)
    await eventually(lambda: _listed(nats_client, 2 * NAMES), timeout_seconds=20)
    start_watcher(services, kube, "s2")

    await eventually(lambda: every_name_has(nats_client, set(VIPS.values())), timeout_seconds=30)
    await eventually(WritesSettled(services), interval_seconds=0.5)

    assert await kv_writes(nats_client) == NAMES
    assert (
        await metric(
            services, "reconciler", "kgslb_reconciler_kv_writes_total", bucket=subjects.KV_SERVICES
        )
        == NAMES
    )
    assert await metric(services, "reconciler", "kgslb_reconciler_first_sync_missing_clusters") == 0


async def test_an_unreachable_cluster_holds_the_names_back_for_the_timeout_only(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    # s2 is a member cluster whose watcher never publishes (its API is unreachable).
    create_apps(kube, CLUSTERS)
    await publish_seed_policies(nats_client)
    # The timeout runs from the first cluster's sync: long enough that the second watcher,
    # started at the same time, syncs within it on a busy machine.
    start_reconciler(services, KGSLB_FIRST_SYNC_TIMEOUT_SECONDS="10")
    for cluster in ("s1az1", "s1az2"):
        start_watcher(services, kube, cluster)
    await eventually(lambda: _listed(nats_client, 2 * NAMES), timeout_seconds=20)

    status, detail = await readiness(services, "reconciler")
    await eventually(
        lambda: every_name_has(nats_client, {VIPS["s1az1"], VIPS["s1az2"]}), timeout_seconds=20
    )
    await eventually(WritesSettled(services), interval_seconds=0.5)

    assert status == 503 and "waiting for the first sync of s2" in detail
    assert await kv_writes(nats_client) == NAMES
    assert await metric(services, "reconciler", "kgslb_reconciler_first_sync_missing_clusters") == 1
    log = services.running["reconciler"].log_path.read_text()
    assert "planning without the first list of cluster(s) s2" in log


async def test_a_restarted_reconciler_counts_the_markers_in_the_stream_and_writes_nothing(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    create_apps(kube, CLUSTERS)
    await publish_seed_policies(nats_client)
    start_reconciler(services)
    for cluster in CLUSTERS:
        start_watcher(services, kube, cluster)
    await eventually(lambda: every_name_has(nats_client, set(VIPS.values())), timeout_seconds=30)
    await eventually(WritesSettled(services), interval_seconds=0.5)
    written = await name_revisions(nats_client)

    services.running["reconciler"].kill9()
    # A timeout far beyond the wait below: only the replayed markers can open the gate.
    start_reconciler(
        services,
        KGSLB_FIRST_SYNC_TIMEOUT_SECONDS="300",
        KGSLB_FIRST_SYNC_MAX_WAIT_SECONDS="600",
    )

    await eventually(lambda: _leading(services), timeout_seconds=20)
    # The new leader fences the bucket (markers of its own) but rewrites no name.
    assert await name_revisions(nats_client) == written
    assert await metric(services, "reconciler", "kgslb_reconciler_first_sync_missing_clusters") == 0


async def _listed(nc: Client, count: int) -> bool:
    info: Any = await nc.jetstream().stream_info(subjects.STREAM_EVENTS)
    return int(info.state.messages) >= count


async def _leading(services: Services) -> bool:
    status, detail = await readiness(services, "reconciler")
    return status == 200 and "leader" in detail
