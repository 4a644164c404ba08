"""The home watcher's writes of CR status (status subresource, merge patch) and of the
Kubernetes Events a status change tells (`serving.status_events`: accepted and rejected edits,
failovers, recoveries), in the policy's namespace, so `kubectl get events -n avi-system` tells
an outage's story. An Event that cannot be written is logged and counted, and never holds up
a status write."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from services.watcher import kube
from services.watcher.backoff import Backoff
from services.watcher.home import Home
from services.watcher.serving import EventSpec, status_events
from shared.models import PolicyRef, utcnow
from shared.policies import API_GROUP, API_VERSION

log = logging.getLogger(__name__)
COMPONENT = "kgslb-watcher"

STATUS_WRITES = Counter(
    "kgslb_watcher_status_writes_total",
    "CR status writes through the status subresource, by result (ok, gone, error)",
    ["result"],
)
EVENTS = Counter(
    "kgslb_watcher_kube_events_written_total",
    "Kubernetes Events written on the kgslb CRs, by reason and result (ok, error)",
    ["reason", "result"],
)


def event_body(
    ref: PolicyRef, event: EventSpec, cluster: str, replica: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event on the policy object, named as kubectl's recorder names them."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{ref.name}.{secrets.token_hex(8)}",
            "namespace": ref.namespace,
        },
        "involvedObject": {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": ref.kind.value,
            "namespace": ref.namespace,
            "name": ref.name,
        },
        "reason": event.reason,
        "message": event.message,
        "type": event.type,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": COMPONENT, "host": cluster},
        "reportingComponent": f"{API_GROUP}/watcher",
        "reportingInstance": replica,
    }


def create_event(api: client.ApiClient, body: dict[str, Any]) -> None:
    kube.post_json(
        api,
        f"/api/v1/namespaces/{body['metadata']['namespace']}/events",
        body,
        (kube.CONNECT_TIMEOUT_SECONDS, kube.REQUEST_TIMEOUT_SECONDS),
    )


class StatusWriter:
    def __init__(
        self,
        api: client.ApiClient,
        cluster: str,
        replica: str,
        home: Home,
        dirty: asyncio.Event,
        backoff: Callable[[], Backoff],
    ) -> None:
        self.api = api
        self.cluster = cluster
        self.replica = replica
        self.home = home
        self.dirty = dirty
        self.backoff = backoff

    async def run(self) -> None:
        backoff = self.backoff()
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            for ref, patch in self.home.status_patches():
                before = self.home.policies.status_of(ref)
                try:
                    status = await asyncio.to_thread(kube.patch_status, self.api, ref, patch)
                except ApiException as exc:
                    if exc.status == 404:
                        STATUS_WRITES.labels("gone").inc()
                        continue  # deleted meanwhile; its DELETED event is on its way
                    failure: BaseException = exc
                except Exception as exc:
                    failure = exc
                else:
                    STATUS_WRITES.labels("ok").inc()
                    self.home.record_status(ref, status)
                    backoff.reset()
                    written = patch["status"]
                    log.info(
                        "wrote status of %s: %s", ref, written.get("state") or "cluster states",
                        extra={"policy": str(ref)},
                    )  # fmt: skip
                    await self._tell(ref, status_events(before, written))
                    continue
                STATUS_WRITES.labels("error").inc()
                delay = backoff.next_delay()
                log.warning(
                    "status of %s not written: %s; retrying in %.1f s",
                    ref, kube.describe_error(failure, self.cluster, ref.kind), delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                self.dirty.set()
                break

    async def _tell(self, ref: PolicyRef, events: list[EventSpec]) -> None:
        for event in events:
            body = event_body(ref, event, self.cluster, self.replica, utcnow())
            log.log(
                logging.WARNING if event.type == "Warning" else logging.INFO,
                "%s %s: %s", ref, event.reason, event.message,
                extra={"policy": str(ref), "reason": event.reason},
            )  # fmt: skip
            try:
                await asyncio.to_thread(create_event, self.api, body)
            except Exception as exc:
                EVENTS.labels(event.reason, "error").inc()
                log.warning(
                    "event %s on %s not written: %s",
                    event.reason, ref, kube.describe_error(exc, self.cluster, "events"),
                )  # fmt: skip
            else:
                EVENTS.labels(event.reason, "ok").inc()
