"""The reconciler's memory tuning: the one place it touches Python's garbage collector, a
process-wide setting, so that the planner (plan.py) stays free of side effects.

Why: at scale the replay and a full plan build hundreds of thousands of objects that live as
long as the process (observed objects, indexes, services) and are almost never cyclic
garbage. Each pass of the cyclic collector's oldest generation rescans all of them. Measured:
collections during planning doubled a full plan; freezing what the replay built (moving it out
of the collector's generations, `gc.freeze`) took applying 30,000 FQDNs x 3 from 2.7 to 2.1 s
(commit d430e87), and freezing after a full plan keeps a later incremental re-plan of 10,000
FQDNs from stalling a tenth of a second in a collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from services.reconciler.plan import PlanDelta, Planner
from shared.collector import LongLivedState

FREEZE_EVERY_EVENTS = 5_000


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside: planning allocates many short-lived, acyclic values that
    would trigger collections of the whole long-lived world."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class GcTuning:
    """Freezes what the replay and each full plan built; pauses the collector while planning."""

    def __init__(self, freeze_every_events: int = FREEZE_EVERY_EVENTS) -> None:
        self._long_lived = LongLivedState(freeze_every_events)
        self._freeze_due = False

    def event_applied(self) -> None:
        """One more event is applied (replayed or live)."""
        self._long_lived.changed()

    def replay_done(self) -> None:
        self._long_lived.settled()

    def replan(self, planner: Planner, limit: int | None = None) -> PlanDelta:
        """`planner.replan(limit)` with the collector paused; what a full plan built is frozen
        once its last part is done."""
        with collector_paused():
            delta = planner.replan(limit)
        self._freeze_due |= delta.full
        if self._freeze_due and not delta.more:
            self._freeze_due = False
            self._long_lived.settled()
        return delta
