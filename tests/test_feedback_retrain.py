"""`expert retrain`: the challenger's data, the promotion rule, and real retrains on real vLLM.

The unit tests check the data rules (one row per ticket, the human's queue wins, the slice is
only recent feedback on tickets the champion never trained on) and the promotion rule. The
two retrains build a real challenger with the tiny recipe and score champion and challenger
through vLLM: one taught by feedback about a product the champion never saw (promoted), one
taught by a desk that filed most tickets in the wrong queue (refused, the champion stays), and
one of an expert that reads structured fields, from a decision log the routed records filled
(the challenger reads the champion's fields; tickets logged without them are left out).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from expert.card import CARD_FILENAME, CLASSIFIER_TEMPLATE, ExpertCard, TrainingInfo
from expert.dataset import read_examples
from expert.fields import InputSpec, expert_input, parse_fields
from expert.lexical import LexicalModel, lexical_dir
from expert.registry import Registry
from expert.serving import EngineConfig, Prediction, load_card
from expert.similar import SimilarTicketIndex, similar_dir
from expert.similar_build import training_tickets
from feedback.decision_log import DecisionLog, LoggedDecision, decode_decision
from feedback.promotion import ModelFigures, PromotionPolicy, decide, model_figures, paired
from feedback.retrain import RetrainError, RetrainRequest, champion_of, family_name, retrain
from feedback.retrain_data import (
    Holdout,
    RetrainDataError,
    Row,
    assemble,
    feedback_rows,
    read_original,
    settled_rows,
    write_rows,
)
from loadgen.corpus import QUEUES, generate
from loadgen.corpus import LabeledTicket as CorpusTicket
from loadgen.corpus_drift import NEW_PRODUCT_QUEUE, Drift
from schemas.feedback import Feedback, FeedbackOutcome, LabeledTicket
from schemas.routing import Disposition, RoutedTicket, RoutingDecision
from schemas.taxonomy import Taxonomy
from schemas.ticket import Priority, SourceSystem, Ticket
from tests.expert_fixtures import (
    FIELDS_INPUTS,
    FIELDS_QUEUES,
    TINY_CONFIG,
    TINY_RECIPE_CONFIG,
    VLLM_CACHE,
    fields_rows,
)

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
# The tiny recipe with one epoch: the challengers differ by what they learn from feedback,
# and the lexical model learns that at once; a shorter neural fit keeps the builds quick.
RETRAIN_RECIPE = TINY_RECIPE_CONFIG.model_copy(
    update={"scratch": TINY_CONFIG.model_copy(update={"model_id": "tiny-fused", "epochs": 1})}
)


def labeled(ticket_id: str, label: str, minutes: float, text: str = "vpn down") -> LabeledTicket:
    return LabeledTicket(
        ticket_id=ticket_id, text=text, label=label, labeled_at=T0 + timedelta(minutes=minutes)
    )


# ---------------------------------------------------------------- the data (no engine)


def test_one_row_per_ticket_and_the_latest_feedback_wins() -> None:
    rows = feedback_rows(
        [
            labeled("A", "hardware", 5),
            labeled("B", "software", 1),
            labeled("A", "network_vpn", 9),  # reassigned again later: this is the label
            labeled("A", "database", 7),
        ]
    )
    assert [(r.ticket_id, r.label) for r in rows] == [("B", "software"), ("A", "network_vpn")]
    assert {r.origin for r in rows} == {"feedback"}


def test_the_humans_queue_replaces_an_original_label_and_stays_out_of_the_slice() -> None:
    original = [
        Row("printer jam", "hardware", "INC1"),
        Row("vpn down", "software", "INC2"),  # filed wrongly in the original data
        Row("no id here", "database", None),
    ]
    feedback = [
        Row("vpn down", "network_vpn", "INC2", "feedback", T0 + timedelta(minutes=50)),
        *[
            Row(f"t{i}", "hardware", f"N{i}", "feedback", T0 + timedelta(minutes=i))
            for i in range(10)
        ],
    ]
    data = assemble(original, feedback, holdout=Holdout(share=0.3, min_rows=3))
    by_id = {r.ticket_id: r for r in data.train}
    assert by_id["INC2"].label == "network_vpn" and by_id["INC2"].origin == "feedback"
    assert sum(r.ticket_id == "INC2" for r in data.train) == 1
    assert "INC2" not in {r.ticket_id for r in data.evaluation}  # newest, but not "new"
    # The slice is the newest 30% of the 10 eligible feedback rows, never trained on.
    assert [r.ticket_id for r in data.evaluation] == ["N7", "N8", "N9"]
    assert not {r.ticket_id for r in data.evaluation} & {r.ticket_id for r in data.train}
    assert data.counts["original_rows_relabeled_by_feedback"] == 1
    assert data.counts["training_rows"] == 3 + 7  # 2 original kept + INC2 relabeled + 7 older


def test_a_feedback_weight_repeats_the_feedback_training_rows_never_the_slice() -> None:
    original = [Row(f"o{i}", "servers_storage", f"O{i}") for i in range(5)]
    feedback = [
        Row(f"t{i}", "cloud_devops", f"N{i}", "feedback", T0 + timedelta(minutes=i))
        for i in range(10)
    ]
    data = assemble(original, feedback, holdout=Holdout(share=0.2, min_rows=2), feedback_weight=3)
    assert len(data.evaluation) == 2
    assert len(data.train) == 5 + 8 * 3
    assert data.counts["feedback_weight"] == 3 and data.counts["feedback_rows_trained_on"] == 8
    assert not {r.ticket_id for r in data.evaluation} & {r.ticket_id for r in data.train}
    with pytest.raises(ValueError, match="at least 1"):
        assemble(original, feedback, holdout=Holdout(min_rows=1), feedback_weight=0)


def test_a_time_window_holdout_takes_the_feedback_near_the_newest() -> None:
    feedback = [
        Row(f"t{i}", "hardware", f"N{i}", "feedback", T0 + timedelta(hours=i)) for i in range(8)
    ]
    data = assemble([], feedback, holdout=Holdout(window=timedelta(hours=2), min_rows=1))
    assert [r.ticket_id for r in data.evaluation] == ["N5", "N6", "N7"]


def test_too_little_recent_feedback_gives_no_verdict() -> None:
    feedback = [
        Row(f"t{i}", "hardware", f"N{i}", "feedback", T0 + timedelta(minutes=i)) for i in range(20)
    ]
    with pytest.raises(RetrainDataError, match="fewer than the 50"):
        assemble([], feedback, holdout=Holdout(share=0.2, min_rows=50))


def test_original_rows_are_read_like_the_builder_reads_them_with_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"text": "printer jam", "label": "hardware", "ticket": {"id": "INC7"}},
                {"text": "no label", "label": ""},
                {"text": "vpn\n\nSent from my iPhone", "label": "network_vpn", "ticket_id": "X"},
            )
        )
    )
    rows = read_original(path, text_col="text", label_col="label")
    assert [(r.ticket_id, r.label) for r in rows] == [("INC7", "hardware"), ("X", "network_vpn")]
    assert "iPhone" not in rows[1].text
    with pytest.raises(RetrainDataError, match="missing"):
        read_original(tmp_path / "nope.jsonl", text_col="text", label_col="label")


def _field_ticket(ticket_id: str, row: dict[str, str]) -> Ticket:
    """A served ServiceNow ticket carrying a `fields_rows` row's fields where the adapter puts
    them (the site a reference object, the priority normalised)."""
    return Ticket(
        id=ticket_id,
        source=SourceSystem.SERVICENOW,
        created_at=T0,
        subject=row["text"],
        priority=Priority(f"P{row['priority'][0]}"),
        custom_fields={"site": {"display_value": row["site"], "value": f"sys-{ticket_id}"}},
    )


def _published(
    ticket: Ticket, *, queue: str, seconds: float = 0.0, offset: int = 0
) -> LoggedDecision:
    """The decision as the feedback consumer reads it off the routed topic."""
    at = T0 + timedelta(seconds=seconds)
    routed = RoutedTicket(
        ticket=ticket,
        decision=RoutingDecision(
            queue=queue, confidence=0.9, model_id="tiny-fields", engine_latency_s=0.01
        ),
        disposition=Disposition.ROUTED,
        topic=f"tickets.routed.{queue}",
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=offset,
        received_at=at,
        decided_at=at,
        published_at=at,
    )
    return decode_decision(
        topic=routed.topic, partition=0, offset=offset, value=routed.model_dump_json().encode()
    )


def test_a_field_experts_rows_read_what_its_build_and_the_worker_read(tmp_path: Path) -> None:
    rows = fields_rows(30, seed=5)
    rows[0]["site"] = ""  # blank in the data: blank for the build, blank here
    del rows[1]["priority"]
    original_path = tmp_path / "fields.jsonl"
    original_path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    rows_12 = fields_rows(12, seed=6)
    tickets = [_field_ticket(f"FB{i}", r) for i, r in enumerate(rows_12)]
    labeled_ = [
        LabeledTicket(
            ticket_id=t.id,
            text=t.text(),
            label="access",
            labeled_at=T0 + timedelta(minutes=i),
            fields=_published(t, queue="network").fields,
        )
        for i, t in enumerate(tickets)
    ]
    old = labeled("OLD1", "hardware", 99)  # decided before the log kept fields
    for inputs, text_col in (
        (FIELDS_INPUTS, "text"),
        (InputSpec(fields=FIELDS_INPUTS.fields, reads_text=False), ""),
    ):
        original = read_original(original_path, text_col=text_col, label_col="label", inputs=inputs)
        built = read_examples(
            original_path, text_col=text_col or None, label_col="label", inputs=inputs
        )
        assert [r.expert_input(inputs) for r in original] == built.texts
        settled = settled_rows([*labeled_, old], inputs=inputs)
        assert settled.without_fields == 1
        assert [r.ticket_id for r in settled.rows] == [t.id for t in tickets]
        # Exactly what the worker's engine read for each ticket (`expert_input`).
        assert [r.expert_input(inputs) for r in settled.rows] == [
            expert_input(t, inputs) for t in tickets
        ]
        # Written for the challenger's build, the rows read back as the same inputs.
        data = write_rows([*original, *settled.rows], tmp_path / "data.jsonl")
        retrain_text_col = "text" if inputs.reads_text else None
        again = read_examples(data, text_col=retrain_text_col, label_col="label", inputs=inputs)
        assert again.texts == [r.expert_input(inputs) for r in [*original, *settled.rows]]
    assert settled.rows[0].values == {
        "site": (rows_12[0]["site"],),
        "priority": ("p" + rows_12[0]["priority"][0],),
    }
    # An expert reading text learns from every settled ticket, with or without fields.
    text_only = settled_rows([*labeled_, old], inputs=InputSpec())
    assert (len(text_only.rows), text_only.without_fields) == (13, 0)
    assert text_only.rows[0].to_record().keys() == {
        "text",
        "label",
        "ticket_id",
        "origin",
        "labeled_at",
    }


def _card_only_registry(root: Path, inputs: InputSpec) -> Registry:
    """A registry whose current version is a card (no weights: nothing here serves it)."""
    folder = root / "built"
    folder.mkdir(parents=True)
    training = TrainingInfo(
        data_path=str(root / "data.jsonl"),
        data_sha256="0" * 64,
        text_col="text",
        label_col="label",
        split_seed=0,
        test_fraction=0.2,
        train_examples=8,
        test_examples=2,
        epochs=1,
        parameters=1,
        total_parameters=1,
        build_time_s=1.0,
        final_loss=0.1,
    )
    card = ExpertCard(
        kind="classifier",
        model_id="unit-fields",
        labels=FIELDS_QUEUES,
        prompt_template=CLASSIFIER_TEMPLATE,
        max_prompt_tokens=64,
        training=training,
        inputs=inputs,
    )
    (folder / CARD_FILENAME).write_text(card.to_json())
    return _registry_with(folder, root / "registry")


def test_a_field_champion_is_taken_and_what_retrain_cannot_carry_is_refused_clearly(
    tmp_path: Path,
) -> None:
    fields = _card_only_registry(tmp_path / "a", FIELDS_INPUTS)
    _, card = champion_of(fields)
    assert card.inputs == FIELDS_INPUTS
    # The retrain data keeps its own keys beside the field columns: a clash is refused.
    clash = _card_only_registry(tmp_path / "b", InputSpec(fields=parse_fields("origin,site")))
    with pytest.raises(RetrainError, match="named origin"):
        champion_of(clash)
    # The challenger reads the champion's fields: build settings naming others are refused
    # before anything is read or built.
    other = RETRAIN_RECIPE.model_copy(update={"inputs": InputSpec(fields=parse_fields("site"))})
    request = RetrainRequest(
        registry_dir=fields.root,
        taxonomy_labels=FIELDS_QUEUES,
        work_dir=tmp_path / "w",
        recipe=other,
    )
    with pytest.raises(RetrainError, match="other inputs"):
        retrain(request, [])
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- the rule (no engine)


def _answers(labels: Sequence[str]) -> list[Prediction]:
    return [
        Prediction(label=x, confidence=0.9, probabilities={x: 0.9}, latency_s=0.0) for x in labels
    ]


def _figures(name: str, truth: list[str], predicted: list[str]) -> ModelFigures:
    return model_figures(
        name=name,
        version=None,
        model_id=name,
        labels=list(QUEUES),
        truth=truth,
        predictions=_answers(predicted),
        target_precision=0.95,
        card_threshold=0.5,
    )


def test_promotion_needs_the_accuracy_margin_and_no_macro_f1_loss() -> None:
    truth = ["hardware"] * 50 + ["software"] * 50
    champion = _figures(
        "champion", truth, ["hardware"] * 50 + ["hardware"] * 10 + ["software"] * 40
    )
    better = _figures("challenger", truth, truth)
    same = _figures("challenger", truth, ["hardware"] * 50 + ["hardware"] * 10 + ["software"] * 40)
    policy = PromotionPolicy(min_accuracy_gain=0.01, max_macro_f1_drop=0.005)
    assert decide(champion, better, policy).promote
    refused = decide(champion, same, policy)
    assert not refused.promote and refused.reasons[0].startswith("NOT met: accuracy")
    # A big enough margin refuses even the better one.
    assert not decide(champion, better, PromotionPolicy(min_accuracy_gain=0.2)).promote
    assert champion.per_queue["software"].recall == 0.8
    assert champion.routed_at_card_threshold == 1.0


def test_paired_counts_rows_where_only_one_expert_is_right() -> None:
    truth = ["a"] * 10
    result = paired(truth, _answers(["a"] * 2 + ["b"] * 8), _answers(["a"] * 10))
    assert (result.challenger_only, result.champion_only) == (8, 0)
    assert result.p_value == pytest.approx(2 / 2**8, abs=1e-6)


def test_family_name_drops_a_retrains_time_stamp() -> None:
    assert family_name("20261129T101500Z-drift-expert") == "drift-expert"
    assert family_name("tiny-fused") == "tiny-fused"


# ---------------------------------------------------------------- real retrains (vLLM)


def _engine() -> EngineConfig:
    return EngineConfig(max_num_seqs=64, kv_cache_gib=1.0, cache_dir=VLLM_CACHE)


def _registry_with(champion_dir: Path, root: Path) -> Registry:
    registry = Registry(root)
    registry.add(champion_dir, version="v1-champion")
    registry.promote("v1-champion", reason="the first expert")
    return registry


def _feedback(tickets: Sequence[CorpusTicket], labels: Sequence[str]) -> list[LabeledTicket]:
    return [
        LabeledTicket(
            ticket_id=f"FB{i:05d}",
            text=t.ticket.text(),
            label=label,
            labeled_at=T0 + timedelta(seconds=i),
        )
        for i, (t, label) in enumerate(zip(tickets, labels, strict=True))
    ]


def test_a_challenger_taught_wrong_queues_is_refused_and_the_champion_keeps_serving(
    tiny_fused_dir: Path, tmp_path: Path
) -> None:
    registry = _registry_with(tiny_fused_dir, tmp_path / "registry")
    tickets = generate(600, seed=31)
    # A desk that filed the older 80% one queue off; the recent 20% (the slice) is right.
    shifted = {q: QUEUES[(i + 1) % len(QUEUES)] for i, q in enumerate(QUEUES)}
    labels = [shifted[t.queue] if i < 480 else t.queue for i, t in enumerate(tickets)]
    outcome = retrain(
        RetrainRequest(
            registry_dir=registry.root,
            taxonomy_labels=Taxonomy.load().labels,
            work_dir=tmp_path / "work",
            recipe=RETRAIN_RECIPE,
            holdout=Holdout(share=0.2, min_rows=50),
            engine=_engine(),
        ),
        _feedback(tickets, labels),
    )
    report = outcome.report
    assert report.champion.rows == report.challenger.rows == 120
    assert report.challenger.accuracy < report.champion.accuracy
    assert not report.decision.promote and report.promoted_version is None
    assert registry.current_name() == "v1-champion"
    assert [v.version for v in registry.versions()] == ["v1-champion"]
    assert len(registry.history()) == 1  # only the first promotion
    written = json.loads((outcome.run_dir / "promotion.json").read_text())
    assert written["decision"]["promote"] is False
    assert "Refused" in (outcome.run_dir / "promotion.md").read_text()
    history = [
        json.loads(x) for x in (tmp_path / "work" / "history.jsonl").read_text().splitlines()
    ]
    assert history[-1]["promote"] is False and history[-1]["champion"] == "v1-champion"
    _assert_index_holds_the_settled_tickets(outcome.challenger_dir, outcome.run_dir, labels)


def _assert_index_holds_the_settled_tickets(
    challenger_dir: Path, run_dir: Path, labels: Sequence[str]
) -> None:
    """The challenger's similar-ticket index holds the settled tickets it was built from,
    with the desk's final queue and when it was settled; never the judging slice."""
    card = load_card(challenger_dir)
    assert card.similar is not None and card.training is not None
    index = SimilarTicketIndex.load(similar_dir(challenger_dir))
    expected = training_tickets(
        run_dir / "data.jsonl",
        text_col="text",
        label_col="label",
        split_seed=card.training.split_seed,
        test_fraction=card.training.test_fraction,
    )
    settled = {t.ticket_id: t for t in expected if t.ticket_id.startswith("FB")}
    assert len(settled) > 300  # ~80% of the 480 older feedback rows (the build's training part)
    assert card.similar.settled_rows == len(settled)
    doc = json.loads((similar_dir(challenger_dir) / "similar.json").read_text("utf-8"))
    by_id = dict(zip(doc["ticket_ids"], doc["settled_at"], strict=True))
    assert set(settled) <= set(by_id)
    for ticket_id, ticket in settled.items():
        assert by_id[ticket_id] == ticket.settled_at.isoformat()  # type: ignore[union-attr]
        assert ticket.queue == labels[int(ticket_id[2:])]  # the desk's final queue
    slice_ids = {f"FB{i:05d}" for i in range(480, 600)}
    assert not slice_ids & set(by_id)
    # The index answers with the settled queue: a settled ticket finds itself first.
    some = next(iter(settled.values()))
    lexical = LexicalModel.load(lexical_dir(challenger_dir))
    (found,) = index.query(lexical.vectors([some.text]), k=5)
    itself = next(t for t in found if t.ticket_id == some.ticket_id)
    assert itself.similarity > 0.99 and itself.similarity == found[0].similarity
    assert itself.queue == some.queue and itself.settled_at == some.settled_at


def _log_feedback(store: Path, tickets: Sequence[CorpusTicket]) -> None:
    """What the feedback consumer would have stored: each decision, then the desk's queue."""
    log = DecisionLog(store, durable=False)
    log.open()
    try:
        decisions = [
            LoggedDecision(
                ticket_id=f"FB{i:05d}",
                queue="software",
                confidence=0.6,
                disposition=Disposition.ROUTED,
                triage_reason=None,
                model_id="tiny-fused@v1-champion",
                adapter_id=None,
                decided_at=T0 + timedelta(seconds=i),
                source=SourceSystem.SERVICENOW,
                subject=t.ticket.subject,
                body=t.ticket.body,
                topic="tickets.routed.software",
                partition=0,
                offset=i,
            )
            for i, t in enumerate(tickets)
        ]
        log.add_decisions(decisions, {("tickets.routed.software", 0): len(tickets)}, now=0.0)
        log.add_feedback(
            [
                Feedback(
                    ticket_id=f"FB{i:05d}",
                    final_queue=t.queue,
                    previous_queue=None if t.queue == "software" else "software",
                    outcome=(
                        FeedbackOutcome.CONFIRMED
                        if t.queue == "software"
                        else FeedbackOutcome.REASSIGNED
                    ),
                    occurred_at=T0 + timedelta(minutes=5, seconds=i),
                )
                for i, t in enumerate(tickets)
            ],
            now=1.0,
        )
    finally:
        log.close()


def test_feedback_about_a_new_product_makes_a_challenger_that_is_promoted(
    tiny_fused_dir: Path, tmp_path: Path
) -> None:
    """Through the command: the decision log as the feedback consumer leaves it."""
    from ticket_router import app

    registry = _registry_with(tiny_fused_dir, tmp_path / "registry")
    tickets = generate(400, seed=32, drift=Drift(new_product=0.5))
    assert sum(t.queue == NEW_PRODUCT_QUEUE for t in tickets) > 160
    store = tmp_path / "decisions.sqlite3"
    _log_feedback(store, tickets)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(RETRAIN_RECIPE.model_dump(mode="json")))
    result = CliRunner().invoke(
        app,
        [
            "expert",
            "retrain",
            "--registry",
            str(registry.root),
            "--store",
            str(store),
            "--work-dir",
            str(tmp_path / "work"),
            "--config",
            str(config),
            "--holdout-share",
            "0.25",
        ],
        env={"ROUTER_ENGINE__CACHE_DIR": str(VLLM_CACHE), "ROUTER_ENGINE__MAX_NUM_SEQS": "64"},
    )
    assert result.exit_code == 0, result.output
    current = registry.current()
    assert current is not None and current.version != "v1-champion"
    report = json.loads((tmp_path / "work" / current.version / "promotion.json").read_text())
    assert report["promoted_version"] == current.version
    assert report["champion"]["rows"] == report["challenger"]["rows"] == 100
    gain = report["challenger"]["accuracy"] - report["champion"]["accuracy"]
    assert gain >= 0.01
    product = report["per_queue_changes"][NEW_PRODUCT_QUEUE]
    assert product["recall_challenger"] > product["recall_champion"]
    last = registry.history()[-1]
    assert last["version"] == current.version and last["previous"] == "v1-champion"
    assert last["figures"]["accuracy"]["challenger"] == report["challenger"]["accuracy"]
    # The challenger's card names the data it was built from, for the next retrain.
    data = json.loads((current.path / "expert.json").read_text())["training"]["data_path"]
    assert Path(data) == (tmp_path / "work" / current.version / "data.jsonl").resolve()


@pytest.mark.integration
def test_a_fields_expert_keeps_its_learning_loop(tiny_fields_dir: Path, tmp_path: Path) -> None:
    """The site decides the queue; the desk moved site-network's tickets to the access team.
    The decision log is filled from the routed records as published, a few decisions from
    before it kept fields among them: the challenger reads the champion's fields, learns the
    move from them, and is promoted; the old decisions are left out and counted."""
    champion_card = load_card(tiny_fields_dir)
    assert champion_card.inputs == FIELDS_INPUTS
    registry = _registry_with(tiny_fields_dir, tmp_path / "registry")
    rows = fields_rows(400, seed=41)
    moved = {"site-network": "access"}
    tickets = [_field_ticket(f"FB{i:05d}", row) for i, row in enumerate(rows)]
    truth = [moved.get(row["site"], row["label"]) for row in rows]
    assert sum(q == "access" for q in truth) > 200
    decisions = [
        _published(t, queue=row["label"], seconds=i, offset=i)
        for i, (t, row) in enumerate(zip(tickets, rows, strict=True))
    ]
    old = [replace(d, ticket_id=f"OLD{i}", fields=None) for i, d in enumerate(decisions[:20])]
    store = tmp_path / "decisions.sqlite3"
    log = DecisionLog(store, durable=False)
    log.open()
    try:
        log.add_decisions([*old, *decisions], {("tickets.routed", 0): len(decisions)}, now=0.0)
        settled = [*zip(old, truth, strict=False), *zip(decisions, truth, strict=True)]
        log.add_feedback(
            [
                Feedback(
                    ticket_id=d.ticket_id,
                    final_queue=queue,
                    outcome=FeedbackOutcome.RESOLVED,
                    occurred_at=T0 + timedelta(minutes=5, seconds=n),
                )
                for n, (d, queue) in enumerate(settled)
            ],
            now=1.0,
        )
        feedback = list(log.labeled_tickets())
    finally:
        log.close()
    outcome = retrain(
        RetrainRequest(
            registry_dir=registry.root,
            taxonomy_labels=FIELDS_QUEUES,
            work_dir=tmp_path / "work",
            recipe=RETRAIN_RECIPE,
            holdout=Holdout(share=0.25, min_rows=50),
            engine=_engine(),
            feedback_weight=4,
        ),
        feedback,
    )
    report = outcome.report
    assert report.counts["feedback_tickets_without_fields"] == 20
    assert report.counts["feedback_rows"] == 400
    assert report.champion.rows == report.challenger.rows == 100
    challenger_card = load_card(outcome.challenger_dir)
    assert challenger_card.inputs == champion_card.inputs
    written = [json.loads(x) for x in (outcome.run_dir / "data.jsonl").read_text().splitlines()]
    from_feedback = [r for r in written if r["origin"] == "feedback"]
    assert from_feedback and all(r["site"] and r["priority"] for r in from_feedback)
    # The champion routes site-network to network; the challenger learned the move.
    access = report.per_queue_changes["access"]
    assert access["recall_challenger"] > access["recall_champion"]
    assert report.challenger.accuracy >= report.champion.accuracy + 0.1
    assert report.decision.promote and report.promoted_version == outcome.version
    assert registry.current_name() == outcome.version
