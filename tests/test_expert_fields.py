"""Structured fields as expert input: addresses on tickets from every ITSM adapter, the one
expert input at build and serve time, the lexical model's field block, the incident-log
preparation. Fast: no vLLM here (the served fields expert is in test_expert_engine.py)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from expert.card import ExpertCard
from expert.dataset import read_examples
from expert.fields import (
    InputSpec,
    canonical_value,
    expert_input,
    parse_fields,
    row_input,
    split_input,
    ticket_values,
)
from expert.incidents import prepare
from expert.lexical import LexicalModel, LexicalSettings, _vectorizers
from schemas.parse import parse_ticket
from schemas.ticket import Ticket

SAMPLES = resources.files("schemas") / "samples"
INCIDENT_FIELDS = "category,subcategory,contact_type,location,cmdb_ci,opened_by,priority,impact"


def _sample(name: str) -> Ticket:
    return parse_ticket((SAMPLES / name).read_bytes())


def _values(ticket: Ticket, option: str) -> dict[str, tuple[str, ...]]:
    return {spec.column: ticket_values(ticket, spec) for spec in parse_fields(option)}


# ------------------------------------------------------------------ field addresses


def test_bare_columns_map_to_the_ticket_field_of_that_name_else_to_custom_fields() -> None:
    specs = parse_fields("priority, cmdb_ci ,Kategorie=custom_fields.category,hints=category_hints")
    assert [(s.column, s.address) for s in specs] == [
        ("priority", "priority"),
        ("cmdb_ci", "custom_fields.cmdb_ci"),
        ("Kategorie", "custom_fields.category"),
        ("hints", "category_hints"),
    ]


@pytest.mark.parametrize("option", ["priority,,impact", "x=body", "x=custom_fields.", "a:b"])
def test_malformed_field_options_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match="field"):
        parse_fields(option)


def test_two_fields_with_one_column_name_are_refused() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        InputSpec(fields=parse_fields("category,category=custom_fields.subcategory"))


def test_servicenow_incident_fields_resolve_from_declared_extra_and_reference_fields() -> None:
    ticket = _sample("servicenow-incident.json")
    assert _values(ticket, INCIDENT_FIELDS) == {
        "category": ("network",),
        "subcategory": ("vpn",),
        "contact_type": ("self-service",),
        "location": (),  # "" in the payload: missing
        "cmdb_ci": ("b0c25d1bc0a800090168be1bfcdcd759",),  # a reference without display value
        "opened_by": ("62826bf03710200044e0bfc8bcbe5df1",),
        "priority": ("p2",),
        "impact": ("medium",),
    }


def test_a_servicenow_reference_reads_as_its_display_value() -> None:
    ticket = _sample("servicenow-connector.json")
    assert _values(ticket, "location,category,subcategory,urgency") == {
        "location": ("berlin hq",),
        "category": ("hardware",),
        "subcategory": ("monitor",),
        "urgency": ("medium",),
    }


def test_jira_issue_type_components_and_hints_resolve() -> None:
    ticket = _sample("jira-issue-created.json")
    assert _values(ticket, "issuetype,components,category_hints,priority") == {
        "issuetype": ("incident",),
        "components": ("file shares",),
        "category_hints": ("incident", "file shares", "onboarding", "finance"),
        "priority": ("p3",),
    }


def test_zendesk_type_and_canonical_custom_fields_resolve() -> None:
    assert _values(_sample("zendesk-ticket.json"), "type,priority,impact") == {
        "type": ("incident",),
        "priority": ("p2",),
        "impact": (),
    }
    canonical = _sample("canonical-ticket.json")
    assert _values(canonical, "mailbox,category_hints,urgency,source") == {
        "mailbox": ("it-support@acme.example",),
        "category_hints": ("collaboration",),
        "urgency": ("medium",),
        "source": ("canonical",),
    }


@pytest.mark.parametrize(
    ("address", "export", "served"),
    [
        ("priority", "3 - Moderate", "P3"),
        ("priority", "Highest", "P1"),
        ("impact", "2 - Medium", "medium"),
        ("urgency", "1", "high"),
        ("custom_fields.location", "  Location   143 ", {"display_value": "Location 143"}),
    ],
)
def test_an_export_value_and_the_served_value_canonicalise_alike(
    address: str, export: str, served: object
) -> None:
    assert canonical_value(address, export) == canonical_value(address, served) is not None


# -------------------------------------------------------------------- expert input


def test_without_fields_the_expert_input_is_the_ticket_text() -> None:
    for name in ("servicenow-incident.json", "jira-issue-created.json", "zendesk-ticket.json"):
        ticket = _sample(name)
        assert expert_input(ticket, InputSpec()) == ticket.text()
    card = ExpertCard(
        model_id="old", labels=("a", "b"), label_tokens={"a": " a", "b": " b"}, max_prompt_tokens=64
    )
    assert card.inputs == InputSpec()  # a card written before fields existed reads text only


def test_the_expert_input_puts_one_line_per_field_before_the_text_and_splits_back() -> None:
    ticket = _sample("jira-issue-created.json")
    inputs = InputSpec(fields=parse_fields("issuetype,category_hints,impact"))
    text = expert_input(ticket, inputs)
    assert text.splitlines()[:3] == [
        "issuetype: incident",
        "category_hints: incident | file shares | onboarding | finance",
        "impact:",
    ]
    values, rest = split_input(text, columns=inputs.columns)
    assert values == [
        ("incident",),
        ("incident", "file shares", "onboarding", "finance"),
        (),
    ]
    assert rest == ticket.text()
    fields_only = InputSpec(fields=inputs.fields, reads_text=False)
    assert expert_input(ticket, fields_only) == "\n".join(text.splitlines()[:3])


def test_a_ticket_body_cannot_pose_as_a_field_line() -> None:
    ticket = Ticket(
        id="T-1",
        created_at=datetime(2026, 11, 27, tzinfo=UTC),
        subject="category: payroll",
        body="category: payroll",
    )
    inputs = InputSpec(fields=parse_fields("category"))
    values, text = split_input(expert_input(ticket, inputs), columns=inputs.columns)
    assert values == [()]
    assert text == ticket.text()


def _servicenow_payload() -> dict[str, object]:
    return {
        "number": "INC0000047",
        "short_description": "Printer on floor 3 jams",
        "description": "Paper jam again, error 13.2",
        "opened_at": "2016-02-29 04:40:00",
        "priority": "3",
        "impact": "2",
        "category": "Category 40",
        "subcategory": "Subcategory 215",
        "u_symptom": "Symptom 471",
        "contact_type": "Phone",
        "location": {"value": "9f1c", "display_value": "Location 165"},
        "cmdb_ci": "",
        "opened_by": {"value": "77ab", "display_value": "Opened by  397"},
        "assignment_group": {"value": "12cd", "display_value": "Group 70"},
    }


def test_a_build_row_and_the_served_ticket_give_the_same_expert_input(tmp_path: Path) -> None:
    """The same incident as an export row (build, eval) and as a ServiceNow payload (worker,
    route): one expert input, text and fields both."""
    option = (
        "category,subcategory,u_symptom,contact_type,location,cmdb_ci,opened_by,priority,impact"
    )
    inputs = InputSpec(fields=parse_fields(option))
    row = {
        "number": "INC0000047",
        "text": "Printer on floor 3 jams\nPaper jam again, error 13.2",
        "category": "Category 40",
        "subcategory": "Subcategory 215",
        "u_symptom": "Symptom 471",
        "contact_type": "Phone",
        "location": "Location 165",
        "cmdb_ci": "",
        "opened_by": "Opened by  397",
        "priority": "3 - Moderate",
        "impact": "2 - Medium",
        "label": "Group 24",
    }
    data = tmp_path / "rows.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    built = read_examples(data, text_col="text", label_col="label", inputs=inputs).texts[0]
    served = expert_input(parse_ticket(json.dumps(_servicenow_payload()).encode()), inputs)
    assert built == served
    assert built.startswith("category: category 40\nsubcategory: subcategory 215\n")
    assert "cmdb_ci:\n" in built and "priority: p3\nimpact: medium\n" in built
    no_text = InputSpec(fields=inputs.fields, reads_text=False)
    assert read_examples(data, text_col=None, label_col="label", inputs=no_text).texts[0] == (
        expert_input(parse_ticket(json.dumps(_servicenow_payload()).encode()), no_text)
    )
    assert row_input(row, InputSpec(), text="as is") == "as is"


def test_a_named_field_no_row_has_is_a_data_error(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"text": "vpn down", "label": "a"}) + "\n", "utf-8")
    with pytest.raises(ValueError, match="cmdb_ci"):
        read_examples(data, inputs=InputSpec(fields=parse_fields("cmdb_ci")))
    with pytest.raises(ValueError, match="--fields"):
        read_examples(data, text_col=None)


# ------------------------------------------------------------------- lexical model

QUEUES = ("network", "hardware", "access")
NOISE = ["please help", "it does not work", "urgent issue", "see attached", "any update?"]


def _field_rows(n: int, *, seed: int) -> tuple[list[str], list[str], InputSpec]:
    """Texts that say nothing; the `site` field decides the queue."""
    rng = np.random.RandomState(seed)
    inputs = InputSpec(fields=parse_fields("site,priority"))
    texts, labels = [], []
    for _ in range(n):
        queue = QUEUES[rng.randint(len(QUEUES))]
        row = {"site": f"site-{queue}", "priority": str(rng.randint(1, 5))}
        texts.append(row_input(row, inputs, text=NOISE[rng.randint(len(NOISE))]))
        labels.append(queue)
    return texts, labels, inputs


def test_the_lexical_model_learns_a_field_that_decides_the_label(tmp_path: Path) -> None:
    texts, labels, inputs = _field_rows(300, seed=1)
    model = LexicalModel.fit(texts, labels, labels=QUEUES, inputs=inputs)
    test_texts, test_labels, _ = _field_rows(100, seed=2)
    predicted = [QUEUES[i] for i in model.scores(test_texts).argmax(axis=1)]
    assert np.mean(np.asarray(predicted) == np.asarray(test_labels)) > 0.95
    text_only = LexicalModel.fit(
        [split_input(t, columns=inputs.columns)[1] for t in texts], labels, labels=QUEUES
    )
    plain = [split_input(t, columns=inputs.columns)[1] for t in test_texts]
    blind = [QUEUES[i] for i in text_only.scores(plain).argmax(axis=1)]
    assert np.mean(np.asarray(blind) == np.asarray(test_labels)) < 0.7  # the text cannot tell

    model.save(tmp_path / "lexical")
    assert sorted(p.name for p in (tmp_path / "lexical").iterdir()) == [
        "lexical.json",
        "lexical.safetensors",
    ]
    loaded = LexicalModel.load(tmp_path / "lexical")
    assert loaded.columns == inputs.columns
    np.testing.assert_array_equal(loaded.scores(test_texts), model.scores(test_texts))


def test_a_fields_only_lexical_model_round_trips(tmp_path: Path) -> None:
    texts, labels, inputs = _field_rows(200, seed=3)
    fields_only = InputSpec(fields=inputs.fields, reads_text=False)
    texts = [t.rsplit("\n", 1)[0] for t in texts]  # the field lines alone
    model = LexicalModel.fit(texts, labels, labels=QUEUES, inputs=fields_only)
    assert model.features == len({t for text in texts for t in text.splitlines()})
    model.save(tmp_path / "lexical")
    loaded = LexicalModel.load(tmp_path / "lexical")
    assert not loaded.reads_text
    np.testing.assert_array_equal(loaded.scores(texts), model.scores(texts))
    assert (model.scores(texts).argmax(axis=1) == [QUEUES.index(x) for x in labels]).all()


def test_without_fields_the_lexical_features_and_files_are_those_of_text_alone(
    tmp_path: Path,
) -> None:
    """No field named: the same two TF-IDF blocks (fitted, then served), the same weights,
    no new keys on disk."""
    from scipy.sparse import hstack
    from sklearn.svm import LinearSVC

    texts, labels, inputs = _field_rows(120, seed=4)
    texts = [t.replace("\n", " ") for t in texts]  # field-like words, read as plain text
    settings = LexicalSettings()
    model = LexicalModel.fit(texts, labels, labels=QUEUES, settings=settings)
    word, char = _vectorizers(settings)
    fitted = hstack([word.fit_transform(texts), char.fit_transform(texts)]).tocsr()
    reference = hstack([word.transform(texts), char.transform(texts)]).tocsr()
    ours = model.vectors(texts)
    assert ours.shape == reference.shape
    assert (ours != reference).nnz == 0
    assert ours.dtype == reference.dtype
    svm = LinearSVC(C=settings.c, max_iter=5000).fit(fitted, labels)
    expected = reference @ svm.coef_.T.astype(np.float32) + svm.intercept_.astype(np.float32)
    expected = expected[:, [list(svm.classes_).index(q) for q in QUEUES]]
    # liblinear shuffles with a fresh seed per fit: the same optimum to its tolerance
    np.testing.assert_allclose(model.scores(texts), expected, atol=1e-3)
    model.save(tmp_path / "lexical")
    doc = json.loads((tmp_path / "lexical" / "lexical.json").read_text("utf-8"))
    assert not {"fields", "reads_text", "field_vocabulary"} & set(doc)


# ------------------------------------------------------------------ incident log


def test_prepare_incidents_keeps_the_first_events_fields_and_the_last_events_group(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.csv"
    header = ["number", "category", "priority", "assignment_group"]
    events = [
        ["INC1", "Category 1", "3 - Moderate", "Group 1"],
        ["INC2", "?", "2 - High", "Group 2"],
        ["INC1", "Category 9", "1 - Critical", "Group 3"],
        ["INC3", "Category 1", "3 - Moderate", "?"],
    ]
    with log.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *events])
    done = prepare(log, tmp_path / "out" / "incidents.csv", fields=("category", "priority"))
    with (tmp_path / "out" / "incidents.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [
        {
            "number": "INC1",
            "category": "Category 1",
            "priority": "3 - Moderate",
            "first_assignment_group": "Group 1",
            "assignment_group": "Group 3",
        },
        {
            "number": "INC2",
            "category": "",
            "priority": "2 - High",
            "first_assignment_group": "Group 2",
            "assignment_group": "Group 2",
        },
    ]
    assert (done.events, done.incidents, done.dropped, done.groups) == (4, 2, 1, 2)
    assert done.first_equals_final == 0.5
