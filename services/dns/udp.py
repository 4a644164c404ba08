"""UDP I/O for the engine, driven by the event loop's readiness callback.

On Linux, datagrams are read and answered in batches with recvmmsg/sendmmsg (through ctypes,
into buffers allocated once): one system call each way per batch instead of per packet, no
Python objects for client addresses, and replies written in place over their queries. A cache
hit is served right in the batch loop; anything else goes through `DnsEngine.respond`.
Elsewhere, a plain recvfrom/sendto loop does the same work one packet at a time.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any, Literal

from services.dns.server import DnsEngine, address_text

log = logging.getLogger(__name__)

BATCH = 64
SLOT = 4096
"""Bytes per datagram slot: the largest query we read and the largest reply we write (the
UDP payload limit is capped at 4096 by the settings)."""
NAME = 28
"""Bytes per address slot: a sockaddr_in6, which also holds a sockaddr_in."""
MAX_BATCHES_PER_WAKEUP = 16
"""Yield to the event loop (NATS, TCP, metrics) at least every 1024 datagrams."""


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


_MSG_LEN_WORD = _MMsgHdr.len.offset // 4
_MMSG_WORDS = ctypes.sizeof(_MMsgHdr) // 4


def _libc_mmsg() -> tuple[Callable[..., int], Callable[..., int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


def _sockaddr_packed(name: memoryview) -> bytes:
    """The client address from a sockaddr, IPv4-mapped IPv6 folded to IPv4."""
    if int.from_bytes(name[0:2], sys.byteorder) == socket.AF_INET:
        return bytes(name[4:8])
    packed = bytes(name[8:24])
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return packed[12:]
    return packed


class BatchUdpServer:
    """recvmmsg/sendmmsg over one socket, slots reused for every batch."""

    def __init__(self, sock: socket.socket, engine: DnsEngine) -> None:
        calls = _libc_mmsg()
        if calls is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = calls
        self.sock = sock
        self.engine = engine
        self._fd = sock.fileno()
        self._latency = engine.latency["udp"]
        self._buffers = ctypes.create_string_buffer(BATCH * SLOT)
        self._names = ctypes.create_string_buffer(BATCH * NAME)
        self._recv_iov = (_IoVec * BATCH)()
        self._send_iov = (_IoVec * BATCH)()
        self._recv_msgs = (_MMsgHdr * BATCH)()
        self._send_msgs = (_MMsgHdr * BATCH)()
        namelen = NAME if sock.family == socket.AF_INET6 else 16
        buffers = ctypes.addressof(self._buffers)
        names = ctypes.addressof(self._names)
        for i in range(BATCH):
            for iov, msgs in ((self._recv_iov, self._recv_msgs), (self._send_iov, self._send_msgs)):
                iov[i].base = buffers + i * SLOT
                iov[i].len = SLOT
                msgs[i].hdr.name = names + i * NAME
                msgs[i].hdr.namelen = NAME if msgs is self._recv_msgs else namelen
                msgs[i].hdr.iov = ctypes.addressof(iov[i])
                msgs[i].hdr.iovlen = 1
        self._recv_template = bytes(self._recv_msgs)
        self._recv_view = memoryview(self._recv_msgs).cast("B")
        self._recv_words = self._recv_view.cast("I")
        size_t: Literal["Q", "I"] = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"
        self._send_lengths = memoryview(self._send_iov).cast("B").cast(size_t)
        self._recv_address = ctypes.addressof(self._recv_msgs)
        self._send_address = ctypes.addressof(self._send_msgs)
        self._data = memoryview(self._buffers).cast("B")
        self._name_view = memoryview(self._names).cast("B")

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self._fd, self.on_readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._fd)

    def on_readable(self) -> None:
        try:
            for _ in range(MAX_BATCHES_PER_WAKEUP):
                if self._batch() < BATCH:
                    return
        except Exception:
            # Invariant: bad input never takes the server down; the batch is lost, not the
            # listener.
            self.engine.malformed += 1
            log.exception("unexpected error answering a UDP batch")

    def _batch(self) -> int:
        self._recv_view[:] = self._recv_template
        received = self._recvmmsg(self._fd, self._recv_address, BATCH, socket.MSG_DONTWAIT, None)
        if received <= 0:
            return 0
        started = perf_counter()
        self.engine.tick()
        sending = self._answer(received)
        if sending:
            self._send(sending)
        self._latency.observe(perf_counter() - started, received)
        return received

    def _answer(self, received: int) -> int:
        """Write the reply to each received query over it, in place; return how many replies
        there are (silence leaves a gap, closed by moving later replies down a slot)."""
        engine = self.engine
        cache_get = engine.cache.get
        inline = engine.inline
        queries: Any = self._buffers  # slicing a c_char array gives bytes
        data = self._data
        words = self._recv_words
        lengths = self._send_lengths
        slot, mmsg_words, len_word = SLOT, _MMSG_WORDS, _MSG_LEN_WORD
        sending = 0
        for i in range(received):
            offset = i * slot
            size = words[i * mmsg_words + len_word]
            if size >= slot:
                continue  # truncated by the kernel: not a query we would accept anyway
            # Slicing the ctypes buffer gives bytes directly: the cache key is the packet
            # after its ID, so the ID (still in place) needs no rewriting on a hit.
            entry = cache_get(queries[offset + 2 : offset + size]) if inline else None
            if entry is not None:
                entry.hits += 1
                body = entry.body
                if body is None:
                    body = entry.bodies[entry.turn()]
                if sending != i:
                    self._move_down(i, sending)
            else:
                reply = self._respond(i, offset, size)
                inline = engine.inline
                if reply is None:
                    continue
                body = reply[2:]
                self._move_down(i, sending, reply[:2])
            out = sending * slot + 2
            length = len(body)
            data[out : out + length] = body
            lengths[sending * 2 + 1] = length + 2
            sending += 1
        return sending

    def _respond(self, index: int, offset: int, size: int) -> bytes | None:
        """Anything the cache cannot answer alone: through the engine, with the client's
        address decoded from its sockaddr."""
        packed = _sockaddr_packed(self._name_view[index * NAME : (index + 1) * NAME])
        packet: bytes = self._buffers[offset : offset + size]  # type: ignore[assignment]
        return self.engine.respond(packet, address_text(packed), True, packed)

    def _move_down(self, index: int, target: int, reply_id: bytes | None = None) -> None:
        """Reply slot `target` goes to the client of query `index`, with its ID."""
        names, data = self._name_view, self._data
        if target != index:
            names[target * NAME : (target + 1) * NAME] = names[index * NAME : (index + 1) * NAME]
            if reply_id is None:
                reply_id = bytes(data[index * SLOT : index * SLOT + 2])
        if reply_id is not None:
            data[target * SLOT : target * SLOT + 2] = reply_id

    def _send(self, count: int) -> None:
        sent = self._sendmmsg(self._fd, self._send_address, count, socket.MSG_DONTWAIT)
        # A full socket buffer drops the rest, like any UDP server under overload.
        if 0 <= sent < count:
            log.debug("udp send buffer full: %d replies dropped", count - sent)


class PlainUdpServer:
    """One recvfrom/sendto per datagram, for platforms without recvmmsg."""

    def __init__(self, sock: socket.socket, engine: DnsEngine) -> None:
        self.sock = sock
        self.engine = engine

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self.on_readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())

    def on_readable(self) -> None:
        for _ in range(BATCH * MAX_BATCHES_PER_WAKEUP):
            try:
                packet, addr = self.sock.recvfrom(SLOT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp receive error: %s", exc)
                return
            started = perf_counter()
            try:
                reply = self.engine.respond(packet, addr[0], True)
                if reply is not None:
                    self.sock.sendto(reply, addr)
                self.engine.latency["udp"].observe(perf_counter() - started)
            except OSError as exc:
                log.debug("udp send error: %s", exc)
            except Exception:
                self.engine.malformed += 1
                log.exception("unexpected error answering a UDP query")


def udp_server(sock: socket.socket, engine: DnsEngine) -> BatchUdpServer | PlainUdpServer:
    try:
        return BatchUdpServer(sock, engine)
    except OSError as exc:
        log.info("batched UDP unavailable (%s); answering one datagram at a time", exc)
        return PlainUdpServer(sock, engine)
