"""A steady UDP query load on a thread, counting every query that got no reply."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

import dns.message


class UdpLoad:
    """Send one query every 1/qps seconds from one socket and match replies by ID.

    A query is lost when no reply with its ID arrives before `stop` has waited `grace_seconds`.
    IDs wrap at 65,536, so one run stays under 65 s at 1,000 qps.
    """

    def __init__(self, port: int, name: str, qps: int = 1000, grace_seconds: float = 1.0) -> None:
        self.port = port
        self.query = dns.message.make_query(name, "A").to_wire()[2:]
        self.interval = 1.0 / qps
        self.grace_seconds = grace_seconds
        self.sent = 0
        self.replied: set[int] = set()
        self.addresses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # The default buffer holds a few hundred replies: a busy test process that reads them
        # late would count its own overflow as queries the DNS lost.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.settimeout(0.2)
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        self._receiving = True

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.sent >= 65536:
                break
            self._sock.sendto(struct.pack("!H", self.sent) + self.query, ("127.0.0.1", self.port))
            self.sent += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _receive(self) -> None:
        while self._receiving:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.replied.add(struct.unpack("!H", data[:2])[0])
            reply = dns.message.from_wire(data)
            self.addresses.update(rr.address for rrset in reply.answer for rr in rrset)

    def stop(self) -> int:
        """Stop sending, wait for late replies, and return the number of queries lost."""
        self._stop.set()
        self._threads[0].join()
        time.sleep(self.grace_seconds)
        self._receiving = False
        self._threads[1].join()
        self._sock.close()
        return self.lost

    @property
    def lost(self) -> int:
        return self.sent - len(self.replied)
