"""OffsetTracker: the committed offset never passes an unfinished record, in any order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import OffsetInvariantError
from worker.offsets import OffsetTracker

TP = ("tickets", 0)


@given(
    offsets=st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True).map(sorted),
    data=st.data(),
)
def test_watermark_never_passes_an_unfinished_record(
    offsets: list[int], data: st.DataObject
) -> None:
    tracker = OffsetTracker()
    for o in offsets:
        tracker.started(TP, o)
    finish_order = data.draw(st.permutations(offsets))
    failed = set(data.draw(st.lists(st.sampled_from(offsets), max_size=3)))
    done: set[int] = set()
    for o in finish_order:
        if o in failed:
            continue
        tracker.done(TP, o)
        done.add(o)
        committable = tracker.committable().get(TP)
        unfinished = [x for x in offsets if x not in done]
        if unfinished:
            assert committable is None or committable <= min(unfinished)
            if committable is not None:
                assert all(x in done for x in offsets if x < committable)
        else:
            assert committable == offsets[-1] + 1
        if committable is not None:
            tracker.mark_committed({TP: committable})


def test_failed_record_holds_the_partition_back_but_not_others() -> None:
    tracker = OffsetTracker()
    other = ("tickets", 1)
    for o in range(5):
        tracker.started(TP, o)
        tracker.started(other, o)
    for o in (0, 1, 3, 4):  # offset 2's output failed
        tracker.done(TP, o)
    for o in range(5):
        tracker.done(other, o)
    assert tracker.committable() == {TP: 2, other: 5}


def test_commit_past_pending_record_is_refused() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 7)
    with pytest.raises(OffsetInvariantError):
        tracker.check({TP: 8})
    with pytest.raises(OffsetInvariantError):
        tracker.mark_committed({TP: 8})


def test_forgotten_partition_has_nothing_to_commit() -> None:
    tracker = OffsetTracker()
    tracker.started(TP, 0)
    tracker.done(TP, 0)
    tracker.forget([TP])
    assert tracker.committable() == {}
    assert tracker.in_flight() == 0


def test_gaps_in_offsets_do_not_block_the_watermark() -> None:
    tracker = OffsetTracker()
    for o in (10, 12, 15):  # e.g. transaction markers between records
        tracker.started(TP, o)
        tracker.done(TP, o)
    assert tracker.committable() == {TP: 16}
    assert tracker.next_positions() == {TP: 16}
