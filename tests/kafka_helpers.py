"""Plain confluent-kafka clients for tests: produce inputs, read outputs back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition


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
    """Reads the output topics from the beginning, accumulating records across calls."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.records: list[OutRecord] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.subscribe(topics)

    def read_until(
        self, done: Callable[[list[OutRecord]], bool], *, timeout_s: float
    ) -> list[OutRecord]:
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            for m in self._consumer.consume(num_messages=500, timeout=0.2):
                if m.error() is None:
                    self.records.append(
                        OutRecord(
                            topic=m.topic(),
                            partition=m.partition(),
                            offset=m.offset(),
                            key=m.key(),
                            value=m.value() or b"",
                            headers={k: v or b"" for k, v in (m.headers() or [])},
                        )
                    )
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
