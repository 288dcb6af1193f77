"""`ticket-router route`: the worker's decision for typed text, files and stdin payloads.

Real parts: the tiny expert in the in-process engine (`batch_expert`), the command run as a
child process with `--model`, and the worker's own streaming engine (`streaming_expert`) to
check that `route` answers what the worker would. A stub engine beside them checks the
output shapes quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest

from expert.card import ExpertCard
from expert.engine import BatchExpert, StreamingExpert
from expert.fields import expert_input
from expert.registry import Registry
from expert.serving import Prediction
from loadgen.corpus import generate
from loadgen.itsm_formats import PayloadFormat, encode, ticket_id
from schemas.parse import TicketParseError, parse_ticket
from schemas.taxonomy import Taxonomy
from schemas.ticket import Ticket
from tests.expert_fixtures import VLLM_CACHE
from worker.route import (
    DEAD_LETTER,
    ExpertVersion,
    Item,
    Threshold,
    item_from_payload,
    item_from_text,
    items_from_jsonl,
    route_items,
    threshold_in_force,
)

REPO = Path(__file__).resolve().parents[1]
TAX = Taxonomy.load()
SAMPLES = sorted(
    entry.name
    for entry in resources.files("schemas").joinpath("samples").iterdir()
    if entry.name.endswith(".json")
)
BAD = b'{"number": "INC1", "short_description": 5}'


def _sample(name: str) -> bytes:
    return resources.files("schemas").joinpath("samples", name).read_bytes()


def _payloads(n: int) -> list[bytes]:
    """Corpus tickets rendered in every ITSM format in turn."""
    formats = list(PayloadFormat)
    out = []
    for i, labeled in enumerate(generate(n, seed=21)):
        fmt = formats[i % len(formats)]
        ticket = labeled.ticket.model_copy(update={"id": ticket_id(fmt, run=7, seq=i + 1)})
        out.append(encode(ticket, fmt))
    return out


def _cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[bytes]:
    """`ticket-router route ARGS` as a user runs it, from `cwd` (its .state/ goes there)."""
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [sys.executable, "-m", "ticket_router", "route", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ROUTER_ENGINE__CACHE_DIR": str(VLLM_CACHE),
            **(env or {}),
        },
        timeout=240,
        check=False,
    )


VLLM_LINE = "Initializing a V1 LLM engine"


class StubEngine:
    """Answers every text with the same distribution (a fast stand-in for shape checks)."""

    def __init__(self, card: ExpertCard, top: str, confidence: float) -> None:
        self._card, self.top, self.confidence = card, top, confidence
        self.texts: list[str] = []

    @property
    def card(self) -> ExpertCard:
        return self._card

    def classify_batch(self, tickets: Sequence[Ticket | str]) -> list[Prediction]:
        texts = [t if isinstance(t, str) else expert_input(t, self.card.inputs) for t in tickets]
        self.texts += texts
        rest = (1 - self.confidence) / (len(TAX.labels) - 1)
        probs = {q: self.confidence if q == self.top else rest for q in TAX.labels}
        return [Prediction(self.top, self.confidence, probs, 0.01) for _ in texts]


# ---------------------------------------------------------------------------- inputs


def test_typed_text_becomes_a_ticket_whose_first_line_is_the_subject() -> None:
    item = item_from_text("  VPN drops\nsince the update, error 809\n")
    assert item.ticket is not None and item.error is None
    assert (item.ticket.subject, item.ticket.body) == ("VPN drops", "since the update, error 809")
    with pytest.raises(ValueError, match="empty"):
        item_from_text(" \n ")


@pytest.mark.parametrize("name", SAMPLES)
def test_every_itsm_sample_parses_as_the_worker_parses_it(name: str) -> None:
    item = item_from_payload(_sample(name), where=name, source_format=None)
    assert item.ticket == parse_ticket(_sample(name))


def test_a_bad_line_carries_the_workers_dead_letter_reason_and_blank_lines_are_skipped() -> None:
    lines = [_sample("zendesk-ticket.json").replace(b"\n", b"") + b"\n", b"\n", BAD + b"\r\n"]
    items = list(items_from_jsonl(lines, name="t.jsonl", source_format=None))
    assert [i.where for i in items] == ["t.jsonl:1", "t.jsonl:3"]
    with pytest.raises(TicketParseError) as worker_error:
        parse_ticket(BAD)
    error = items[1].error
    assert error is not None
    assert (error.reason, error.message) == (worker_error.value.reason, worker_error.value.message)


def test_threshold_in_force_says_where_it_comes_from() -> None:
    assert threshold_in_force(0.7, 0.4) == Threshold(0.7, "configured")
    assert threshold_in_force(None, 0.4) == Threshold(0.4, "expert card")
    assert threshold_in_force(None, None) == Threshold(0.5, "default")


# ---------------------------------------------------------------------------- decisions


def test_outcomes_follow_the_threshold_and_name_the_expert(batch_expert: BatchExpert) -> None:
    stub = StubEngine(batch_expert.card, "network_vpn", 0.6)
    items = [item_from_text("vpn down"), Item(where="x", error=TicketParseError(*_bad()))]
    version = ExpertVersion("m-1", "a-1", None)
    low = route_items(
        items, engine=stub, version=version, taxonomy=TAX, threshold=Threshold(0.7, "configured")
    )
    high = route_items(
        items, engine=stub, version=version, taxonomy=TAX, threshold=Threshold(0.5, "default")
    )
    assert [o.disposition for o in low] == ["triage", DEAD_LETTER]
    assert [o.disposition for o in high] == ["routed", DEAD_LETTER]
    assert (low[0].topic, high[0].topic, high[1].topic) == (
        TAX.topics.triage,
        TAX.topic_for("network_vpn"),
        TAX.topics.dead_letter,
    )
    out = low[0].as_json()
    assert out["triage_reason"] == "low_confidence" and out["threshold_source"] == "configured"
    assert (out["model_id"], out["adapter_id"]) == ("m-1", "a-1")
    assert [t["queue"] for t in out["top3"]][0] == "network_vpn" and len(out["top3"]) == 3
    assert "triage -> " in low[0].render() and "adapter a-1" in low[0].render()
    assert "dead-letter (invalid)" in low[1].render()
    assert stub.texts == ["vpn down", "vpn down"]  # dead letters never reach the engine


def _bad() -> tuple[object, str]:
    with pytest.raises(TicketParseError) as caught:
        parse_ticket(BAD)
    return caught.value.reason, caught.value.message


def test_the_real_expert_answers_every_sample_format(batch_expert: BatchExpert) -> None:
    items = [item_from_payload(_sample(n), where=n, source_format=None) for n in SAMPLES]
    outcomes = route_items(
        items,
        engine=batch_expert,
        version=ExpertVersion(batch_expert.card.model_id, None, None),
        taxonomy=TAX,
        threshold=Threshold(0.5, "default"),
    )
    for outcome in outcomes:
        assert outcome.decision is not None and outcome.decision.queue in TAX.labels
        top = outcome.top(3)
        assert top[0][0] == outcome.decision.queue
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
        routed = outcome.decision.confidence >= 0.5
        assert outcome.disposition == ("routed" if routed else "triage")


# ---------------------------------------------------------------------------- the command


async def test_route_file_decides_as_the_workers_engine_with_the_workers_settings(
    tiny_expert_dir: Path, streaming_expert: StreamingExpert, tmp_path: Path
) -> None:
    payloads = _payloads(24)
    stdin = b"\n".join([*payloads[:12], BAD, *payloads[12:]]) + b"\n"
    # The threshold comes from the worker's environment, as it would for the worker.
    result = _cli(
        "--json", "--file", "-", "--model", str(tiny_expert_dir),
        stdin=stdin,
        env={"ROUTER_ROUTING__CONFIDENCE_THRESHOLD": "0.3"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()[-2000:]  # one dead letter
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(lines) == 25
    dead = lines[12]
    assert (dead["input"], dead["disposition"], dead["topic"]) == (
        "stdin:13",
        DEAD_LETTER,
        TAX.topics.dead_letter,
    )
    reason, message = _bad()
    assert (dead["reason"], dead["error"]) == (reason, message)
    decided = [line for line in lines if line["disposition"] != DEAD_LETTER]
    for line, payload in zip(decided, payloads, strict=True):
        ticket = parse_ticket(payload)
        assert line["ticket_id"] == ticket.id
        assert (line["threshold"], line["threshold_source"]) == (0.3, "configured")
        assert line["model_id"] == "tiny-expert" and line["adapter_id"] is None
        assert line["disposition"] == ("routed" if line["confidence"] >= 0.3 else "triage")
        # What the worker's engine says for the same ticket text.
        worker = await streaming_expert.classify(ticket.text(), request_id=f"r-{ticket.id}")
        for queue, p in worker.probabilities.items():
            assert line["probabilities"][queue] == pytest.approx(p, abs=0.03), (ticket.id, queue)
    assert "dead-lettered" in result.stderr.decode()


@pytest.fixture(scope="module")
def registry_v1(tiny_expert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose current version is v1, the tiny expert."""
    root = tmp_path_factory.mktemp("registry-v1")
    registry = Registry(root)
    registry.add(tiny_expert_dir, version="v1")
    registry.promote("v1", reason="first expert")
    return root


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the commands below are run from: their .state/logs/ is theirs alone."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def text_with_model_over_registry(
    tiny_expert_dir: Path, registry_v1: Path, user_dir: Path
) -> subprocess.CompletedProcess[bytes]:
    """`route --model DIR TEXT` where a registry is configured too: one engine start for the
    tests below (what it prints, that it is quiet, that --model wins over the registry)."""
    return _cli(
        "--model", str(tiny_expert_dir), "VPN drops every 10 minutes\nerror 809",
        env={"ROUTER_ENGINE__REGISTRY_DIR": str(registry_v1)}, cwd=user_dir,
    )  # fmt: skip


@pytest.mark.integration  # the command as a child process
def test_route_text_prints_queue_top_three_decision_and_expert(
    text_with_model_over_registry: subprocess.CompletedProcess[bytes],
) -> None:
    result = text_with_model_over_registry
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode()
    for label in ("queue", "top 3", "decision", "expert      tiny-expert, adapter none"):
        assert label in out, out
    assert "started in" in result.stderr.decode()


@pytest.mark.integration  # the command as a child process
def test_route_shows_its_decision_and_keeps_vllm_in_the_log(
    text_with_model_over_registry: subprocess.CompletedProcess[bytes], user_dir: Path
) -> None:
    """Quiet by default: the command's own lines on the terminal, vLLM's in a log file."""
    result = text_with_model_over_registry
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    terminal = stdout.splitlines() + stderr.splitlines()
    for line in terminal:
        assert not line.startswith(("INFO", "WARNING", "(MainProcess", "(EngineCore")), line
        assert "LOAD REPORT" not in line and "Loading safetensors" not in line, line
        assert VLLM_LINE not in line, line
    logs = list((user_dir / ".state" / "logs").glob("route-*.log"))
    assert len(logs) == 1, logs
    assert stderr.splitlines()[-1] == f"engine and library output: .state/logs/{logs[0].name}"
    assert VLLM_LINE in logs[0].read_text()
    assert len(terminal) < 15, terminal


@pytest.mark.integration  # the command as a child process
def test_route_serves_the_registrys_current_version_as_the_worker_does(
    registry_v1: Path,
    text_with_model_over_registry: subprocess.CompletedProcess[bytes],
    user_dir: Path,
    tmp_path: Path,
) -> None:
    empty = _cli("VPN drops", env={"ROUTER_ENGINE__REGISTRY_DIR": str(tmp_path)})
    assert empty.returncode == 4
    assert "has no current version yet" in empty.stderr.decode()
    logs_before = sorted((user_dir / ".state" / "logs").glob("*.log"))
    # With --verbose (same engine start): vLLM's output on the terminal, no log file.
    result = _cli(
        "--verbose", "VPN drops every 10 minutes\nerror 809",
        env={"ROUTER_ENGINE__REGISTRY_DIR": str(registry_v1)}, cwd=user_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert "expert      tiny-expert@v1, adapter none" in result.stdout.decode()
    assert VLLM_LINE in result.stderr.decode()
    assert sorted((user_dir / ".state" / "logs").glob("*.log")) == logs_before
    # --model wins over the configured registry.
    chosen = text_with_model_over_registry
    assert "expert      tiny-expert, adapter none" in chosen.stdout.decode()


@pytest.mark.integration  # the command as a child process
def test_malformed_payload_prints_the_dead_letter_reason_and_exits_1() -> None:
    reason, message = _bad()
    for args in ((), ("-",)):
        result = _cli(*args, stdin=BAD)
        assert result.returncode == 1
        assert f"dead-letter ({reason})" in result.stderr.decode()
        assert str(message) in result.stderr.decode()
        assert result.stdout == b""


@pytest.mark.integration  # the command as a child process
def test_usage_and_engine_errors_have_the_workers_exit_codes(tmp_path: Path) -> None:
    assert _cli("   ").returncode == 2
    assert _cli(stdin=b"").returncode == 2
    missing = _cli("--model", str(tmp_path / "nothing"), "vpn down")
    assert missing.returncode == 4
    assert "expert directory does not exist" in missing.stderr.decode()


def test_expert_version_of_a_served_adapter_names_base_and_adapter(
    tiny_expert_dir: Path, tmp_path: Path
) -> None:
    from expert.card import AdapterInfo
    from expert.serving import EngineConfig, load_card
    from worker.route import expert_version

    base = load_card(tiny_expert_dir)
    adapter = base.model_copy(
        update={
            "model_id": "tiny-lora-x",
            "base_model": str(tiny_expert_dir),
            "adapter": AdapterInfo(rank=8, alpha=16, target_modules=("q_proj",)),
        }
    )
    config = EngineConfig(model_dir=tiny_expert_dir, adapter_dir=tmp_path)
    assert expert_version(config, adapter) == ExpertVersion(base.model_id, "tiny-lora-x", None)
    # An adapter folder given as the model: the engine serves it on the base its card names.
    alone = EngineConfig(model_dir=tmp_path)
    assert expert_version(alone, adapter) == ExpertVersion(
        str(tiny_expert_dir), "tiny-lora-x", None
    )
    plain = EngineConfig(model_dir=tiny_expert_dir)
    assert expert_version(plain, base) == ExpertVersion(base.model_id, None, None)


def test_created_at_of_typed_text_is_now() -> None:
    before = datetime.now(UTC)
    item = item_from_text("printer jam")
    assert item.ticket is not None and item.ticket.created_at >= before
