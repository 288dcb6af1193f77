"""OffsetTracker: which inbound offsets are safe to commit, per partition. Pure, no I/O.

Tickets finish out of order. A partition's committable offset is the lowest offset still in
flight, or one past the highest offset seen when nothing is in flight: the contiguous
watermark, never the highest finished offset. An offset whose output failed is simply never
marked done, so the watermark can never pass it.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from worker.errors import OffsetInvariantError

TP = tuple[str, int]


@dataclass(slots=True)
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)  # lazily pruned min-heap of pending
    next_offset: int | None = None  # one past the highest offset seen
    committed: int | None = None

    def low_watermark(self) -> int | None:
        while self.heap and self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        if self.heap:
            return self.heap[0]
        return self.next_offset


class OffsetTracker:
    """Thread-safe record of started and finished offsets per partition."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TP, _PartitionState] = {}

    def started(self, tp: TP, offset: int) -> None:
        """A record was handed to the pipeline."""
        with self._lock:
            st = self._parts.setdefault(tp, _PartitionState())
            if offset in st.pending:
                return
            st.pending.add(offset)
            heapq.heappush(st.heap, offset)
            if st.next_offset is None or offset + 1 > st.next_offset:
                st.next_offset = offset + 1

    def done(self, tp: TP, offset: int) -> None:
        """The record's output (queue, triage or dead-letter) was acknowledged by the broker."""
        with self._lock:
            st = self._parts.get(tp)
            if st is not None:
                st.pending.discard(offset)

    def in_flight(self, tps: Iterable[TP] | None = None) -> int:
        """Records started but not done, over `tps` (all partitions when None)."""
        with self._lock:
            keys = self._parts.keys() if tps is None else [tp for tp in tps if tp in self._parts]
            return sum(len(self._parts[tp].pending) for tp in keys)

    def committable(self, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """Offsets that may be committed now and advance past the last commit."""
        out: dict[TP, int] = {}
        with self._lock:
            keys = list(self._parts) if tps is None else [tp for tp in tps if tp in self._parts]
            for tp in keys:
                st = self._parts[tp]
                wm = st.low_watermark()
                if wm is not None and (st.committed is None or wm > st.committed):
                    out[tp] = wm
        return out

    def next_positions(self) -> dict[TP, int]:
        """One past the highest offset handed out, per partition (where to resume fetching)."""
        with self._lock:
            return {
                tp: st.next_offset for tp, st in self._parts.items() if st.next_offset is not None
            }

    def mark_committed(self, offsets: dict[TP, int]) -> None:
        """Record a successful commit; raises if it passed an unfinished record.

        Raises:
            OffsetInvariantError: an offset at or past a pending record was committed.
        """
        with self._lock:
            for tp, offset in offsets.items():
                st = self._parts.get(tp)
                if st is None:
                    continue
                low = st.low_watermark()
                if low is not None and offset > low:
                    raise OffsetInvariantError(
                        f"{tp[0]}[{tp[1]}]: commit {offset} passes unfinished offset {low}"
                    )
                st.committed = offset

    def check(self, offsets: dict[TP, int]) -> None:
        """Raise before committing `offsets` if any would pass an unfinished record."""
        with self._lock:
            for tp, offset in offsets.items():
                st = self._parts.get(tp)
                low = st.low_watermark() if st else None
                if low is not None and offset > low:
                    raise OffsetInvariantError(
                        f"{tp[0]}[{tp[1]}]: commit {offset} passes unfinished offset {low}"
                    )

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop partitions this worker no longer owns (their late results are not committed)."""
        with self._lock:
            for tp in tps:
                self._parts.pop(tp, None)
