"""`route` shows the help a triage record carries: top-3 queues and similar tickets."""

from __future__ import annotations

from collections.abc import Sequence

from expert.card import ExpertCard
from expert.serving import Prediction
from schemas.routing import SimilarTicket
from schemas.taxonomy import Taxonomy
from worker.route import ExpertVersion, Threshold, item_from_text, route_items

TAX = Taxonomy.load()
SIMILAR = (
    SimilarTicket(
        ticket_id="INC7", snippet="vpn drops at home", queue="network_vpn", similarity=0.8
    ),
    SimilarTicket(ticket_id="row-3", snippet="printer jam", queue="hardware", similarity=0.2),
)


class SimilarStub:
    """Answers every text network_vpn at 0.6, with two similar tickets."""

    card: ExpertCard

    def classify_batch(self, texts: Sequence[str]) -> list[Prediction]:
        rest = 0.4 / (len(TAX.labels) - 1)
        probs = {q: 0.6 if q == "network_vpn" else rest for q in TAX.labels}
        return [Prediction("network_vpn", 0.6, probs, 0.01, similar=SIMILAR) for _ in texts]


def _outcome(threshold: float):  # type: ignore[no-untyped-def]
    (outcome,) = route_items(
        [item_from_text("vpn down")],
        engine=SimilarStub(),  # type: ignore[arg-type]
        version=ExpertVersion("m-1", None, None),
        taxonomy=TAX,
        threshold=Threshold(threshold, "configured"),
    )
    return outcome


def test_a_triage_outcome_lists_the_similar_tickets_in_json_and_text() -> None:
    outcome = _outcome(0.7)
    assert outcome.disposition == "triage"
    out = outcome.as_json()
    assert [t["ticket_id"] for t in out["similar_tickets"]] == ["INC7", "row-3"]
    assert out["similar_tickets"][0]["queue"] == "network_vpn"
    text = outcome.render()
    assert "similar     0.80 network_vpn  INC7" in text, text
    assert "0.20 hardware  row-3" in text, text
    assert [s.queue for s in outcome.decision.suggestions][0] == "network_vpn"


def test_a_routed_outcome_carries_top_queues_but_no_similar_tickets() -> None:
    outcome = _outcome(0.5)
    assert outcome.disposition == "routed"
    assert outcome.as_json()["similar_tickets"] == []
    assert "similar" not in outcome.render()
    assert len(outcome.decision.suggestions) == 3
