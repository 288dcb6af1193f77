"""The worker end to end: real broker, real vLLM serving the tiny expert, real Kafka clients.

Every inbound record must be accounted for on the output topics (routed, triage or
dead-letter), with two workers in a group and in exactly-once mode. Kills, restarts and the
SIGTERM drain are the chaos scenarios' (tests/test_bench_chaos.py).

The workers run in this process (`started_worker`, the runner the command uses) and serve
the session's streaming engine instead of starting one each; the worker as a process of its
own, started, killed and restarted, is the chaos tests' and the hostile-input test's.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from expert.engine import StreamingExpert
from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy
from tests.kafka_helpers import OutputReader, committed, produce
from tests.worker_process import output_topics as _outputs
from tests.worker_process import sources as _sources
from tests.worker_process import ticket_payload as _ticket
from worker import runner
from worker.broker import TopicLayout, create_layout
from worker.config import Settings
from worker.runner import started_worker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 3
BAD = [b"\x00\xff\xfe", b"{not json", b'{"id": "x", "subject": 5}', b"[]", b""]


@pytest.fixture
def layout(bootstrap: str, taxonomy_file: Path) -> Taxonomy:
    tax = Taxonomy.load(taxonomy_file)
    create_layout(bootstrap, TopicLayout.from_taxonomy(tax, partitions=PARTITIONS))
    return tax


@pytest.fixture
def shared_engine(
    streaming_expert: StreamingExpert, monkeypatch: pytest.MonkeyPatch
) -> StreamingExpert:
    """`started_worker` given the session's engine (the tiny expert, started once; its
    fixture stops it) in place of the one it would start from the settings."""

    async def owned_by_the_fixture() -> None:
        return None

    monkeypatch.setattr(streaming_expert, "start", owned_by_the_fixture)
    monkeypatch.setattr(streaming_expert, "shutdown", owned_by_the_fixture)
    monkeypatch.setattr(runner, "_engine", lambda *_args: streaming_expert)
    return streaming_expert


async def test_worker_routes_every_ticket_and_dead_letters_bad_payloads(
    bootstrap: str,
    taxonomy_file: Path,
    layout: Taxonomy,
    tiny_expert_dir: Path,
    shared_engine: StreamingExpert,
    unique: str,
    tmp_path: Path,
) -> None:
    n = 60
    produce(bootstrap, layout.topics.inbound, [_ticket(i) for i in range(n)] + BAD)
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{unique}"},
        engine={"model_dir": tiny_expert_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        metrics={"port": 0},
        routing={"confidence_threshold": 0.6},
        shutdown_grace_s=10,
    )
    registry = CollectorRegistry()
    async with started_worker(settings, registry=registry) as worker:
        await worker.pipeline.run(worker.source, stop_after=n + len(BAD))
        probe = f"http://127.0.0.1:{worker.health_port}"
        health = await asyncio.to_thread(urllib.request.urlopen, f"{probe}/healthz", timeout=5)
        assert health.status == 200
        metrics_text = (
            await asyncio.to_thread(urllib.request.urlopen, f"{probe}/metrics", timeout=5)
        ).read()
        assert b"router_tickets_routed_total" in metrics_text
    reader = OutputReader(bootstrap, _outputs(layout))
    out = reader.read_until(lambda rs: len(_sources(rs)) >= n + len(BAD), timeout_s=60)
    reader.close()
    # Nothing missing: every inbound record has exactly one output.
    assert len(_sources(out)) == n + len(BAD) == len(out)
    dead = [r for r in out if r.topic == layout.topics.dead_letter]
    assert sorted(r.value for r in dead) == sorted(BAD)
    assert all(r.headers["__connect.errors.exception.message"] for r in dead)
    for r in out:
        if r.topic == layout.topics.dead_letter:
            continue
        routed = RoutedTicket.model_validate_json(r.value)
        assert routed.decision.queue in layout.labels
        assert abs(sum(routed.decision.probabilities.values()) - 1) < 1e-3
        low = routed.decision.confidence < 0.6
        assert (r.topic == layout.topics.triage) == low
        if not low:
            assert r.topic == layout.topic_for(routed.decision.queue)
        assert r.key == routed.ticket.id.encode()
    # Offsets committed to the end of every partition, only after the outputs were written.
    # (Computed from the outputs: the embedded broker's ListOffsets reports a wrong high
    # watermark for batched records, so end offsets are not asked of it.)
    ends: dict[int, int] = {}
    for _t, p, o in _sources(out):
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(bootstrap, f"g-{unique}", layout.topics.inbound, PARTITIONS) == ends
    get = registry.get_sample_value
    routed_total = sum(get("router_tickets_routed_total", {"queue": q}) or 0 for q in layout.labels)
    triaged = sum(
        get("router_tickets_triaged_total", {"reason": r}) or 0
        for r in ("low_confidence", "deadline_exceeded")
    )
    dead_total = sum(
        get("router_tickets_dead_lettered_total", {"reason": r}) or 0
        for r in ("undecodable", "unknown_format", "invalid")
    )
    assert (routed_total, triaged, dead_total) == (
        n - sum(r.topic == layout.topics.triage for r in out),
        sum(r.topic == layout.topics.triage for r in out),
        len(BAD),
    )
    assert get("router_inference_duration_seconds_count") == n


async def test_worker_routes_with_a_fused_expert_at_its_cards_threshold(
    bootstrap: str,
    taxonomy_file: Path,
    layout: Taxonomy,
    tiny_fused_dir: Path,
    unique: str,
) -> None:
    """The default build's expert (neural + lexical, calibrated): every ticket is decided by
    the fusion, and without a configured threshold the card's per-queue ones split
    routed/triage."""
    from expert.serving import load_card

    card = load_card(tiny_fused_dir)
    assert card.fusion is not None and card.routing is not None
    threshold = card.routing.confidence_threshold
    expected = threshold if threshold is not None else 0.5
    n = 40
    produce(bootstrap, layout.topics.inbound, [_ticket(i) for i in range(n)])
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{unique}"},
        engine={"model_dir": tiny_fused_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        shutdown_grace_s=10,
    )
    async with started_worker(settings) as worker:
        assert worker.pipeline.confidence_threshold == expected
        await worker.pipeline.run(worker.source, stop_after=n)
    reader = OutputReader(bootstrap, _outputs(layout))
    out = reader.read_until(lambda rs: len(_sources(rs)) >= n, timeout_s=60)
    reader.close()
    assert len(_sources(out)) == n == len(out)
    for r in out:
        routed = RoutedTicket.model_validate_json(r.value)
        assert routed.decision.model_id == card.model_id
        assert abs(sum(routed.decision.probabilities.values()) - 1) < 1e-3
        # The card's per-queue thresholds apply (the global one for a queue without its own).
        own = card.routing.queue_thresholds.get(routed.decision.queue or "", expected)
        low = routed.decision.confidence < own
        assert (r.topic == layout.topics.triage) == low


async def test_two_workers_share_partitions_and_route_everything(
    bootstrap: str,
    taxonomy_file: Path,
    layout: Taxonomy,
    tiny_expert_dir: Path,
    shared_engine: StreamingExpert,
    unique: str,
    tmp_path: Path,
) -> None:
    """Two workers of one consumer group split the partitions, both route, nothing is
    missing, and a real Prometheus reads both. They run in this process on the session's
    engine: separate worker processes, each with its own engine, are the chaos tests'."""
    settings = Settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{unique}"},
        engine={"model_dir": tiny_expert_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        metrics={"port": 0},
        shutdown_grace_s=10,
    )
    registries = (CollectorRegistry(), CollectorRegistry())

    def each(name: str) -> list[float]:
        """Each worker's `name`, summed over its labels."""
        return [
            sum(s.value for m in r.collect() for s in m.samples if s.name == name)
            for r in registries
        ]

    async with (
        started_worker(settings, registry=registries[0]) as a,
        started_worker(settings, registry=registries[1]) as b,
    ):
        runs = [asyncio.create_task(w.pipeline.run(w.source)) for w in (a, b)]
        try:
            for _ in range(120):  # the group's join and first rebalance, up to 60 s
                if all(each("router_assigned_partitions")):
                    break
                await asyncio.sleep(0.5)
            assigned = each("router_assigned_partitions")
            assert sum(assigned) == PARTITIONS and min(assigned) >= 1, assigned
            n = 300
            # Keyed, so the burst spreads over every partition (keyless messages produced
            # within one linger go to one sticky partition, which may be one worker's only).
            keys = [f"ticket-{i}".encode() for i in range(n)]
            produce(bootstrap, layout.topics.inbound, [_ticket(i) for i in range(n)], keys=keys)
            reader = OutputReader(bootstrap, _outputs(layout))
            out = await asyncio.to_thread(
                reader.read_until, lambda rs: len(_sources(rs)) >= n, timeout_s=240
            )
            reader.close()
            assert len(_sources(out)) == n
            consumed = each("router_messages_consumed_total")
            assert min(consumed) > 0 and sum(consumed) >= n, consumed
            ports = [w.health_port for w in (a, b)]
            await asyncio.to_thread(
                _prometheus_reads_what_the_workers_routed, ports, n=n, tmp_path=tmp_path
            )
        finally:
            for w in (a, b):
                w.pipeline.stop()
            await asyncio.gather(*runs)


async def test_exactly_once_mode_commits_outputs_and_offsets_in_transactions(
    bootstrap: str,
    taxonomy_file: Path,
    layout: Taxonomy,
    tiny_expert_dir: Path,
    shared_engine: StreamingExpert,
    unique: str,
) -> None:
    n = 150
    produce(bootstrap, layout.topics.inbound, [_ticket(i) for i in range(n)] + BAD)
    group = f"g-{unique}"
    settings = Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "exactly_once": True,
            "transactional_id": f"tx-{unique}",
            "transaction_max_tickets": 40,
        },
        engine={"model_dir": tiny_expert_dir, "cache_dir": REPO / ".state" / "vllm-cache"},
        taxonomy_path=taxonomy_file,
        metrics={"enabled": False},
        shutdown_grace_s=10,
    )
    registry = CollectorRegistry()
    async with started_worker(settings, registry=registry) as worker:
        await worker.pipeline.run(worker.source, stop_after=n + len(BAD))
    reader = OutputReader(bootstrap, _outputs(layout))
    out = reader.read_until(lambda rs: len(rs) >= n + len(BAD), timeout_s=60)
    reader.close()
    assert len(out) == len(_sources(out)) == n + len(BAD)  # no duplicates, none missing
    txns = {r.headers["router.txn"] for r in out}
    assert all(t.startswith(f"tx-{unique}:".encode()) for t in txns)
    assert len(txns) >= (n + len(BAD)) // 40
    ends: dict[int, int] = {}
    for _t, p, o in _sources(out):
        ends[p] = max(ends.get(p, 0), o + 1)
    assert committed(bootstrap, group, layout.topics.inbound, PARTITIONS) == ends
    assert registry.get_sample_value("router_commits_total", {"result": "ok"}) == len(txns)


def _prometheus_reads_what_the_workers_routed(
    metrics_ports: list[int | None], *, n: int, tmp_path: Path
) -> None:
    """A real Prometheus (deploy/prometheus config) scrapes the running workers; its HTTP API
    gives back every decided ticket: routed + triaged = n, summed over both workers."""
    from tests.test_deploy_monitoring import (
        PrometheusServer,
        require_tool,
        scrape_config_for,
        wait_for,
    )

    targets = [f"127.0.0.1:{port}" for port in metrics_ports]
    config = scrape_config_for(targets[0])
    config["scrape_configs"][0]["static_configs"] = [{"targets": targets}]
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = PrometheusServer(binary=require_tool("prometheus"), workdir=workdir, config=config)
    try:
        server.wait_ready()
        expr = (
            'sum(router_tickets_routed_total{job="ticket-router"})'
            ' + sum(router_tickets_triaged_total{job="ticket-router"} or vector(0))'
        )

        def decided() -> float | None:
            up = server.query('sum(up{job="ticket-router"})')
            result = server.query(expr)
            if up and float(up[0]["value"][1]) == len(targets) and result:
                value = float(result[0]["value"][1])
                return value if value >= n else None
            return None

        assert wait_for(decided, timeout_s=60, what="decided tickets in Prometheus") == n
    finally:
        server.stop()
