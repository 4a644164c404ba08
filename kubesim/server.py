"""HTTP face of one simulated cluster: the Kubernetes REST API, discovery, watches and faults."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from aiohttp import web

from kubesim import guard, openapi
from kubesim.protobuf import ProtobufError, decode_namespace
from kubesim.resources import SERVICEACCOUNTS, Obj, ResourceType
from kubesim.selectors import FieldSelector, LabelSelector, SelectorError
from kubesim.store import (
    PATCH_TYPES,
    ApiError,
    ClusterStore,
    WatchEvent,
    bad_request,
)
from kubesim.tables import TABLE_MEDIA_TYPE, render_table

log = logging.getLogger(__name__)
T = TypeVar("T")

VERSION_INFO = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0+kubesim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
USER_KEY = web.RequestKey("kubesim.user", guard.User)
_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _method_not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _json(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=_dumps(data), status=status, headers={"Content-Type": content_type})


@dataclass
class _Drop:
    """Queued into a watch to end it; `abrupt` cuts the TCP connection mid-stream."""

    abrupt: bool


_WatchQueue = asyncio.Queue[WatchEvent | _Drop]
FROZEN_POLL_SECONDS = 0.05


class Faults:
    """Fault switches of one cluster, settable from Python (any thread) or over HTTP.

    `refuse` answers every API request with 503, `unauthorized` with 401, and
    `latency_seconds` delays every response; `frozen` is a SIGSTOPped API server: connections
    are accepted and requests read, but nothing is answered, and open watches send nothing
    (not even bookmarks), until it is cleared. The two actions take effect immediately.
    Over HTTP, `POST /kubesim/faults` takes a JSON object with any of `refuse`,
    `unauthorized`, `latency_seconds`, `frozen`, `drop_watches` (true, or "abrupt") and
    `expire_history` (true); `GET /kubesim/faults` reports the switches. Both bypass the faults.
    """

    def __init__(self, server: ClusterServer) -> None:
        self._server = server
        self.refuse = False
        self.unauthorized = False
        self.latency_seconds = 0.0
        self.frozen = False

    async def thawed(self) -> None:
        """Return once the server is not frozen (polled: the switch is set from any thread)."""
        while self.frozen:
            await asyncio.sleep(FROZEN_POLL_SECONDS)

    def drop_watches(self, *, abrupt: bool = False) -> int:
        """End every open watch stream now (no ERROR event); returns how many were open.

        A clean drop ends the chunked response like a server-side timeout; `abrupt`
        resets the connection, as a crashed apiserver or a proxy would.
        """
        return self._server.on_loop(lambda: self._server.drop_watches(abrupt=abrupt))

    def expire_history(self) -> None:
        """Compact the event history: watches from any older resourceVersion get 410 Expired."""
        self._server.on_loop(self._server.store.expire_history)

    def state(self) -> Obj:
        return {
            "refuse": self.refuse,
            "unauthorized": self.unauthorized,
            "latency_seconds": self.latency_seconds,
            "frozen": self.frozen,
        }


@dataclass(frozen=True)
class _Target:
    """What a resource URL addresses."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


class ClusterServer:
    """Serves one ClusterStore on one port."""

    def __init__(
        self,
        name: str,
        store: ClusterStore,
        *,
        bookmark_interval: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        tokens: guard.Tokens | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.ssl_context = ssl_context
        self.tokens = tokens
        """Bearer tokens and RBAC are checked with these; None lets every request through."""
        self.faults = Faults(self)
        self.bookmark_interval = bookmark_interval
        self.port: int | None = None
        self._host = "127.0.0.1"
        self._watches: set[_WatchQueue] = set()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app = web.Application(middlewares=[self._errors, self._apply_faults, self._guard])
        self.app.router.add_get("/kubesim/faults", self._get_faults)
        self.app.router.add_post("/kubesim/faults", self._post_faults)
        self.app.router.add_route("*", "/{path:.*}", self._dispatch)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"cluster {self.name} is not started")
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        # handler_cancellation: a client hanging up on a watch must end its handler.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self.ssl_context)
        await site.start()
        self._runner = runner
        self._host = host
        self.port = runner.addresses[0][1]

    @property
    def serving(self) -> bool:
        return self._runner is not None

    async def stop(self, *, abrupt: bool = False) -> None:
        """Close the listener and every connection. The store stays, as a real cluster's etcd
        outlives its apiserver: `start` again serves the same objects, on the same port when
        given it. `abrupt` resets open watches instead of ending them."""
        self.drop_watches(abrupt=abrupt)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's event loop, waiting for it when called from another thread."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return fn()
        try:
            if asyncio.get_running_loop() is loop:
                return fn()
        except RuntimeError:
            pass

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def drop_watches(self, *, abrupt: bool = False) -> int:
        for watch in self._watches:
            watch.put_nowait(_Drop(abrupt))
        count = len(self._watches)
        self._watches.clear()
        return count

    # ----- middleware and control endpoints ----------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as error:
            return _json(error.status(), error.code)
        except web.HTTPException:
            raise
        except Exception as error:
            log.exception("kubesim %s: %s %s failed", self.name, request.method, request.path)
            return _json(ApiError(500, "InternalError", f"kubesim: {error}").status(), 500)

    @web.middleware
    async def _apply_faults(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if not request.path.startswith("/kubesim/"):
            await self.faults.thawed()
            if self.faults.latency_seconds > 0:
                await asyncio.sleep(self.faults.latency_seconds)
            if self.faults.refuse:
                message = f"kubesim: cluster {self.name} is refusing requests"
                raise ApiError(503, "ServiceUnavailable", message)
            if self.faults.unauthorized:
                raise ApiError(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Authenticate the bearer token, then authorize the request by RBAC (kubesim.guard)."""
        path = request.path.rstrip("/") or "/"
        if self.tokens is not None and not path.startswith("/kubesim/"):
            header = request.headers.get("Authorization", "")
            user = self.tokens.authenticate(self.store, header)
            if user is None:
                if header or path not in guard.PUBLIC_PATHS:
                    raise guard.unauthorized()
            else:
                attrs = guard.request_attributes(request.method, path, request.query)
                if not guard.allowed(self.store, user, attrs):
                    raise guard.forbidden(user, attrs)
                request[USER_KEY] = user
        response: web.StreamResponse = await handler(request)
        return response

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json(self._fault_report())

    async def _post_faults(self, request: web.Request) -> web.Response:
        body = await _read_body(request)
        if not isinstance(body, dict):
            raise bad_request("expected a JSON object")
        known = {
            "refuse", "unauthorized", "latency_seconds", "frozen", "drop_watches", "expire_history"
        }  # fmt: skip
        if unknown := set(body) - known:
            raise bad_request(f"unknown fault switches: {sorted(unknown)}; known: {sorted(known)}")
        if "refuse" in body:
            self.faults.refuse = bool(body["refuse"])
        if "unauthorized" in body:
            self.faults.unauthorized = bool(body["unauthorized"])
        if "frozen" in body:
            self.faults.frozen = bool(body["frozen"])
        if "latency_seconds" in body:
            try:
                self.faults.latency_seconds = float(body["latency_seconds"])
            except (TypeError, ValueError):
                raise bad_request("latency_seconds must be a number") from None
        dropped = 0
        if body.get("drop_watches"):
            dropped = self.drop_watches(abrupt=body["drop_watches"] == "abrupt")
        if body.get("expire_history"):
            self.store.expire_history()
        return _json({**self._fault_report(), "dropped_watches": dropped})

    def _fault_report(self) -> Obj:
        return {
            **self.faults.state(),
            "cluster": self.name,
            "open_watches": len(self._watches),
            "resource_version": str(self.store.rv),
            "compacted_resource_version": str(self.store.compacted_rv),
        }

    # ----- routing -----------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(VERSION_INFO)
        if path == "/openapi/v3":
            return _json(openapi.root_doc(self.store.registry))
        if path.startswith("/openapi/v3/"):
            match path.removeprefix("/openapi/v3/").split("/"):
                case ["api", version]:
                    doc = openapi.group_version_doc(self.store.registry, "", version)
                case ["apis", group, version]:
                    doc = openapi.group_version_doc(self.store.registry, group, version)
                case _:
                    doc = None
            if doc is None:
                raise _not_found()
            return _json(doc)
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            if len(parts) == 1:
                return _json(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {
                                "clientCIDR": "0.0.0.0/0",
                                "serverAddress": f"{self._host}:{self.port}",
                            }
                        ],
                    }
                )
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return _json(self._group_list())
            if len(parts) == 2:
                return _json(self._group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _not_found()
        if not rest:
            return _json(self._resource_list(group, version))
        if (group, rest) == ("authorization.k8s.io", ["selfsubjectaccessreviews"]):
            if request.method != "POST":
                raise _method_not_allowed(request.method)
            review = await _read_body(request)
            return _json(guard.review(self.store, request.get(USER_KEY, guard.ADMIN), review), 201)
        target = self._resolve(group, version, rest)
        return await self._serve(request, target)

    def _resolve(self, group: str, version: str, rest: list[str]) -> _Target:
        namespace = None
        # /api/v1/namespaces/{ns}/status is the Namespace's own subresource, not a collection.
        is_ns_subresource = not group and len(rest) == 3 and rest[2] in ("status", "finalize")
        if rest[0] == "namespaces" and len(rest) >= 3 and not is_ns_subresource:
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise _not_found()
        rtype = self.store.registry.lookup(group, version, rest[0])
        if rtype is None or (namespace is not None and not rtype.namespaced):
            raise _not_found()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if rtype.namespaced and name is not None and namespace is None:
            raise _not_found()
        token = subresource == "token" and rtype is SERVICEACCOUNTS and self.tokens is not None
        if (
            subresource is not None
            and not token
            and (subresource != "status" or not rtype.has_status)
        ):
            raise _not_found()
        return _Target(rtype, namespace, name, subresource)

    async def _serve(self, request: web.Request, target: _Target) -> web.StreamResponse:
        rtype, namespace, name = target.rtype, target.namespace, target.name
        query = request.query
        dry_run = query.get("dryRun") == "All"
        validation = query.get("fieldValidation", "")
        method = request.method
        if target.subresource == "token" and name is not None and namespace is not None:
            if method != "POST" or self.tokens is None:
                raise _method_not_allowed(method)
            body = await _read_body(request)
            return _json(self.tokens.mint(self.store, namespace, name, body), 201)
        if name is None:
            if method == "GET":
                labels, fields = _selectors(query)
                if query.get("watch") in ("true", "1"):
                    return await self._watch(request, target, labels, fields)
                return self._list(request, target, labels, fields)
            if method == "POST" and (namespace is not None or not rtype.namespaced):
                created = self.store.create(
                    rtype, namespace, await _read_body(request), dry_run=dry_run,
                    field_validation=validation,
                )  # fmt: skip
                return _json(_present(rtype, created), 201)
            if method == "DELETE" and (namespace is not None or not rtype.namespaced):
                labels, fields = _selectors(query)
                deleted = self.store.delete_collection(rtype, namespace, labels, fields)
                return _json(self._list_body(rtype, deleted, self.store.rv))
            raise _method_not_allowed(method)
        if method == "GET":
            obj = _present(rtype, self.store.get(rtype, namespace, name))
            if _wants_table(request) and target.subresource is None:
                include = query.get("includeObject", "Metadata")
                metadata = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                table = render_table(rtype, [obj], include, metadata)
                return _json(table, content_type=TABLE_MEDIA_TYPE)
            return _json(obj)
        if method == "PUT":
            updated = self.store.update(
                rtype,
                namespace,
                name,
                await _read_body(request),
                subresource=target.subresource,
                dry_run=dry_run,
                field_validation=validation,
            )
            return _json(_present(rtype, updated))
        if method == "PATCH":
            patch_type = request.content_type
            if patch_type not in PATCH_TYPES:
                message = (
                    f"the body of the request was in an unknown format - accepted media types"
                    f" include: {', '.join(PATCH_TYPES)}"
                )
                raise ApiError(415, "UnsupportedMediaType", message)
            patched = self.store.patch(
                rtype,
                namespace,
                name,
                patch_type,
                await _read_body(request),
                subresource=target.subresource,
                dry_run=dry_run,
                field_validation=validation,
            )
            return _json(_present(rtype, patched))
        if method == "DELETE" and target.subresource is None:
            options = await _read_body(request) if request.can_read_body else {}
            preconditions = (
                (options or {}).get("preconditions") if isinstance(options, dict) else None
            )
            dry_run = dry_run or "All" in ((options or {}).get("dryRun") or [])
            obj, gone = self.store.delete(
                rtype, namespace, name, preconditions=preconditions, dry_run=dry_run
            )
            status = 200 if gone else 202
            if rtype.return_deleted_object or not gone:
                return _json(_present(rtype, obj), status)
            details = {
                "name": name,
                "group": rtype.group,
                "kind": rtype.plural,
                "uid": obj["metadata"].get("uid", ""),
            }
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                },
                status,
            )
        raise _method_not_allowed(method)

    # ----- list and watch ----------------------------------------------------------------

    def _list(
        self, request: web.Request, target: _Target, labels: LabelSelector, fields: FieldSelector
    ) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit {query.get('limit')!r}") from None
        page = self.store.list(
            target.rtype,
            target.namespace,
            label_selector=labels,
            field_selector=fields,
            limit=limit,
            continue_token=query.get("continue"),
            resource_version=query.get("resourceVersion"),
            resource_version_match=query.get("resourceVersionMatch"),
            read_only=True,
        )
        metadata: Obj = {"resourceVersion": str(page.resource_version)}
        if page.continue_token:
            metadata["continue"] = page.continue_token
        if page.remaining is not None:
            metadata["remainingItemCount"] = page.remaining
        items = [_present(target.rtype, obj) for obj in page.items]
        if _wants_table(request):
            include = query.get("includeObject", "Metadata")
            return _json(
                render_table(target.rtype, items, include, metadata), content_type=TABLE_MEDIA_TYPE
            )
        body = self._list_body(target.rtype, items, page.resource_version)
        body["metadata"] = metadata
        return _json(body)

    @staticmethod
    def _list_body(rtype: ResourceType, items: Iterable[Obj], rv: int) -> Obj:
        # Built-in lists carry kind/apiVersion once, not per item; CR lists keep them per item.
        if not rtype.custom:
            items = [{k: v for k, v in i.items() if k not in ("kind", "apiVersion")} for i in items]
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": list(items),
        }

    async def _watch(
        self,
        request: web.Request,
        target: _Target,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> web.StreamResponse:
        query = request.query
        rtype, namespace = target.rtype, target.namespace
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise bad_request("invalid timeoutSeconds") from None
        bookmarks = query.get("allowWatchBookmarks") == "true"
        send_initial = query.get("sendInitialEvents") == "true"
        as_table = _wants_table(request)
        include = query.get("includeObject", "Metadata")

        def visible(obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                (namespace is None or meta.get("namespace") == namespace)
                and labels.matches(meta.get("labels"))
                and fields.matches(obj)
            )

        # Everything up to the subscription is synchronous, so no event can slip between
        # the replayed history / initial state and the live feed.
        rv_param = query.get("resourceVersion", "")
        backlog: list[tuple[str, Obj]] = []
        failure: ApiError | None = None
        if send_initial or rv_param in ("", "0"):
            backlog = [
                ("ADDED", copy.deepcopy(obj))
                for obj in self.store.iter_objects(rtype, namespace)
                if visible(obj)
            ]
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise bad_request(f'invalid resource version "{rv_param}"') from None
            try:
                history = self.store.events_since(rtype, since)
            except ApiError as error:
                failure = error
            else:
                backlog = [t for e in history if (t := _translate(e, visible))]
        watch: _WatchQueue = asyncio.Queue()
        unsubscribe: Callable[[], None] | None = None
        if failure is None:
            unsubscribe = self.store.subscribe(
                lambda e: watch.put_nowait(e) if e.resource == rtype.key else None
            )
            self._watches.add(watch)

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event_type: str, obj: Obj) -> None:
            await self.faults.thawed()
            if as_table and event_type != "BOOKMARK" and event_type != "ERROR":
                obj = render_table(
                    rtype, [obj], include, {"resourceVersion": obj["metadata"]["resourceVersion"]}
                )
            await response.write(_dumps({"type": event_type, "object": obj}) + b"\n")

        def bookmark(initial_events_end: bool = False) -> Obj:
            meta: Obj = {"resourceVersion": str(self.store.rv)}
            if initial_events_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            if failure is not None:
                await send("ERROR", failure.status())
                return response
            for event_type, obj in backlog:
                await send(event_type, _present(rtype, obj))
            if send_initial and bookmarks:
                await send("BOOKMARK", bookmark(initial_events_end=True))
            next_bookmark = loop.time() + self.bookmark_interval
            while True:
                waits = [next_bookmark] if bookmarks else []
                if deadline is not None:
                    waits.append(deadline)
                try:
                    async with asyncio.timeout_at(min(waits) if waits else None):
                        item = await watch.get()
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        # Like the watch cache, tell the client how far it got before closing.
                        if bookmarks and watch.empty():
                            await send("BOOKMARK", bookmark())
                        break
                    if bookmarks and watch.empty():
                        await send("BOOKMARK", bookmark())
                    next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if isinstance(item, _Drop):
                    if item.abrupt and request.transport is not None:
                        request.transport.abort()
                    break
                if translated := _translate(item, visible):
                    await send(translated[0], _present(rtype, translated[1]))
                next_bookmark = loop.time() + self.bookmark_interval
        except ConnectionResetError:
            pass  # the client went away; nothing left to tell it
        finally:
            if unsubscribe is not None:
                unsubscribe()
            self._watches.discard(watch)
        return response

    # ----- discovery ---------------------------------------------------------------------

    def _group_list(self) -> Obj:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [self._group(group) for group in self.store.registry.groups() if group],
        }

    def _group(self, group: str) -> Obj:
        versions = self.store.registry.groups().get(group)
        if not group or not versions:
            raise _not_found()
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _resource_list(self, group: str, version: str) -> Obj:
        types = [t for t in self.store.registry.all() if (t.group, t.version) == (group, version)]
        if not types:
            raise _not_found()
        resources: list[Obj] = []
        for t in types:
            entry: Obj = {
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": [v for v in _ALL_VERBS if v != "deletecollection" or t.namespaced],
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            resources.append(entry)
            if t is SERVICEACCOUNTS and self.tokens is not None:
                resources.append(
                    {
                        "name": "serviceaccounts/token",
                        "singularName": "",
                        "namespaced": True,
                        "group": "authentication.k8s.io",
                        "version": "v1",
                        "kind": "TokenRequest",
                        "verbs": ["create"],
                    }
                )
            if t.has_status:
                resources.append(
                    {
                        "name": f"{t.plural}/status",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


def _present(rtype: ResourceType, obj: Obj) -> Obj:
    """The object as the requested version serves it (all versions share one storage)."""
    obj["apiVersion"] = rtype.api_version
    return obj


def _translate(event: WatchEvent, visible: Callable[[Obj], bool]) -> tuple[str, Obj] | None:
    """What a selector-filtered watch sees: objects entering it are ADDED, leaving it DELETED."""
    now = event.type != "DELETED" and visible(event.obj)
    before = event.old is not None and visible(event.old)
    if event.type == "DELETED":
        return ("DELETED", copy.deepcopy(event.obj)) if visible(event.obj) else None
    if now:
        return ("MODIFIED" if before else "ADDED", copy.deepcopy(event.obj))
    return ("DELETED", copy.deepcopy(event.obj)) if before else None


def _selectors(query: Any) -> tuple[LabelSelector, FieldSelector]:
    try:
        return (
            LabelSelector.parse(query.get("labelSelector")),
            FieldSelector.parse(query.get("fieldSelector")),
        )
    except SelectorError as error:
        raise bad_request(str(error)) from None


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


async def _read_body(request: web.Request) -> Any:
    raw = await request.read()
    if "protobuf" in request.content_type:
        try:
            return decode_namespace(raw)
        except ProtobufError as error:
            message = (
                f"kubesim reads JSON and YAML bodies, and protobuf only for a Namespace ({error});"
                " use `kubectl apply -f` instead of typed `kubectl create` commands"
            )
            raise ApiError(415, "UnsupportedMediaType", message) from None
    if not raw.strip():
        return None
    try:
        if "yaml" in request.content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as error:
        raise bad_request(f"the request body could not be decoded: {error}") from None
