"""The Kubernetes side of the watcher: list-then-watch loops on worker threads (the official
`kubernetes` client is synchronous), and the CR status writes of the home watcher.

Each resource gets one daemon thread that lists (paged), then watches from the list's
resourceVersion with bookmarks, and hands decoded JSON to the event loop through `Sink`.
The client's reads block, so a frozen API server is noticed by socket read timeouts (a watch
silent for `dead_watch_seconds` is dead) and by `ListWatch.pending_since`, which the event
loop reads to see a request that has gone unanswered.
Raw responses (`_preload_content=False`) skip the client's model classes, which would cost
more than everything else the watcher does per event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from services.watcher.backoff import Backoff
from services.watcher.sources import SOURCES
from services.watcher.sources.base import Source
from services.watcher.translate import POLICY_PLURALS
from shared.collector import LongLivedState
from shared.models import PolicyKind, PolicyRef
from shared.policies import API_GROUP, API_VERSION

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
CONNECT_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 30.0
QUICK_CLOSE_SECONDS = 1.0

ListCall = Callable[..., Any]


class KubeConfigError(ValueError):
    """The kubeconfig or in-cluster config cannot be used; the text says which and why."""


# Messages from the threads to the event loop -----------------------------------------------


@dataclass(frozen=True)
class Listed:
    resource: str
    items: list[dict[str, Any]]
    resource_version: str
    served: bool = True
    """False: an optional resource the API does not serve (its CRD is not installed), listed
    as empty; it is tried again every `absent_recheck_seconds`."""


@dataclass(frozen=True)
class Changed:
    resource: str
    type: str
    obj: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The list or watch of `resource` ended badly; a relist follows after `retry_in_seconds`.

    `reason`: `expired` (410 Gone: the resourceVersion was compacted), `dropped` (the stream
    broke mid-way), `dead` (the stream stayed silent, not even a bookmark, for the dead-watch
    time), or `error` (the API refused or could not be reached)."""

    resource: str
    reason: str
    error: str
    retry_in_seconds: float


Item = Listed | Changed | Failed


class Sink:
    """Thread-safe hand-over to an asyncio queue, with back-pressure: a thread may run at
    most `max_pending` items ahead of the consumer, which calls `done` for each it finished."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._credits = threading.Semaphore(max_pending)

    def put(self, item: Item, stop: threading.Event) -> bool:
        """Block until there is room; False once `stop` is set or the loop is gone."""
        while not self._credits.acquire(timeout=0.5):
            if stop.is_set():
                return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            return False
        return True

    def done(self, count: int = 1) -> None:
        self._credits.release(count)


# Configuration ------------------------------------------------------------------------------


def _check_file(kubeconfig: str) -> None:
    if not Path(kubeconfig).is_file():
        raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")


def load_api_client(kubeconfig: str, context: str) -> client.ApiClient:
    """An API client from a kubeconfig file and context, or in-cluster config without one."""
    if kubeconfig:
        _check_file(kubeconfig)
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context or None,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (ConfigException, OSError, ValueError) as exc:
        source = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config"
        where = f", context {context!r}" if context else ""
        raise KubeConfigError(f"{source}{where}: {exc}") from None
    # One pooled connection per watch thread plus status writes.
    configuration.connection_pool_maxsize = 16
    return client.ApiClient(configuration)


def current_context(kubeconfig: str) -> str:
    _check_file(kubeconfig)
    try:
        _, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeConfigError(f"kubeconfig {kubeconfig}: {exc}") from None
    return str(current["name"])


_QUERY_NAMES = {
    "limit": "limit",
    "_continue": "continue",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "resource_version_match": "resourceVersionMatch",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "send_initial_events": "sendInitialEvents",
    "timeout_seconds": "timeoutSeconds",
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
}


def _request(
    api: client.ApiClient,
    method: str,
    path: str,
    timeout: Any,
    *,
    query: list[tuple[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """One request through `api` as the typed calls make it (JSON, the bearer token), its
    response unread; a non-2xx status raises `ApiException` as theirs do."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()  # type: ignore[no-untyped-call]
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response


@dataclass(frozen=True)
class RawList:
    """GET of one collection (list or watch) through the official client's `ApiClient` (its
    configuration, TLS, token and REST layer), answered raw, as the typed calls answer with
    `_preload_content=False`. The typed API classes are not used for listing: importing
    `CoreV1Api` builds a pydantic model class for every core kind it names (0.5 CPU-s of every
    watcher's start, measured), and the watcher reads the raw JSON anyway."""

    api: client.ApiClient
    path: str
    """`/api/v1/services`, `/apis/networking.k8s.io/v1/ingresses`."""

    def __call__(
        self, _preload_content: bool = False, _request_timeout: Any = None, **params: Any
    ) -> urllib3.HTTPResponse:
        unknown = params.keys() - _QUERY_NAMES.keys()
        if unknown or _preload_content:
            raise TypeError(f"RawList({self.path}): unsupported arguments {sorted(unknown)}")
        query = [(_QUERY_NAMES[k], v) for k, v in params.items() if v is not None]
        response = _request(self.api, "GET", self.path, _request_timeout, query=query)
        return cast(urllib3.HTTPResponse, response.response)


def post_json(
    api: client.ApiClient, path: str, body: dict[str, Any], timeout: Any
) -> dict[str, Any]:
    """POST a JSON object through the official client's `ApiClient` (as `RawList` reads), for
    the one core write the watcher makes (Events), without importing `CoreV1Api`."""
    response = _request(api, "POST", path, timeout, body=body)
    response.read()
    return cast(dict[str, Any], json.loads(response.data or b"{}"))


def collection_path(group: str, version: str, plural: str) -> str:
    """Where a resource's collection of every namespace is served (the core group: /api)."""
    return f"/api/{version}/{plural}" if not group else f"/apis/{group}/{version}/{plural}"


def source_call(api: client.ApiClient, source: Source) -> ListCall:
    """The list/watch call of a source's resource."""
    return RawList(api, collection_path(source.api.group, source.api.version, source.api.plural))


def list_calls(
    api: client.ApiClient, home: bool, sources: tuple[Source, ...] = SOURCES
) -> dict[str, ListCall]:
    """The list/watch call of every watched resource, by source or policy kind name."""
    calls: dict[str, ListCall] = {source.name: source_call(api, source) for source in sources}
    if home:
        for kind, plural in POLICY_PLURALS.items():
            calls[kind] = RawList(api, collection_path(API_GROUP, API_VERSION, plural))
    return calls


def patch_status(api: client.ApiClient, ref: PolicyRef, patch: dict[str, Any]) -> dict[str, Any]:
    """Merge-patch a CR's status subresource; returns the status the server now holds."""
    updated = client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        API_GROUP,
        API_VERSION,
        ref.namespace,
        POLICY_PLURALS[ref.kind],
        ref.name,
        patch,
        _content_type=MERGE_PATCH,
        _request_timeout=(CONNECT_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS),
    )
    return dict(cast(dict[str, Any], updated).get("status") or {})


def describe_error(exc: BaseException, cluster: str, resource: str) -> str:
    """One line an operator can act on: which cluster, what failed, and what to check."""
    if isinstance(exc, ApiException):
        reason = f"{exc.status} {exc.reason}".strip()
        message = ""
        if exc.body:
            try:
                message = json.loads(exc.body).get("message", "")
            except (ValueError, AttributeError):
                message = str(exc.body)[:200]
        hint = {
            401: "the credentials of the kubeconfig user or service account were refused",
            403: (
                "the identity lacks that right; check its RBAC (deploy/base/rbac.yaml,"
                " deploy/policy-namespace/rbac.yaml)"
            ),
            404: (
                "the kgslb CRDs are not installed (kubectl apply -f deploy/crds/)"
                if resource in set(PolicyKind)
                else "the API does not serve this resource"
            ),
        }.get(exc.status or 0, "")
        detail = "; ".join(part for part in (message, hint) if part)
        return f"cluster {cluster}: {resource}: {reason}" + (f" ({detail})" if detail else "")
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return f"cluster {cluster}: {resource}: {type(exc).__name__}: {exc}"


def unanswered(pending_since: Mapping[str, float | None], now: float, grace: float) -> set[str]:
    """The resources whose request has waited longer than `grace` for a response."""
    return {
        resource
        for resource, since in pending_since.items()
        if since is not None and now - since > grace
    }


# List, then watch ---------------------------------------------------------------------------


class Expired(Exception):
    """410 Gone: the resourceVersion to watch from was compacted away."""


class WatchBroken(Exception):
    """The server ended a watch with an ERROR event other than 410."""


class DeadWatch(Exception):
    """A watch stream received nothing, not even a bookmark, for the dead-watch time."""


def _lines(response: urllib3.HTTPResponse) -> Iterator[bytes]:
    """Newline-delimited watch events as they arrive on a chunked response."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buffer.strip():
        yield buffer


def _silence_is_death(lines: Iterator[bytes], dead_watch_seconds: float) -> Iterator[bytes]:
    try:
        yield from lines
    except urllib3.exceptions.ReadTimeoutError:
        raise DeadWatch(
            f"watch received nothing, not even a bookmark, for {dead_watch_seconds:g} s; "
            "abandoned (is the API server frozen, or the link dead?)"
        ) from None


class ListWatch:
    """List, then watch from the list's resourceVersion, on a daemon thread.

    A watch the server closes cleanly (its timeout) resumes from the last resourceVersion
    seen (events and bookmarks); 410 Gone, a broken stream, a dead one (silent for
    `dead_watch_seconds`: the server sends a bookmark every minute) or any API error reports
    `Failed`, backs off and relists, so nothing between the old and the new list is lost.
    """

    def __init__(
        self,
        cluster: str,
        resource: str,
        list_call: ListCall,
        sink: Sink,
        backoff: Backoff,
        *,
        page_size: int,
        watch_timeout_seconds: int,
        dead_watch_seconds: float,
        optional: bool = False,
        absent_recheck_seconds: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.optional = optional
        """A 404 means the API does not serve the resource (a CRD not installed): listed as
        empty, and asked again every `absent_recheck_seconds`."""
        self.absent_recheck_seconds = absent_recheck_seconds
        self._absent = False
        self.resource = resource
        self.list_call = list_call
        self.sink = sink
        self.backoff = backoff
        self.page_size = page_size
        self.watch_timeout_seconds = watch_timeout_seconds
        self.dead_watch_seconds = dead_watch_seconds
        self.pending_since: float | None = None
        """Monotonic time a request was sent whose response has not begun yet; None between
        requests. Written by the worker thread, read by the event loop."""
        self.stopping = threading.Event()
        self._relist = threading.Event()
        self._response: urllib3.HTTPResponse | None = None
        self._built = LongLivedState()
        self._thread = threading.Thread(target=self._run, name=f"watch-{resource}", daemon=True)

    def relist(self) -> None:
        """List again now (the bus lost what the last list published): the watch in
        progress is closed, and the next list is published whole, with no backoff."""
        self._relist.set()
        response = self._response
        if response is not None:
            response.shutdown()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        response = self._response
        if response is not None:
            # Unblocks a read in progress on the worker thread.
            response.shutdown()

    def _emit(self, item: Item) -> bool:
        return self.sink.put(item, self.stopping)

    def _run(self) -> None:
        while not self.stopping.is_set():
            watching = False
            try:
                version = self._list()
                self.backoff.reset()
                watching = True
                while not self.stopping.is_set() and not self._relist.is_set():
                    version = self._watch(version)
                if self._relist.is_set():
                    continue
            except ApiException as exc:
                if not (self.optional and exc.status == 404):
                    failure = ("error", describe_error(exc, self.cluster, self.resource))
                else:
                    if not self._absent:
                        self._absent = True
                        log.info(
                            "cluster %s does not serve %s (its CRD is not installed): none of "
                            "them; asking again every %g s", self.cluster, self.resource,
                            self.absent_recheck_seconds,
                        )  # fmt: skip
                        if not self._emit(Listed(self.resource, [], "", served=False)):
                            return
                    self.backoff.reset()
                    self.stopping.wait(self.absent_recheck_seconds)
                    continue
            except Expired as exc:
                failure = ("expired", f"cluster {self.cluster}: {self.resource}: {exc}")
            except DeadWatch as exc:
                failure = ("dead", f"cluster {self.cluster}: {self.resource}: {exc}")
            except (
                urllib3.exceptions.ProtocolError,
                urllib3.exceptions.ReadTimeoutError,
            ) as exc:
                # A watch stream that breaks is routine; a list that does is the API failing.
                reason = "dropped" if watching else "error"
                failure = (reason, describe_error(exc, self.cluster, self.resource))
            except Exception as exc:  # any API or transport error: report, back off, relist
                failure = ("error", describe_error(exc, self.cluster, self.resource))
            else:
                return
            if self.stopping.is_set():
                return
            if self._relist.is_set() and watching:
                continue  # the watch closed to list again: not a failure
            delay = self.backoff.next_delay()
            if not self._emit(Failed(self.resource, *failure, retry_in_seconds=delay)):
                return
            self.stopping.wait(delay)

    def _call(self, **kwargs: Any) -> urllib3.HTTPResponse:
        self.pending_since = time.monotonic()
        try:
            return cast(urllib3.HTTPResponse, self.list_call(_preload_content=False, **kwargs))
        except ApiException as exc:
            # An expired continue token, or a server that answers an old watch with 410
            # itself instead of an ERROR event.
            if exc.status == 410:
                raise Expired(f"410 {exc.reason}") from None
            raise
        finally:
            self.pending_since = None

    def _list(self) -> str:
        self._relist.clear()
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            response = self._call(
                limit=self.page_size,
                _continue=token,
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS),
            )
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            page_items = page.get("items") or []
            items.extend(page_items)
            # A list's objects live on: collections during a 100,000-object list would rescan
            # all the pages read so far (shared.collector).
            self._built.changed(len(page_items))
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if token is None:
                version = str(meta.get("resourceVersion") or "")
                break
        self._absent = False
        if not self._emit(Listed(self.resource, items, version)):
            self.stopping.set()
        return version

    def _watch(self, version: str) -> str:
        # Jitter spreads the reconnects of many watchers, as client-go does.
        timeout = random.randint(self.watch_timeout_seconds, 2 * self.watch_timeout_seconds)
        started = time.monotonic()
        response = self._call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            # The read timeout applies to each read: a frozen server, or a link that died
            # without a reset, ends the watch instead of blocking the thread for good.
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, self.dead_watch_seconds),
        )
        self._response = response
        events = 0
        try:
            for line in _silence_is_death(_lines(response), self.dead_watch_seconds):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message") or "410 Gone")
                    raise WatchBroken(
                        f"watch ended with {obj.get('code')} {obj.get('reason')}: "
                        f"{obj.get('message')}"
                    )
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                events += 1
                if kind != "BOOKMARK" and not self._emit(Changed(self.resource, kind, obj)):
                    break
        finally:
            self._response = None
            # Closed, not returned to the pool: an unfinished chunked stream cannot be reused.
            response.close()
        quick = time.monotonic() - started < QUICK_CLOSE_SECONDS
        if events == 0 and quick and not self._relist.is_set():
            # A server that closes every watch at once would otherwise be re-asked in a loop.
            self.stopping.wait(self.backoff.next_delay())
        return version
