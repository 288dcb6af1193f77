"""Help for the human, end to end: real broker, real vLLM serving the tiny fused expert.

Triage records carry the expert's top-3 queues and the similar past tickets of its index;
routed records carry the top-3 only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expert.serving import load_card
from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy
from tests.kafka_helpers import OutputReader, produce
from tests.worker_process import output_topics as _outputs
from tests.worker_process import sources as _sources
from tests.worker_process import ticket_payload as _ticket
from worker.broker import TopicLayout, create_layout
from worker.config import Settings
from worker.runner import started_worker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


async def test_triage_records_carry_suggestions_and_similar_tickets(
    bootstrap: str, taxonomy_file: Path, tiny_fused_dir: Path, unique: str
) -> None:
    layout = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(layout, partitions=2))
    card = load_card(tiny_fused_dir)
    assert card.similar is not None
    n = 30
    produce(bootstrap, layout.topics.inbound, [_ticket(i) for i in range(n)])
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{unique}"},
        engine={"model_dir": tiny_fused_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        # Splits the tickets between routed and triage on the tiny expert's confidences.
        routing={"confidence_threshold": 0.9},
        shutdown_grace_s=10,
    )
    async with started_worker(settings) as worker:
        await worker.pipeline.run(worker.source, stop_after=n)
    reader = OutputReader(bootstrap, _outputs(layout))
    out = reader.read_until(lambda rs: len(_sources(rs)) >= n, timeout_s=60)
    reader.close()
    records = [RoutedTicket.model_validate_json(r.value) for r in out]
    assert len(records) == n
    triaged = [r for r in records if r.topic == layout.topics.triage]
    routed = [r for r in records if r.topic != layout.topics.triage]
    assert triaged, "no ticket went to triage at threshold 0.9"
    for record in records:
        decision = record.decision
        assert len(decision.suggestions) == 3
        assert decision.suggestions[0].queue == decision.queue
        assert decision.suggestions[0].probability == pytest.approx(
            decision.probabilities[decision.queue]
        )
    for record in triaged:
        similar = record.decision.similar_tickets
        assert 0 < len(similar) <= card.similar.k
        assert all(t.queue in layout.labels and t.snippet for t in similar)
        assert [t.similarity for t in similar] == sorted(
            (t.similarity for t in similar), reverse=True
        )
    assert all(r.decision.similar_tickets == () for r in routed)
