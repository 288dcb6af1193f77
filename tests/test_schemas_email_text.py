"""Email noise: what the expert reads drops quoted replies and signatures, conservatively.

Examples per convention, texts that must stay untouched, the properties every output has
(idempotent, never blank, never longer), and the pipeline's use of it: the engine gets the
cleaned text, the published ticket keeps its raw body.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from loadgen.corpus import generate
from schemas.email_text import strip_email_noise
from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy
from schemas.ticket import Ticket
from tests.fakes import FakeEngine, InMemoryPublisher, InMemorySource
from worker.kafka_io import InboundRecord
from worker.metrics import Metrics
from worker.pipeline import Pipeline, PipelineConfig

CLEANED = [
    pytest.param(
        "Hi,\nMy VPN drops every 10 minutes.\nThanks\nAnna Schmidt\nSenior Analyst | Finance\n"
        "Phone: +49 30 1234 567",
        "Hi,\nMy VPN drops every 10 minutes.",
        id="closing-then-signature",
    ),
    pytest.param(
        "VPN still broken.\n\nOn Mon, Jan 5, 2026 at 10:02 AM Anna Schmidt <anna@example.com> "
        "wrote:\n> Is it fixed now?\n> Thanks",
        "VPN still broken.",
        id="gmail-attribution-and-quote",
    ),
    pytest.param(
        "VPN still broken.\n\nOn Mon, Jan 5, 2026 at 10:02 AM Anna Schmidt <anna@example.com>\n"
        "wrote:\n\n> Is it fixed now?",
        "VPN still broken.",
        id="attribution-wrapped-over-two-lines",
    ),
    pytest.param(
        "Am 05.01.2026 um 10:02 schrieb Anna Schmidt <anna@example.com>:\n> Drucker?\n"
        "Der Drucker druckt nicht.",
        "Der Drucker druckt nicht.",
        id="german-attribution",
    ),
    pytest.param(
        "My answers are inline.\n\nOn 5 Jan 2026, Bob wrote:\n> Which printer?\nPRN-3F-01\n"
        "> Since when?\nSince Monday",
        "My answers are inline.\n\nPRN-3F-01\nSince Monday",
        id="inline-replies-keep-the-answers",
    ),
    pytest.param(
        "Still broken\n\n________________________________\nFrom: IT Service Desk <it@example.com>"
        "\nSent: Monday, January 5, 2026 10:02\nTo: Anna\nSubject: RE: INC0012345\n\nWe fixed it.",
        "Still broken",
        id="outlook-reply-header",
    ),
    pytest.param(
        "printer offline again\n\n-----Original Message-----\nFrom: Service Desk\n"
        "> Your ticket has been received.",
        "printer offline again",
        id="original-message",
    ),
    pytest.param(
        "The VPN fails with error 809.\n\n##- Please type your reply above this line -##\n\n"
        "Your request (4821) has been updated.",
        "The VPN fails with error 809.",
        id="zendesk-reply-above-this-line",
    ),
    pytest.param(
        "See below\n\n---------- Forwarded message ---------\nFrom: Monitoring "
        "<mon@example.com>\nDate: Mon, Jan 5, 2026\nSubject: disk full\nTo: it@example.com\n\n"
        "/var on srv-app-12 is 95% full",
        "See below\n\n/var on srv-app-12 is 95% full",
        id="forward-keeps-the-forwarded-text",
    ),
    pytest.param(
        "FYI\nFrom: Bob <b@example.com>\nSent: Monday\nTo: IT\nSubject: FW: printer\n\n"
        "printer jam on PRN-3F-01",
        "FYI\n\nprinter jam on PRN-3F-01",
        id="outlook-forward-keeps-the-forwarded-text",
    ),
    pytest.param("printer jam\n\nSent from my iPhone", "printer jam", id="mobile-footer"),
    pytest.param(
        "Laptop does not boot.\nRef:MSG0012345", "Laptop does not boot.", id="servicenow-watermark"
    ),
    pytest.param(
        "The printer is broken.\nKofi Patel\nThis e-mail may contain confidential information. "
        "If you are not the intended recipient, please notify the sender and delete it.",
        "The printer is broken.\nKofi Patel",
        id="disclaimer",
    ),
    pytest.param(
        "Disk full on srv-app-12\n-- \nBob\nIT Ops", "Disk full on srv-app-12", id="dashdash"
    ),
    pytest.param(
        "SAP posts fail with error 503.\nBen Rossi | Sales EMEA | m: +44 7700 900415",
        "SAP posts fail with error 503.",
        id="bare-signature-with-a-phone",
    ),
]

UNCHANGED = [
    pytest.param("VPN drops every 10 minutes since the update.", id="plain"),
    pytest.param("On startup the client wrote:\nerror 809", id="sentence-ending-in-wrote"),
    pytest.param("Pasted log:\n> select * from orders\nORA-01555", id="quote-without-attribution"),
    pytest.param(
        "Hi,\nprinter broken\nThanks\nAlso the VPN fails since Monday.", id="text-after-thanks"
    ),
    pytest.param(
        "-----Original Message-----\nFrom: Anna\nSent: Monday\nTo: IT\n\nVPN fails since Monday",
        id="only-a-quote-is-kept-whole",
    ),
    pytest.param("Please call me at +49 30 1234 567 about the VPN.", id="phone-in-a-sentence"),
    pytest.param(
        "A phishing mail says it is confidential and I am the intended recipient of a prize.",
        id="disclaimer-words-in-a-sentence-on-the-first-line",
    ),
    pytest.param("##- Please type your reply above this line -##\n", id="zendesk-marker-alone"),
    pytest.param("", id="empty"),
    pytest.param("Thanks", id="only-a-closing"),
]


@pytest.mark.parametrize(("raw", "expected"), CLEANED)
def test_email_noise_is_dropped(raw: str, expected: str) -> None:
    assert strip_email_noise(raw) == expected


@pytest.mark.parametrize("raw", UNCHANGED)
def test_text_without_email_noise_is_returned_byte_for_byte(raw: str) -> None:
    assert strip_email_noise(raw) == raw


# Fragments that trip every rule, mixed with ordinary sentences and arbitrary text.
_FRAGMENTS = [
    "VPN fails with error 809.",
    "printer jam",
    "Hi,",
    "Thanks",
    "Regards,",
    "Anna Schmidt",
    "Senior Analyst | Finance",
    "Phone: +49 30 1234 567",
    "-- ",
    "--",
    "> quoted line",
    ">",
    "On Mon, Jan 5, 2026 at 10:02 AM Anna <anna@example.com> wrote:",
    "On Mon, Jan 5, 2026 at 10:02 AM Anna <anna@example.com>",
    "wrote:",
    "-----Original Message-----",
    "________________________________",
    "From: IT <it@example.com>",
    "Sent: Monday",
    "To: Anna",
    "Subject: RE: INC1",
    "Subject: FW: INC1",
    "---------- Forwarded message ---------",
    "Begin forwarded message:",
    "Sent from my iPhone",
    "Ref:MSG0001",
    "This e-mail is confidential. If you are not the intended recipient, delete it.",
    "##- Please type your reply above this line -##",
    "",
    "   ",
]
_LINES = st.sampled_from(_FRAGMENTS) | st.text(max_size=40).map(lambda s: s.replace("\n", " "))
EMAILISH = st.lists(_LINES, max_size=25).map("\n".join)
ANY_TEXT = EMAILISH | st.text(max_size=400)


@settings(max_examples=400, deadline=None)
@given(ANY_TEXT)
def test_stripping_is_idempotent(text: str) -> None:
    once = strip_email_noise(text)
    assert strip_email_noise(once) == once


@settings(max_examples=400, deadline=None)
@given(ANY_TEXT)
def test_stripping_never_empties_a_text_and_never_lengthens_it(text: str) -> None:
    out = strip_email_noise(text)
    assert len(out) <= len(text)
    if text.strip():
        assert out.strip()
    if text:
        assert out


def test_a_long_hostile_body_is_cleaned_quickly_enough_to_finish() -> None:
    """Thousands of markers must not make the rules loop per marker (the worker's hot path)."""
    body = "\n".join(["VPN down.", *(["On 5 Jan 2026, Bob wrote:", "> q", "answer"] * 1500)])
    out = strip_email_noise(body[:16_000])
    assert out.startswith("VPN down.") and ">" not in out


def test_ticket_text_is_cleaned_and_the_ticket_keeps_its_raw_body() -> None:
    body = "VPN fails with error 809.\nThanks\nAnna Schmidt\n\nSent from my iPhone"
    ticket = Ticket(id="T1", subject="vpn", body=body, created_at=datetime.now(UTC))
    assert ticket.body == body
    assert ticket.text() == "vpn\nVPN fails with error 809."


def test_the_synthetic_corpus_has_email_noise_and_the_expert_text_does_not() -> None:
    tickets = generate(2000, seed=0)
    bodies = "\n".join(t.ticket.body for t in tickets)
    texts = "\n".join(t.ticket.text() for t in tickets)
    for marker in ("-----Original Message-----", "Sent from my iPhone", "intended recipient"):
        assert marker in bodies, marker
        assert marker not in texts, marker
    # The corpus record's text (what builders train on) is the cleaned text.
    assert all(t.to_record()["text"] == t.ticket.text() for t in tickets[:50])


async def test_pipeline_sends_cleaned_text_to_the_engine_and_publishes_the_raw_body() -> None:
    tax = Taxonomy.load()
    body = "The VPN drops.\n\nOn Mon, Jan 5, 2026 at 10:02 AM IT <it@example.com> wrote:\n> hi"
    payload = json.dumps(
        {
            "id": "T1",
            "source": "canonical",
            "subject": "vpn",
            "body": body,
            "created_at": datetime.now(UTC).isoformat(),
        }
    ).encode()
    seen: list[str] = []

    def decide(text: str) -> tuple[str, float]:
        seen.append(text)
        return ("network_vpn", 0.9)

    record = InboundRecord(
        topic=tax.topics.inbound,
        partition=0,
        offset=0,
        key=None,
        value=payload,
        timestamp_ms=None,
        headers=(),
    )
    publisher = InMemoryPublisher()
    pipeline = Pipeline(
        config=PipelineConfig(commit_interval_s=0.01, poll_timeout_s=0.001),
        taxonomy=tax,
        engine=FakeEngine(tax.labels, decide),
        publisher=publisher,
        metrics=Metrics(CollectorRegistry()),
    )
    pipeline.on_assigned([(tax.topics.inbound, 0)])
    await pipeline.run(InMemorySource(records=[record]), stop_after=1)
    assert seen == ["vpn\nThe VPN drops."]
    (_topic, _key, value, _headers) = publisher.sent[0]
    assert RoutedTicket.model_validate_json(value).ticket.body == body
