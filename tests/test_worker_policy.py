"""Per-queue thresholds and modes (`worker.policy`, `worker.decide`), and the pipeline
publishing each mode's records (in-memory fakes; the real broker and vLLM run the same in
test_worker_modes_e2e)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from expert.serving import Prediction
from schemas.routing import Disposition, RoutedTicket, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy, TaxonomyError
from tests.fakes import FakeEngine, InMemoryPublisher, InMemorySource
from worker.config import RoutingSettings
from worker.decide import destination
from worker.kafka_io import InboundRecord
from worker.metrics import Metrics
from worker.pipeline import H_DISPOSITION, Pipeline, PipelineConfig
from worker.policy import PolicyError, Thresholds, modes_in_force, plan, thresholds_in_force

TAX = Taxonomy.load()
VPN, HW = "network_vpn", "hardware"


def _prediction(label: str, confidence: float) -> Prediction:
    rest = (1.0 - confidence) / (len(TAX.labels) - 1)
    probs = {q: (confidence if q == label else rest) for q in TAX.labels}
    return Prediction(label=label, confidence=confidence, probabilities=probs, latency_s=0.01)


# --- thresholds ------------------------------------------------------------------------------


def test_a_configured_threshold_overrides_the_cards_per_queue_ones() -> None:
    t = thresholds_in_force(0.9, 0.7, {VPN: 0.3})
    assert (t.for_queue(VPN), t.for_queue(HW), t.source) == (0.9, 0.9, "configured")


def test_the_cards_queue_thresholds_apply_and_other_queues_use_its_global_one() -> None:
    t = thresholds_in_force(None, 0.7, {VPN: 0.3})
    assert (t.for_queue(VPN), t.for_queue(HW), t.source) == (0.3, 0.7, "card")
    assert thresholds_in_force(None, None, None).for_queue(VPN) == 0.5


def test_a_ticket_is_routed_at_its_predicted_queues_threshold() -> None:
    t = Thresholds(default=0.8, per_queue={VPN: 0.4}, source="card")
    assert destination(TAX, _prediction(VPN, 0.5), t) == (
        TAX.topic_for(VPN),
        Disposition.ROUTED,
        None,
    )
    assert destination(TAX, _prediction(HW, 0.5), t)[1:] == (
        Disposition.TRIAGE,
        TriageReason.LOW_CONFIDENCE,
    )
    # A plain float is one threshold for all, every queue autoroute (as before).
    assert destination(TAX, _prediction(HW, 0.5), 0.5)[1] is Disposition.ROUTED


# --- modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "confidence", "expected"),
    [
        (QueueMode.AUTOROUTE, 0.9, (Disposition.ROUTED, None, False, None)),
        (QueueMode.AUTOROUTE, 0.2, (Disposition.TRIAGE, "low_confidence", False, None)),
        (QueueMode.RECOMMEND, 0.9, (Disposition.TRIAGE, "recommend_mode", False, None)),
        (QueueMode.RECOMMEND, 0.2, (Disposition.TRIAGE, "low_confidence", False, None)),
        (QueueMode.SHADOW, 0.9, (Disposition.TRIAGE, "shadow_mode", True, None)),
        (QueueMode.SHADOW, 0.2, (Disposition.TRIAGE, "shadow_mode", True, "low_confidence")),
    ],
)
def test_each_mode_decides_by_the_predicted_queue(
    mode: QueueMode, confidence: float, expected: tuple[object, ...]
) -> None:
    chosen = plan(
        TAX,
        _prediction(VPN, confidence),
        thresholds=Thresholds(default=0.5),
        modes={VPN: mode, HW: QueueMode.AUTOROUTE},
    )
    assert (chosen.disposition, chosen.reason, chosen.shadow, chosen.shadow_reason) == expected
    assert chosen.mode is mode
    routed = chosen.disposition is Disposition.ROUTED
    assert chosen.topic == (TAX.topic_for(VPN) if routed else TAX.topics.triage)


def test_modes_come_from_the_taxonomy_and_config_overrides_them() -> None:
    text = (
        "queues:\n"
        "  - {name: aa, tier: L1, description: a, topic: t.aa, mode: shadow}\n"
        "  - {name: bb, tier: L1, description: b, topic: t.bb}\n"
    )
    tax = Taxonomy.from_yaml_text(text)
    assert tax.modes() == {"aa": QueueMode.SHADOW, "bb": QueueMode.AUTOROUTE}
    assert modes_in_force(tax, {"bb": QueueMode.RECOMMEND}) == {
        "aa": QueueMode.SHADOW,
        "bb": QueueMode.RECOMMEND,
    }
    with pytest.raises(PolicyError, match="cc"):
        modes_in_force(tax, {"cc": QueueMode.SHADOW})
    with pytest.raises(TaxonomyError, match="mode"):
        Taxonomy.from_yaml_text(text.replace("mode: shadow", "mode: sometimes"))


def test_modes_are_read_from_the_environment_as_a_json_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.config import load_settings

    monkeypatch.setenv("ROUTER_KAFKA__BOOTSTRAP_SERVERS", "localhost:1")
    monkeypatch.setenv("ROUTER_ENGINE__MODEL_DIR", "/nowhere")
    monkeypatch.setenv("ROUTER_ROUTING__MODES", json.dumps({VPN: "shadow", HW: "recommend"}))
    settings = load_settings()
    assert settings.routing.modes == {VPN: QueueMode.SHADOW, HW: QueueMode.RECOMMEND}
    with pytest.raises(ValueError, match="mode"):
        RoutingSettings.model_validate({"modes": {VPN: "loud"}})


# --- the pipeline ----------------------------------------------------------------------------


def _record(i: int, subject: str) -> InboundRecord:
    value = json.dumps(
        {
            "id": f"T{i}",
            "source": "canonical",
            "subject": subject,
            "body": "",
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()
    return InboundRecord(
        topic=TAX.topics.inbound,
        partition=0,
        offset=i,
        key=None,
        value=value,
        timestamp_ms=None,
        headers=(),
    )


def _decide(text: str) -> tuple[str, float]:
    return (VPN, 0.9) if "vpn" in text else (HW, 0.9)


async def test_pipeline_publishes_shadow_and_recommend_records_and_counts_them() -> None:
    records = [_record(0, "vpn down"), _record(1, "monitor dead"), _record(2, "vpn slow")]
    source, pub = InMemorySource(records=list(records)), InMemoryPublisher()
    metrics = Metrics(CollectorRegistry())
    config = PipelineConfig(
        commit_interval_s=0.01,
        poll_timeout_s=0.001,
        mode_overrides={VPN: QueueMode.SHADOW, HW: QueueMode.RECOMMEND},
    )
    engine = FakeEngine(TAX.labels, _decide, queue_thresholds={VPN: 0.95})
    pipeline = Pipeline(config=config, taxonomy=TAX, engine=engine, publisher=pub, metrics=metrics)
    pipeline.on_assigned([(TAX.topics.inbound, 0)])
    await pipeline.run(source, stop_after=len(records))

    by_topic: dict[str, list[RoutedTicket]] = {}
    for topic, _, value, headers in pub.sent:
        by_topic.setdefault(topic, []).append(RoutedTicket.model_validate_json(value))
        assert dict(headers)[H_DISPOSITION].decode() in ("triage", "shadow")
    triage = {r.ticket.id: r for r in by_topic[TAX.topics.triage]}
    shadow = {r.ticket.id: r for r in by_topic[TAX.topics.shadow]}
    assert set(by_topic) == {TAX.topics.triage, TAX.topics.shadow}  # nothing routed
    assert triage["T1"].triage_reason is TriageReason.RECOMMEND_MODE
    assert (triage["T1"].decision.queue, triage["T1"].mode) == (HW, QueueMode.RECOMMEND)
    assert {triage[t].triage_reason for t in ("T0", "T2")} == {TriageReason.SHADOW_MODE}
    assert set(shadow) == {"T0", "T2"}
    # 0.9 is below the card's 0.95 for the VPN queue: autoroute would have triaged it.
    assert {s.disposition for s in shadow.values()} == {Disposition.SHADOW}
    assert {s.triage_reason for s in shadow.values()} == {TriageReason.LOW_CONFIDENCE}
    assert source.last_committed() == {(TAX.topics.inbound, 0): 3}
    reg = metrics.registry
    assert reg.get_sample_value("router_queue_mode_info", {"queue": VPN, "mode": "shadow"}) == 1
    assert (
        reg.get_sample_value(
            "router_queue_decisions_total",
            {"queue": VPN, "mode": "shadow", "outcome": "shadow_mode"},
        )
        == 2
    )
    assert (
        reg.get_sample_value(
            "router_queue_decisions_total",
            {"queue": HW, "mode": "recommend", "outcome": "recommend_mode"},
        )
        == 1
    )
    assert reg.get_sample_value("router_tickets_routed_total", {"queue": VPN}) is None


# --- route -----------------------------------------------------------------------------------


def test_route_shows_the_queue_threshold_and_mode_that_applied() -> None:
    from expert.card import ExpertCard
    from tests.test_worker_route import StubEngine
    from worker.route import ExpertVersion, item_from_text, route_items, threshold_in_force

    card = ExpertCard.model_validate(
        {
            "kind": "classifier",
            "model_id": "m",
            "labels": TAX.labels,
            "prompt_template": "{ticket}",
            "max_prompt_tokens": 64,
        }
    )
    threshold = threshold_in_force(None, 0.9, {VPN: 0.5})
    assert threshold.for_queue(VPN) == 0.5 and threshold.for_queue(HW) == 0.9
    version = ExpertVersion("m", None, 0.9, {VPN: 0.5})
    items = [item_from_text("vpn down")]

    def decide(modes: dict[str, QueueMode]) -> dict[str, object]:
        (outcome,) = route_items(
            items,
            engine=StubEngine(card, VPN, 0.6),
            version=version,
            taxonomy=TAX,
            threshold=threshold,
            modes=modes,
        )
        return outcome.as_json()

    routed = decide({})
    assert (routed["disposition"], routed["threshold"], routed["mode"]) == (
        "routed",
        0.5,
        "autoroute",
    )
    assert routed["threshold_source"] == "expert card (queue)"
    shadow = decide({VPN: QueueMode.SHADOW})
    assert (shadow["disposition"], shadow["triage_reason"]) == ("triage", "shadow_mode")
    assert shadow["shadow_topic"] == TAX.topics.shadow
    recommend = decide({VPN: QueueMode.RECOMMEND})
    assert (recommend["triage_reason"], recommend["queue"]) == ("recommend_mode", VPN)
    # A configured threshold is one for all: the card's 0.5 for the queue no longer applies.
    configured = threshold_in_force(0.7, 0.9, {VPN: 0.5})
    assert configured.for_queue(VPN) == 0.7 and configured.per_queue == {}
