"""The feedback consumer on the real broker judges shadow and recommend decisions: a shadow
decision is right when the desk's final queue equals it."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.routing import Disposition, RoutedTicket, TriageReason
from schemas.taxonomy import QueueMode, Taxonomy
from tests.test_feedback_consumer import (
    eventually,
    feedback,
    publish_decisions,
    publish_feedback,
    routed,
    running,
    sample,
    settings_for,
)
from worker.broker import TopicLayout, create_layout


@pytest.fixture
def layout(bootstrap: str, taxonomy_file: Path) -> Taxonomy:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=2))
    return tax


def shadowed(
    tax: Taxonomy, ticket_id: str, queue: str, *, would_route: bool
) -> list[tuple[str, bytes]]:
    """What the worker publishes for a ticket predicted for a queue in shadow mode: the
    triage record (shadow_mode) and the shadow decision record."""
    _, value = routed(tax, ticket_id, queue, model="expert-a", triage=True)
    triage = RoutedTicket.model_validate_json(value).model_copy(
        update={"triage_reason": TriageReason.SHADOW_MODE, "mode": QueueMode.SHADOW}
    )
    shadow = triage.model_copy(
        update={
            "topic": tax.topics.shadow,
            "disposition": Disposition.SHADOW,
            "triage_reason": None if would_route else TriageReason.LOW_CONFIDENCE,
        }
    )
    return [
        (tax.topics.triage, triage.model_dump_json().encode()),
        (tax.topics.shadow, shadow.model_dump_json().encode()),
    ]


def recommended(tax: Taxonomy, ticket_id: str, queue: str) -> tuple[str, bytes]:
    _, value = routed(tax, ticket_id, queue, model="expert-a", triage=True)
    record = RoutedTicket.model_validate_json(value).model_copy(
        update={"triage_reason": TriageReason.RECOMMEND_MODE, "mode": QueueMode.RECOMMEND}
    )
    return tax.topics.triage, record.model_dump_json().encode()


async def test_shadow_and_recommend_decisions_are_judged_by_the_desks_final_queue(
    bootstrap: str, layout: Taxonomy, taxonomy_file: Path, unique: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    settings = settings_for(bootstrap, taxonomy_file, unique, tmp_path / "log.sqlite3")
    publish_decisions(
        bootstrap,
        [
            *shadowed(layout, "S1", "network_vpn", would_route=True),
            *shadowed(layout, "S2", "network_vpn", would_route=True),
            *shadowed(layout, "S3", "network_vpn", would_route=False),
            recommended(layout, "R1", "hardware"),
        ],
    )
    final = {"S1": "network_vpn", "S2": "database", "S3": "network_vpn", "R1": "hardware"}
    publish_feedback(bootstrap, layout, [feedback(t, q) for t, q in final.items()])
    async with running(settings, registry) as fc:

        def mode_verdict(mode: str, queue: str, verdict: str) -> float:
            return sample(
                registry,
                "router_feedback_mode_verdicts_total",
                mode=mode,
                queue=queue,
                model="expert-a",
                verdict=verdict,
            )

        await eventually(
            lambda: (
                sample(registry, "router_live_judged_decisions", window="1h") == 0
                and sum(
                    sample(registry, "router_feedback_triage_outcomes_total", queue=q, guess=g)
                    for q in ("network_vpn", "database", "hardware")
                    for g in ("right", "wrong")
                )
                == 4
            ),
            what="4 triaged tickets judged",
        )
        assert mode_verdict("shadow", "network_vpn", "confirmed") == 1
        assert mode_verdict("shadow", "network_vpn", "reassigned") == 1  # S2
        assert mode_verdict("recommend", "hardware", "confirmed") == 1
        # S3 (right too) is not among them: autoroute would have triaged it, so it does not
        # count for the queue's would-be precision.
        for ticket in ("S1", "S2", "S3"):
            logged = fc.store.lookup(ticket)
            assert logged is not None and logged.disposition is Disposition.SHADOW
        # Nothing was routed: the router's own routed precision is not touched.
        assert (
            sample(
                registry,
                "router_feedback_verdicts_total",
                queue="network_vpn",
                model="expert-a",
                verdict="confirmed",
            )
            == 0
        )
