"""Leader fencing done by JetStream itself: what a fenced write carries, as pure functions.

The lease (lease.py) makes two leaders' *beliefs* never overlap, but a belief is checked
before a write is sent, and a leader paused or cut off between the check and the send (the
client buffers the publish; 64 writes are in flight at once) would land a stale write after
another replica took over. So every write of a term is conditional, and the server checks it:

- on taking over, the new leader writes its fence in each bucket it writes: a delete marker at
  each of the fence keys (`subjects.fence_key(slot)`, one per write in flight), each itself
  conditional on the marker it read just before (so a replica paused in the middle of its
  own takeover cannot fence out a newer leader);
- every put and delete of its term holds a slot and carries `Nats-Expected-Last-Subject-
  Sequence: <that slot's fence sequence>` with `Nats-Expected-Last-Subject-Sequence-Subject:
  $KV.<bucket>.<the slot's fence key>` (nats-server 2.11+): the stream stores it only while
  that fence is the newest;
- a later leader's fence moves every slot's sequence, and every write of the older term still
  in flight is refused with "wrong last sequence: N" (JetStream error 10071).

Why slots: a replicated stream's leader checks a condition before proposing the write, and
while one conditional write on a subject is in flight it refuses any other on that subject
outright (10164, "wrong last sequence", no number; it decides nothing, the write is retried).
With one fence key, 64 writes in flight on an R3 bucket were 63 refusals. A single server
never gives that answer.

No clock and no replication of ours: the stream's own sequence numbers order the terms.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import subjects

WRONG_LAST_SEQUENCE = 10071
"""JetStream's err_code for a failed `Nats-Expected-Last-*` condition: the term is over."""
CONDITION_IN_FLIGHT = 10164
"""JetStream's err_code when a replicated stream's leader refuses a conditional write without
checking it, because another one on the same subject is still in flight: retry."""
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
KV_OPERATION = "KV-Operation"
WRITER = "Kgslb-Writer"
"""Which replica wrote a message, on every fenced write and fence: for `nats stream view`."""


class FenceKeyWrite(ValueError):
    """A data write aimed at a fence key (a bug: no FQDN or zone key can be one)."""


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def fence_subject(bucket: str, slot: int) -> str:
    return kv_subject(bucket, subjects.fence_key(slot))


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def fence_headers(
    writer: str, last_fence_sequence: int, *, delete_marker: bool = True
) -> dict[str, str]:
    """Headers of a new fence marker that lands only if the marker is still the one read at
    `last_fence_sequence` (0: none). In a KV bucket it is a delete marker, which readers that
    list or get keys never see."""
    if last_fence_sequence < 0:
        raise ValueError(f"last fence sequence {last_fence_sequence} is negative")
    headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(last_fence_sequence), WRITER: writer}
    return {KV_OPERATION: "DEL", **headers} if delete_marker else headers


def fenced_headers(fence_subject: str, fence_sequence: int, writer: str) -> dict[str, str]:
    """Headers of a write that lands only while the fence at `fence_subject` is still the
    marker written at `fence_sequence`."""
    if fence_sequence < 1:
        raise ValueError(f"fence {fence_subject}: sequence {fence_sequence} is not one (from 1)")
    return {
        EXPECTED_LAST_SUBJECT_SEQUENCE: str(fence_sequence),
        EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: fence_subject,
        WRITER: writer,
    }


@dataclass(frozen=True)
class Term:
    """One leader's term in one bucket: its writes land only while its fence is the newest.
    `fences[slot]` is the stream sequence of the slot's fence marker."""

    bucket: str
    writer: str
    fences: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.fences:
            raise ValueError(f"term of {self.writer} in KV {self.bucket}: no fence slots")
        for slot, sequence in enumerate(self.fences):
            if sequence < 1:
                raise ValueError(
                    f"term of {self.writer} in KV {self.bucket}: fence slot {slot} has "
                    f"sequence {sequence}, not a stream sequence (from 1)"
                )

    @property
    def slots(self) -> int:
        return len(self.fences)

    def subject(self, key: str) -> str:
        if subjects.is_fence_key(key):
            raise FenceKeyWrite(f"KV {self.bucket}: {key!r} is a fence key, not a value")
        return kv_subject(self.bucket, key)

    def headers(self, slot: int, *, delete: bool = False) -> dict[str, str]:
        if not 0 <= slot < self.slots:
            raise ValueError(f"KV {self.bucket}: fence slot {slot} outside 0..{self.slots - 1}")
        headers = fenced_headers(fence_subject(self.bucket, slot), self.fences[slot], self.writer)
        if delete:
            headers[KV_OPERATION] = "DEL"
        return headers

    def all_headers(self) -> tuple[tuple[dict[str, str], ...], tuple[dict[str, str], ...]]:
        """Every slot's headers, of a put and of a delete: built once per term, not per write."""
        puts = tuple(self.headers(slot) for slot in range(self.slots))
        deletes = tuple(self.headers(slot, delete=True) for slot in range(self.slots))
        return puts, deletes


def refused_by_fence(err_code: int | None) -> bool:
    """Did JetStream refuse a conditional write because its condition no longer holds?"""
    return err_code == WRONG_LAST_SEQUENCE


def condition_in_flight(err_code: int | None) -> bool:
    """Did a replicated stream refuse a conditional write unchecked (retry it)?"""
    return err_code == CONDITION_IN_FLIGHT


def retry_delays(attempts: int, first_seconds: float, most_seconds: float) -> list[float]:
    """Backoff between the attempts of a write the stream was too busy to check: doubling
    from `first_seconds`, capped at `most_seconds`; `attempts - 1` delays."""
    if attempts < 1 or first_seconds <= 0 or most_seconds < first_seconds:
        raise ValueError(
            f"retry of a conditional write: attempts {attempts} (>= 1), first delay "
            f"{first_seconds} s (> 0), longest {most_seconds} s (>= the first)"
        )
    return [min(first_seconds * 2**n, most_seconds) for n in range(attempts - 1)]
