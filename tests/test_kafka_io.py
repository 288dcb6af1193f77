"""worker.kafka_io.Source against the real broker: group membership with plain settings.

The bench and capacity readers build a Source from a few settings of their own, not from
the worker's consumer config; an eager assignment protocol made librdkafka refuse the
Source's incremental_assign() and the reader hung forever (the CI run that timed out).
Like them, the test gives a session timeout: with librdkafka's default (45 s) the embedded
broker holds a first join for about half of it.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.kafka_helpers import produce
from worker.broker import TopicLayout, create_layout
from worker.kafka_io import TP, ConsumerThreadOps, Source


class _Listener:
    def __init__(self) -> None:
        self.assigned: list[TP] = []

    def on_assigned(self, tps: list[TP]) -> None:
        self.assigned += tps

    def on_revoked(self, tps: list[TP], ops: ConsumerThreadOps) -> dict[TP, int]:
        return {}

    def on_lost(self, tps: list[TP], ops: ConsumerThreadOps) -> None: ...


def test_a_source_refuses_an_eager_assignment_strategy() -> None:
    with pytest.raises(ValueError, match="cooperative-sticky"):
        Source(
            conf={"bootstrap.servers": "x:9092", "partition.assignment.strategy": "range"},
            topics=["t"],
            listener=_Listener(),
        )


@pytest.mark.timeout(90)
async def test_a_source_given_plain_settings_joins_and_reads_every_partition(
    bootstrap: str,
) -> None:
    topic = f"src-{uuid.uuid4().hex[:10]}"
    create_layout(bootstrap, TopicLayout(topics=(topic,), partitions=3))
    values = [f"r{i}".encode() for i in range(9)]
    assert produce(bootstrap, topic, values, keys=[str(i).encode() for i in range(9)]) == 9
    listener = _Listener()
    source = Source(
        conf={
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": "false",
            "session.timeout.ms": "6000",  # as the bench readers set it; no assignment strategy
        },
        topics=[topic],
        listener=listener,
    )
    await source.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < 9:
            assert time.monotonic() < deadline, f"{len(got)} of 9 records within 60 s"
            got += [r.value or b"" for r in await source.poll(max_records=100, timeout_s=0.2)]
        assert sorted(listener.assigned) == [(topic, p) for p in range(3)]
        assert sorted(got) == sorted(values)
    finally:
        await source.close()
