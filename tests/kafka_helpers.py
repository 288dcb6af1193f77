"""Plain confluent-kafka clients for tests: produce inputs, read outputs back.

`OutputReader.read_to_end` is a read-to-end barrier: a marker record at the end of every
partition read, then read until each marker arrives (a partition is read in order). Markers,
this reader's or another's on the same topics, never enter `records`. It replaces "read for a
few more seconds" (slower, and still a guess). Tansu's ListOffsets is wrong for batched
records, so end offsets are never asked of the broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

MARKER_HEADER = "test.read-barrier"


@dataclass(frozen=True)
class OutRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    @property
    def source(self) -> tuple[str, int, int]:
        h = self.headers
        return (
            h["router.source.topic"].decode(),
            int(h["router.source.partition"]),
            int(h["router.source.offset"]),
        )


def produce(
    bootstrap: str, topic: str, values: Iterable[bytes], *, keys: Iterable[bytes] | None = None
) -> int:
    """Produce `values` (acks=all) and return how many were acknowledged."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    acked = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal acked
        if err is None:
            acked += 1

    key_list = list(keys) if keys is not None else None
    for i, v in enumerate(values):
        producer.produce(
            topic, value=v, key=key_list[i] if key_list else None, on_delivery=on_delivery
        )
        producer.poll(0)
    producer.flush(30)
    return acked


class OutputReader:
    """Reads the output topics from the beginning, accumulating records across calls.

    Every partition of the (existing) topics is assigned to it directly: no group to join
    (a join waits on the broker for about half the session timeout) and no rebalance that
    could make it read a partition twice.
    """

    def __init__(self, bootstrap: str, topics: list[str], *, committed_only: bool = True) -> None:
        self.records: list[OutRecord] = []
        # Barrier markers seen (topic, partition, token): any reader's, never in `records`
        # (another reader of the same topics writes its own).
        self._markers: set[tuple[str, int, bytes]] = set()
        self._bootstrap = bootstrap
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-reader-{uuid.uuid4().hex}",  # never joined, never committed
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            }
        )
        self.partitions: list[tuple[str, int]] = []
        for topic in topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
            assert meta.error is None and meta.partitions, f"no topic {topic}: {meta.error}"
            self.partitions += [(topic, p) for p in sorted(meta.partitions)]
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in self.partitions])

    def read_until(
        self, done: Callable[[list[OutRecord]], bool], *, timeout_s: float
    ) -> list[OutRecord]:
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            for m in self._consumer.consume(num_messages=500, timeout=0.2):
                if m.error() is not None:
                    continue
                headers = {k: v or b"" for k, v in (m.headers() or [])}
                if MARKER_HEADER in headers:
                    self._markers.add((m.topic(), m.partition(), headers[MARKER_HEADER]))
                    continue
                self.records.append(
                    OutRecord(
                        topic=m.topic(),
                        partition=m.partition(),
                        offset=m.offset(),
                        key=m.key(),
                        value=m.value() or b"",
                        headers=headers,
                    )
                )
        return self.records

    def read_to_end(self, *, timeout_s: float = 120) -> list[OutRecord]:
        """Everything written to the topics so far, markers left out (see the module doc)."""
        token = uuid.uuid4().hex.encode()
        producer = Producer({"bootstrap.servers": self._bootstrap, "enable.idempotence": True})
        for t, p in self.partitions:
            producer.produce(t, value=b"", partition=p, headers=[(MARKER_HEADER, token)])
        assert producer.flush(30) == 0

        def all_markers(_records: list[OutRecord]) -> bool:
            seen = {(t, p) for t, p, marker in self._markers if marker == token}
            return seen == set(self.partitions)

        self.read_until(all_markers, timeout_s=timeout_s)
        assert all_markers(self.records), "read barrier markers did not all arrive"
        return self.records

    def close(self) -> None:
        self._consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (partition -> next offset), only where one exists."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {p.partition: p.offset for p in parts if p.offset >= 0}
    finally:
        c.close()
