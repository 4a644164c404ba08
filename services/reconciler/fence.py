"""Leader fencing done by JetStream itself: what a fenced write carries, as pure functions.

The lease (lease.py) makes two leaders' *beliefs* never overlap, but a belief is checked
before a write is sent, and a leader paused or cut off between the check and the send (the
client buffers the publish; 64 writes are in flight at once) would land a stale write after
another replica took over. So every write of a term is conditional, and the server checks it:

- on taking over, the new leader writes a fence in each bucket it writes: a delete marker at
  `subjects.FENCE_KEY`, itself conditional on the fence it read just before (so a replica
  paused in the middle of its own takeover cannot fence out a newer leader);
- every put and delete of its term carries `Nats-Expected-Last-Subject-Sequence: <the fence's
  sequence>` with `Nats-Expected-Last-Subject-Sequence-Subject: $KV.<bucket>.<FENCE_KEY>`
  (nats-server 2.11+): the stream stores it only while that fence is the newest;
- a later leader's fence moves that sequence, and every write of the older term still in
  flight is refused with "wrong last sequence" (JetStream error 10071).

No clock and no replication of ours: the stream's own sequence numbers order the terms.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import subjects

WRONG_LAST_SEQUENCE = 10071
"""JetStream's err_code for a failed `Nats-Expected-Last-*` condition."""
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
KV_OPERATION = "KV-Operation"
WRITER = "Kgslb-Writer"
"""Which replica wrote a message, on every fenced write and fence: for `nats stream view`."""


class FenceKeyWrite(ValueError):
    """A data write aimed at the fence key itself (a bug: no FQDN or zone key can be it)."""


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def fence_subject(bucket: str) -> str:
    return kv_subject(bucket, subjects.FENCE_KEY)


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def fence_headers(writer: str, last_fence_sequence: int) -> dict[str, str]:
    """Headers of a new fence: a delete marker (readers that list or get keys never see it)
    that lands only if the fence is still the one read at `last_fence_sequence` (0: none)."""
    if last_fence_sequence < 0:
        raise ValueError(f"last fence sequence {last_fence_sequence} is negative")
    return {
        KV_OPERATION: "DEL",
        EXPECTED_LAST_SUBJECT_SEQUENCE: str(last_fence_sequence),
        WRITER: writer,
    }


@dataclass(frozen=True, slots=True)
class Term:
    """One leader's term in one bucket: its writes land only while its fence is the newest."""

    bucket: str
    writer: str
    fence_sequence: int

    def __post_init__(self) -> None:
        if self.fence_sequence < 1:
            raise ValueError(
                f"term of {self.writer} in KV {self.bucket}: fence sequence "
                f"{self.fence_sequence} is not a stream sequence (from 1)"
            )

    def subject(self, key: str) -> str:
        if subjects.is_fence_key(key):
            raise FenceKeyWrite(f"KV {self.bucket}: {key!r} is the fence key, not a value")
        return kv_subject(self.bucket, key)

    def headers(self, *, delete: bool = False) -> dict[str, str]:
        headers = {
            EXPECTED_LAST_SUBJECT_SEQUENCE: str(self.fence_sequence),
            EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: fence_subject(self.bucket),
            WRITER: self.writer,
        }
        if delete:
            headers[KV_OPERATION] = "DEL"
        return headers


def refused_by_fence(err_code: int | None) -> bool:
    """Did JetStream refuse a conditional write because its condition no longer holds?"""
    return err_code == WRONG_LAST_SEQUENCE
