"""The control endpoint of a running `kgslb up`, and its client (`kgslb site fail|restore`).

HTTP on loopback, its URL in the state file (`.kgslb/stack.json`, key `control`):
`POST /sites/<cluster>/<action>` with `action` one of `ACTIONS`, `GET /sites`. The HTTP thread
only queues a request; `up`'s main loop carries it out between two supervisor ticks
(`serve_pending`), so a site being stopped never races the restart of one of its children.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTIONS = ("fail", "cut", "restore")
"""`fail`: stop everything of the site at once; `cut`: stop only its nats-server and its
Kubernetes API (its DNS, health, reconciler and watcher keep running, cut off); `restore`:
start whatever of the site is stopped."""

REPLY_TIMEOUT_SECONDS = 60.0
"""How long the endpoint waits for `up`'s main loop (a restore waits for a nats-server)."""


class ControlError(Exception):
    """A request `up` refuses: an unknown site, a stack without sites. Carries the HTTP
    status the endpoint answers with."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    path: tuple[str, ...]
    """(`sites`,) or (`sites`, cluster, action)."""
    reply: queue.Queue[tuple[HTTPStatus, dict[str, Any]]] = field(
        default_factory=lambda: queue.Queue(maxsize=1)
    )


Handler = Callable[[tuple[str, ...]], dict[str, Any]]
"""Serves one request path on the main loop; raises ControlError to refuse it."""


class ControlServer:
    """The endpoint's listener on its own thread; requests wait for `serve_pending`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._pending: queue.Queue[_Request] = queue.Queue()
        pending = self._pending

        class RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/sites":
                    self._answer(HTTPStatus.NOT_FOUND, {"error": "GET /sites only"})
                    return
                self._queue(("sites",))

            def do_POST(self) -> None:
                parts = tuple(part for part in self.path.split("/") if part)
                if len(parts) != 3 or parts[0] != "sites":
                    self._answer(
                        HTTPStatus.NOT_FOUND, {"error": "POST /sites/<cluster>/<action> only"}
                    )
                    return
                self._queue(parts)

            def _queue(self, path: tuple[str, ...]) -> None:
                request = _Request(path)
                pending.put(request)
                try:
                    status, body = request.reply.get(timeout=REPLY_TIMEOUT_SECONDS)
                except queue.Empty:
                    status, body = (
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        {"error": f"kgslb up did not answer in {REPLY_TIMEOUT_SECONDS:g} s "
                         "(is it stopping?)"},
                    )  # fmt: skip
                self._answer(status, body)

            def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """`up`'s output is for what happens to the stack, not for access logs."""

        self._server = ThreadingHTTPServer((host, port), RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kgslb-up-control", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        self._thread.start()
        return self.url

    def serve_pending(self, handle: Handler) -> None:
        """Carry out every queued request with `handle` (call from the main loop)."""
        while True:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                return
            try:
                reply = (HTTPStatus.OK, handle(request.path))
            except ControlError as exc:
                reply = (exc.status, {"error": str(exc)})
            request.reply.put(reply)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def site_action(control_url: str, cluster: str, action: str) -> list[str]:
    """Ask the `kgslb up` at `control_url` to `action` one site; returns what it did, one
    line per part. Raises RuntimeError with `up`'s reason when it refuses."""
    import httpx

    reply = httpx.post(
        f"{control_url.rstrip('/')}/sites/{cluster}/{action}",
        timeout=REPLY_TIMEOUT_SECONDS + 5,
    )
    body: dict[str, Any] = reply.json()
    if reply.status_code != HTTPStatus.OK:
        raise RuntimeError(body.get("error", f"HTTP {reply.status_code}"))
    done: list[str] = body["done"]
    return done
