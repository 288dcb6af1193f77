"""Queue modes end to end: real broker, real vLLM serving the tiny expert. Tickets predicted
for a shadow queue land on triage (shadow_mode) and their decision on the shadow topic; a
recommend queue's land on triage carrying the suggestion; nothing of theirs is routed."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.routing import Disposition, RoutedTicket, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy
from tests.kafka_helpers import OutputReader, produce
from tests.worker_process import output_topics, sources, ticket_payload
from worker.broker import TopicLayout, create_layout
from worker.config import Settings
from worker.runner import started_worker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


async def test_shadow_and_recommend_queues_reach_triage_and_the_shadow_topic(
    bootstrap: str, taxonomy_file: Path, tiny_expert_dir: Path, unique: str
) -> None:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=2))
    # Every queue is shadow or recommend (alternately): each ticket exercises one of them.
    modes = {
        q: (QueueMode.SHADOW if i % 2 == 0 else QueueMode.RECOMMEND)
        for i, q in enumerate(tax.labels)
    }
    n = 40
    produce(bootstrap, tax.topics.inbound, [ticket_payload(i) for i in range(n)])
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{unique}"},
        engine={"model_dir": tiny_expert_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        routing={"confidence_threshold": 0.0, "modes": modes},  # every answer is confident
        shutdown_grace_s=10,
    )
    registry = CollectorRegistry()
    async with started_worker(settings, registry=registry) as worker:
        await worker.pipeline.run(worker.source, stop_after=n)
    reader = OutputReader(bootstrap, [*output_topics(tax), tax.topics.shadow])
    out = reader.read_until(lambda rs: len(sources(rs)) >= n, timeout_s=60)
    shadowed = sum(
        1
        for r in out
        if r.topic == tax.topics.triage
        and RoutedTicket.model_validate_json(r.value).mode is QueueMode.SHADOW
    )
    out = reader.read_until(
        lambda rs: sum(r.topic == tax.topics.shadow for r in rs) >= shadowed, timeout_s=60
    )
    reader.close()
    triage = {}
    shadow = {}
    for r in out:
        record = RoutedTicket.model_validate_json(r.value)
        assert r.topic in (tax.topics.triage, tax.topics.shadow), "nothing is routed"
        (shadow if r.topic == tax.topics.shadow else triage)[record.ticket.id] = record
    assert len(triage) == n
    seen = set()
    for ticket_id, record in triage.items():
        mode = modes[record.decision.queue or ""]
        seen.add(mode)
        assert record.mode is mode and record.disposition is Disposition.TRIAGE
        if mode is QueueMode.RECOMMEND:
            assert record.triage_reason is TriageReason.RECOMMEND_MODE
            assert ticket_id not in shadow
        else:
            assert record.triage_reason is TriageReason.SHADOW_MODE
            twin = shadow[ticket_id]
            assert twin.disposition is Disposition.SHADOW and twin.triage_reason is None
            assert twin.decision == record.decision and twin.topic == tax.topics.shadow
    assert seen == {QueueMode.SHADOW, QueueMode.RECOMMEND}
    assert len(shadow) == shadowed
    get = registry.get_sample_value
    assert (
        sum(
            get("router_queue_decisions_total", {"queue": q, "mode": m.value, "outcome": o}) or 0
            for q, m in modes.items()
            for o in ("shadow_mode", "recommend_mode")
        )
        == n
    )
    assert get("router_queue_mode_info", {"queue": tax.labels[0], "mode": "shadow"}) == 1
