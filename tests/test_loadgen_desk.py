"""The desk that answers (pure): who confirms, who reassigns, when, and the human noise."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from loadgen.desk import DeskAnswer, DeskResponse, answer, to_feedback
from schemas.feedback import FeedbackOutcome
from schemas.feedback_parse import parse_feedback
from schemas.group_map import GroupMap
from schemas.taxonomy import Taxonomy

TAX = Taxonomy.load()
TIERS = {q.name: q.tier for q in TAX.queues}
QUIET = DeskResponse(noise=0.0)
N = 20_000


def _many(truth: str, landed: str | None, desk: DeskResponse, seed: int = 0) -> list[DeskAnswer]:
    rng = np.random.default_rng(seed)
    return [answer(truth=truth, landed=landed, tiers=TIERS, desk=desk, rng=rng) for _ in range(N)]


def test_a_ticket_in_its_queue_is_confirmed_after_that_tiers_pickup_time() -> None:
    replies = _many("hardware", "hardware", QUIET)  # hardware is L1
    assert {r.outcome for r in replies} == {FeedbackOutcome.CONFIRMED}
    assert {r.final_queue for r in replies} == {"hardware"}
    mean = float(np.mean([r.delay_min for r in replies]))
    assert mean == pytest.approx(QUIET.pickup_min_by_tier["L1"], rel=0.04)


def test_a_misrouted_ticket_is_moved_to_its_queue_after_pickup_and_the_penalty() -> None:
    replies = _many("cloud_devops", "servers_storage", QUIET)  # landed in an L2 queue
    assert {r.outcome for r in replies} == {FeedbackOutcome.REASSIGNED}
    assert {(r.landed, r.final_queue) for r in replies} == {("servers_storage", "cloud_devops")}
    expected = QUIET.pickup_min_by_tier["L2"] + QUIET.reassignment_penalty_min
    assert float(np.mean([r.delay_min for r in replies])) == pytest.approx(expected, rel=0.04)


def test_a_triaged_ticket_is_assigned_by_the_triage_desk() -> None:
    replies = _many("database", None, QUIET)
    assert {(r.outcome, r.final_queue, r.landed) for r in replies} == {
        (FeedbackOutcome.REASSIGNED, "database", None)
    }
    mean = float(np.mean([r.delay_min for r in replies]))
    assert mean == pytest.approx(QUIET.triage_min, rel=0.04)


def test_a_little_human_noise_sends_some_tickets_elsewhere() -> None:
    replies = _many("hardware", "hardware", DeskResponse(noise=0.05), seed=3)
    mistaken = [r for r in replies if r.mistaken]
    assert len(mistaken) / N == pytest.approx(0.05, abs=0.006)
    assert all(r.final_queue != "hardware" for r in mistaken)
    # A mistake on a right decision looks like a reassignment, as it would at a real desk.
    assert {r.outcome for r in mistaken} == {FeedbackOutcome.REASSIGNED}
    assert len({r.final_queue for r in mistaken}) == len(TIERS) - 1
    assert not any(r.mistaken for r in _many("hardware", "hardware", QUIET))


def test_lognormal_delays_keep_their_mean_and_the_seed_repeats_them() -> None:
    desk = DeskResponse(cv=2.0, noise=0.0)
    replies = _many("security_incident", "security_incident", desk, seed=5)  # L3
    delays = np.asarray([r.delay_min for r in replies])
    assert float(delays.mean()) == pytest.approx(desk.pickup_min_by_tier["L3"], rel=0.1)
    assert float(delays.std() / delays.mean()) > 1.3
    assert (
        _many("hardware", "network_vpn", desk, seed=9)[:50]
        == _many("hardware", "network_vpn", desk, seed=9)[:50]
    )


def test_answers_become_feedback_the_consumer_reads() -> None:
    rng = np.random.default_rng(1)
    at = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    group_map = GroupMap.load(None, labels=TAX.labels)
    for truth, landed in (
        ("hardware", "hardware"),
        ("cloud_devops", "servers_storage"),
        ("database", None),
    ):
        reply = answer(truth=truth, landed=landed, tiers=TIERS, desk=QUIET, rng=rng)
        event = to_feedback("INC0042", reply, occurred_at=at)
        assert (
            parse_feedback(event.model_dump_json().encode(), group_map=group_map, labels=TAX.labels)
            == event
        )
        assert event.final_queue == truth
        assert event.previous_queue == (landed if landed != truth else None)


def test_noise_outside_a_share_is_refused() -> None:
    with pytest.raises(ValueError, match="noise"):
        DeskResponse(noise=1.0)
