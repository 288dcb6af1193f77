"""The decision log (SQLite): decisions by ticket id, the join, held feedback, windows, labels,
and the field values each decision keeps (also in a file written before they were kept)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from expert.fields import MULTI_VALUED, TICKET_SCALARS, FieldSpec, ticket_values
from feedback import decision_log
from feedback.decision_log import DecisionLog, DecisionLogError, LoggedDecision, decode_decision
from schemas.feedback import Feedback, FeedbackOutcome, LabeledTicket
from schemas.routing import Disposition, RoutedTicket, RoutingDecision, TriageReason
from schemas.ticket import Level, Priority, SourceSystem, Ticket

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
NOW = T0.timestamp() + 3600


def decision(
    ticket_id: str,
    queue: str | None = "network_vpn",
    *,
    model: str = "expert-a",
    triage: bool = False,
    minutes: int = 0,
    body: str = "GlobalProtect says gateway unreachable.",
    offset: int = 0,
) -> LoggedDecision:
    return LoggedDecision(
        ticket_id=ticket_id,
        queue=queue,
        confidence=0.4 if triage else 0.93,
        disposition=Disposition.TRIAGE if triage else Disposition.ROUTED,
        triage_reason=TriageReason.LOW_CONFIDENCE if triage else None,
        model_id=model,
        adapter_id=None,
        decided_at=T0 + timedelta(minutes=minutes),
        source=SourceSystem.SERVICENOW,
        subject=f"VPN down ({ticket_id})",
        body=body,
        topic="tickets.routed.network-vpn",
        partition=0,
        offset=offset,
    )


def feedback(ticket_id: str, final_queue: str = "network_vpn", *, minutes: int = 30) -> Feedback:
    return Feedback(
        ticket_id=ticket_id,
        final_queue=final_queue,
        outcome=FeedbackOutcome.RESOLVED,
        occurred_at=T0 + timedelta(minutes=minutes),
        source=SourceSystem.SERVICENOW,
    )


@pytest.fixture
def store(tmp_path: Path) -> DecisionLog:
    log = DecisionLog(tmp_path / "log" / "decisions.sqlite3", durable=False)
    log.open()
    yield log  # type: ignore[misc]
    log.close()


def test_decisions_are_looked_up_by_ticket_id_and_the_latest_wins(store: DecisionLog) -> None:
    store.add_decisions([decision("INC1", model="expert-a")], {("t", 0): 1}, now=NOW)
    store.add_decisions([decision("INC1", "database", model="expert-b", minutes=5)], {}, now=NOW)
    store.add_decisions([decision("INC1", "hardware", model="stale", minutes=1)], {}, now=NOW)
    found = store.lookup("INC1")
    assert found is not None
    assert (found.queue, found.model_id, found.decided_at) == (
        "database",
        "expert-b",
        T0 + timedelta(minutes=5),
    )
    assert store.lookup("INC2") is None
    assert store.count_decisions() == 1


def test_the_log_and_its_positions_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "decisions.sqlite3"
    first = DecisionLog(path)
    first.open()
    first.add_decisions([decision("INC1"), decision("INC2")], {("t", 0): 7, ("t", 1): 3}, now=NOW)
    first.close()
    again = DecisionLog(path)
    again.open()
    try:
        assert again.positions() == {("t", 0): 7, ("t", 1): 3}
        assert again.lookup("INC2") == decision("INC2")
    finally:
        again.close()


def test_a_second_writer_is_refused_but_a_reader_may_look_up(store: DecisionLog) -> None:
    store.add_decisions([decision("INC1")], {}, now=NOW)
    with pytest.raises(DecisionLogError, match="another feedback consumer"):
        DecisionLog(store.path).open()
    reader = DecisionLog(store.path, read_only=True)
    reader.open()
    try:
        assert reader.lookup("INC1") is not None
    finally:
        reader.close()


def test_feedback_joins_its_decision_once_and_later_feedback_revises_the_label(
    store: DecisionLog,
) -> None:
    store.add_decisions([decision("INC1", "network_vpn")], {}, now=NOW)
    (first,) = store.add_feedback([feedback("INC1", "network_vpn")], now=NOW)
    assert first.judgement is not None
    assert (first.judgement.first, first.judgement.correct) == (True, True)
    (again,) = store.add_feedback([feedback("INC1", "network_vpn")], now=NOW + 1)  # redelivered
    assert again.judgement is not None and not again.judgement.first
    (moved,) = store.add_feedback([feedback("INC1", "database", minutes=90)], now=NOW + 2)
    assert moved.judgement is not None and moved.judgement.correct is False
    (old,) = store.add_feedback([feedback("INC1", "hardware", minutes=10)], now=NOW + 3)
    assert old.judgement is None  # older than the label: ignored
    (label,) = store.labeled_tickets()
    assert (label.ticket_id, label.label, label.decided_by) == ("INC1", "database", "expert-a")
    stats = store.window(judged_since=NOW - 1)
    assert (stats.routed, stats.routed_correct) == (1, 0)


def test_feedback_before_its_decision_is_held_and_joined_when_it_arrives(
    store: DecisionLog,
) -> None:
    (held,) = store.add_feedback([feedback("INC9", "database")], now=NOW)
    assert held.held and held.judgement is None
    assert store.pending_count() == 1
    (joined,) = store.add_decisions([decision("INC9", "servers_storage")], {}, now=NOW + 42)
    assert joined.first and joined.correct is False
    assert joined.held_s == pytest.approx(42)
    assert store.pending_count() == 0


def test_held_feedback_is_given_up_after_the_wait_and_beyond_the_bound(store: DecisionLog) -> None:
    store.add_feedback([feedback(f"INC{i}") for i in range(5)], now=NOW)
    store.add_feedback([feedback("LATE")], now=NOW + 100)
    expired = store.expire_held(received_before=NOW + 50, max_held=10, now=NOW + 100)
    assert sorted(f.ticket_id for f in expired) == [f"INC{i}" for i in range(5)]
    assert store.pending_count() == 1
    store.add_feedback([feedback(f"NEW{i}") for i in range(3)], now=NOW + 101)
    over = store.expire_held(received_before=NOW, max_held=2, now=NOW + 102)
    assert [f.ticket_id for f in over] == ["LATE", "NEW0"]  # the oldest beyond the bound
    # Without a decision there is no text: no labeled ticket for retraining.
    assert list(store.labeled_tickets()) == []


def test_windows_count_routed_and_triaged_judgements_since_a_time(store: DecisionLog) -> None:
    store.add_decisions(
        [
            decision("A", "network_vpn"),
            decision("B", "network_vpn"),
            decision("C", "database", triage=True),
            decision("D", None, triage=True),
        ],
        {},
        now=NOW,
    )
    store.add_feedback([feedback("A"), feedback("B", "hardware")], now=NOW - 7200)
    store.add_feedback([feedback("C", "database"), feedback("D", "hardware")], now=NOW)
    recent = store.window(judged_since=NOW - 3600)
    assert (recent.routed, recent.triaged, recent.triaged_guess_right) == (0, 2, 1)
    day = store.window(judged_since=NOW - 86400)
    assert (day.routed, day.routed_correct) == (2, 1)


def test_labeled_tickets_carry_the_text_the_expert_read(store: DecisionLog) -> None:
    body = (
        "Please help.\n\nOn Mon, Nov 23, 2026 at 9:00 AM Bob <bob@x.example> wrote:\n> old thread"
    )
    store.add_decisions([decision("INC1", body=body)], {}, now=NOW)
    store.add_feedback([feedback("INC1", "database")], now=NOW)
    store.prune_decisions(decided_before=NOW)  # labels keep their own copy of the text
    assert store.lookup("INC1") is None
    (label,) = store.labeled_tickets()
    assert label.text.startswith("VPN down (INC1)\nPlease help.")
    assert "old thread" not in label.text
    assert label.label == "database"
    assert list(store.labeled_tickets(since=T0 + timedelta(hours=1))) == []


def test_routed_records_decode_and_others_are_refused() -> None:
    routed = RoutedTicket(
        ticket=Ticket(id="ITSM-42", subject="Finance drive", created_at=T0),
        decision=RoutingDecision(
            queue="access_request",
            confidence=0.91,
            probabilities={"access_request": 0.91, "hardware": 0.09},
            model_id="expert-b",
            engine_latency_s=0.02,
        ),
        disposition=Disposition.ROUTED,
        topic="tickets.routed.access-request",
        source_topic="tickets.inbound",
        source_partition=0,
        source_offset=3,
        received_at=T0,
        decided_at=T0,
        published_at=T0,
    )
    got = decode_decision(topic="t", partition=1, offset=9, value=routed.model_dump_json().encode())
    assert (got.ticket_id, got.queue, got.model_id, got.offset) == (
        "ITSM-42",
        "access_request",
        "expert-b",
        9,
    )
    with pytest.raises(ValueError):
        decode_decision(topic="t", partition=1, offset=9, value=b'{"ticket": 1}')


# ---------------------------------------------------------------- structured field values


def _routed(ticket: Ticket) -> bytes:
    return (
        RoutedTicket(
            ticket=ticket,
            decision=RoutingDecision(
                queue="network_vpn", confidence=0.9, model_id="expert-f", engine_latency_s=0.01
            ),
            disposition=Disposition.ROUTED,
            topic="tickets.routed.network-vpn",
            source_topic="tickets.inbound",
            source_partition=0,
            source_offset=1,
            received_at=T0,
            decided_at=T0,
            published_at=T0,
        )
        .model_dump_json()
        .encode()
    )


def _field_ticket() -> Ticket:
    """A ticket with every kind of field value an adapter passes: scalars the `Ticket`
    normalised, hints, a reference object, a list, text needing canonical form, empties."""
    return Ticket(
        id="INC77",
        source=SourceSystem.SERVICENOW,
        created_at=T0,
        subject="VPN down",
        body="GlobalProtect says gateway unreachable.",
        requester="Bob Example",
        priority=Priority.P2,
        impact=Level.HIGH,
        category_hints=("Network", "  VPN  | remote "),
        custom_fields={
            "cmdb_ci": {"display_value": "GlobalProtect Gateway", "link": "https://x/1"},
            "location": "Berlin   HQ",
            "watch_list": ["a@x.example", "b@x.example", ""],
            "u_empty": "",
            "u_none": None,
            "reopen_count": 2,
            "active": True,
        },
    )


def _every_address(ticket: Ticket) -> list[FieldSpec]:
    addresses = [*TICKET_SCALARS, *MULTI_VALUED, "custom_fields.u_missing"]
    addresses += [f"custom_fields.{key}" for key in ticket.custom_fields]
    return [FieldSpec(address=a, column=f"c{i}") for i, a in enumerate(addresses)]


def test_a_decision_keeps_the_field_values_the_expert_read_through_reopen_and_pruning(
    tmp_path: Path,
) -> None:
    ticket = _field_ticket()
    got = decode_decision(topic="t", partition=0, offset=5, value=_routed(ticket))
    assert got.fields is not None
    # Every address an expert can name reads here exactly what `expert_input` read on the
    # served ticket (`ticket_values`); a field the ticket lacks is absent, not blank.
    for spec in _every_address(ticket):
        assert got.fields.get(spec.address, ()) == ticket_values(ticket, spec), spec.address
    assert "custom_fields.u_empty" not in got.fields
    assert got.fields["custom_fields.cmdb_ci"] == ("globalprotect gateway",)
    assert got.fields["category_hints"] == ("network", "vpn / remote")
    path = tmp_path / "decisions.sqlite3"
    writer = DecisionLog(path, durable=False)
    writer.open()
    writer.add_decisions([got], {("t", 0): 6}, now=NOW)
    writer.add_feedback([feedback("INC77", "network_vpn")], now=NOW)
    writer.prune_decisions(decided_before=NOW)  # the label keeps its own copy
    writer.add_decisions([decision("INC78")], {}, now=NOW)  # a text-only decision: none kept
    writer.close()
    reader = DecisionLog(path, read_only=True)
    reader.open()
    try:
        (label,) = reader.labeled_tickets()
        assert label.fields == got.fields
        found = reader.lookup("INC78")
        assert found is not None and found.fields is None
    finally:
        reader.close()


def test_a_labeled_ticket_line_without_fields_still_loads() -> None:
    line = (
        '{"ticket_id": "INC1", "text": "vpn down", "label": "network_vpn",'
        ' "labeled_at": "2026-11-27T09:00:00+00:00", "decided_by": "expert-a"}'
    )
    assert LabeledTicket.model_validate_json(line).fields is None
    with_fields = LabeledTicket.model_validate_json(line[:-1] + ', "fields": {"priority": ["p2"]}}')
    assert with_fields.fields == {"priority": ("p2",)}


def test_a_log_written_before_field_values_were_kept_opens_and_reads_them_as_not_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    old_schema = "\n".join(
        line for line in decision_log._SCHEMA.splitlines() if line.strip() != "fields TEXT,"
    )
    assert old_schema != decision_log._SCHEMA
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (decision_log.SCHEMA_VERSION,))
    db.execute(
        "INSERT INTO decisions VALUES ('OLD1', 'network_vpn', 0.9, 'routed', NULL, 'expert-a',"
        " NULL, ?, 'servicenow', 'VPN down', 'no tunnel', 't', 0, 0)",
        (T0.timestamp(),),
    )
    db.commit()
    db.close()
    reader = DecisionLog(path, read_only=True)  # beside an older consumer still writing it
    reader.open()
    try:
        old = reader.lookup("OLD1")
        assert old is not None and old.fields is None and old.body == "no tunnel"
    finally:
        reader.close()
    writer = DecisionLog(path, durable=False)
    writer.open()
    try:
        writer.add_feedback([feedback("OLD1", "database")], now=NOW)
        new = decode_decision(topic="t", partition=0, offset=1, value=_routed(_field_ticket()))
        writer.add_decisions([new], {("t", 0): 2}, now=NOW)
        writer.add_feedback([feedback("INC77", "network_vpn")], now=NOW)
        labels = {t.ticket_id: t for t in writer.labeled_tickets()}
        assert labels["OLD1"].fields is None and labels["OLD1"].label == "database"
        assert labels["INC77"].fields == new.fields
    finally:
        writer.close()
