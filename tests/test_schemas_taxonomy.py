"""Taxonomy loading: the packaged default is valid, and broken files say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.taxonomy import Taxonomy, TaxonomyError, is_valid_topic_name

QUEUE_A = "  - {name: hardware, tier: L1, description: Laptops., topic: tickets.routed.hardware}\n"
QUEUE_B = "  - {name: software, tier: L1, description: Installs., topic: tickets.routed.software}\n"


def test_packaged_taxonomy_loads_with_distinct_topics() -> None:
    taxonomy = Taxonomy.load()
    assert len(taxonomy.labels) == len(set(taxonomy.labels)) >= 2
    assert len(taxonomy.all_topics()) == len(set(taxonomy.all_topics()))
    assert all(is_valid_topic_name(topic) for topic in taxonomy.all_topics())


def test_duplicate_queue_name_is_reported_by_name() -> None:
    text = "queues:\n" + QUEUE_A + QUEUE_A.replace("tickets.routed.hardware", "t.other")
    with pytest.raises(
        TaxonomyError, match=r"queue names must be unique; repeated: \['hardware'\]"
    ):
        Taxonomy.from_yaml_text(text, source="tax.yaml")


def test_duplicate_topic_is_reported_by_topic() -> None:
    text = (
        "queues:\n"
        + QUEUE_A
        + QUEUE_B.replace("tickets.routed.software", "tickets.routed.hardware")
    )
    with pytest.raises(TaxonomyError, match=r"repeated: \['tickets.routed.hardware'\]"):
        Taxonomy.from_yaml_text(text, source="tax.yaml")


def test_bad_topic_name_names_the_queue_field() -> None:
    text = "queues:\n" + QUEUE_A + QUEUE_B.replace("tickets.routed.software", "bad topic!")
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.from_yaml_text(text, source="tax.yaml")
    assert str(info.value).startswith("tax.yaml: invalid taxonomy: queues.1.topic:")


def test_bad_control_topic_names_its_field() -> None:
    text = "topics: {triage: 'no/slashes'}\nqueues:\n" + QUEUE_A + QUEUE_B
    with pytest.raises(TaxonomyError, match=r"topics\.triage: String should match pattern"):
        Taxonomy.from_yaml_text(text)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TaxonomyError, match=rf"{missing}: cannot read taxonomy: No such file"):
        Taxonomy.load(missing)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("queues: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping with 'queues', got list"),
        ("queues:\n" + QUEUE_A, "queues: Tuple should have at least 2 items"),
    ],
)
def test_malformed_taxonomy_text_is_explained(text: str, message: str) -> None:
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.from_yaml_text(text)


def test_topic_suffix_renames_every_topic_and_keeps_the_queues() -> None:
    from schemas.taxonomy import Taxonomy

    base = Taxonomy.load()
    run = base.with_topic_suffix(".run-1")
    assert run.labels == base.labels
    assert run.all_topics() == [f"{t}.run-1" for t in base.all_topics()]
