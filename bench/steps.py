"""The measuring steps the bench commands and the scenarios share: collect, the MTTR model,
the report, and how each prints its figures.

`bench.cli` parses arguments; `scenarios.demo` and `scenarios.drift` chain these steps after
`loadgen.steps`' traffic and replay. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from loadgen.steps import console

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bench.outputs import StopReason, WaitPolicy, WaitStatus
    from schemas.taxonomy import Taxonomy

CLOUD_TTFT_S = 0.85  # the reference system's time to first token (part of its 2.5 s)


def collect_step(
    *,
    bootstrap: str,
    out_dir: Path,
    taxonomy: Taxonomy,
    group: str | None = None,
    router_group: str | None = "ticket-router",
    policy: WaitPolicy | None = None,
    bin_s: float = 10.0,
    should_stop: Callable[[], StopReason | None] | None = None,
    on_status: Callable[[WaitStatus], None] | None = None,
    before_snapshot: Callable[[], None] | None = None,
    other_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """Read outputs while the router progresses, join with manifest.jsonl; write collect.json
    and outcomes.jsonl.

    After the wait, `before_snapshot` runs (the demo stops its worker there, which finishes
    its in-flight tickets and commits), then the router group's committed offsets are read
    once more and the outputs of every ticket below them are awaited (`policy.settle_s`): a
    ticket with no output is LOST only if the router committed past it, else NOT ROUTED.
    """
    import uuid
    from dataclasses import asdict

    from bench.collect import account, owed_ids
    from bench.outputs import (
        OutputCollector,
        OutputTopics,
        RouterOffsets,
        WaitPolicy,
        settle,
        wait_for_router,
    )
    from loadgen.replay import read_manifest

    policy = policy or WaitPolicy()
    manifest = read_manifest(out_dir / "manifest.jsonl")
    replay_doc = out_dir / "replay.json"
    inbound = (
        json.loads(replay_doc.read_text())["topic"]
        if replay_doc.exists()
        else taxonomy.topics.inbound
    )
    topics = OutputTopics(
        routed=tuple(q.topic for q in taxonomy.queues),
        triage=taxonomy.topics.triage,
        dead_letter=taxonomy.topics.dead_letter,
    )
    collector = OutputCollector(
        bootstrap,
        topics,
        group_id=group or f"loadgen-collect-{uuid.uuid4().hex}",
        expected_ids={r.ticket_id for r in manifest if r.delivered},
    )
    partitions = {r.partition for r in manifest if r.partition is not None}
    committed: dict[int, int] | None = None
    with collector, contextlib.ExitStack() as stack:
        offsets = None
        if router_group:
            offsets = stack.enter_context(
                RouterOffsets(
                    bootstrap, group_id=router_group, topic=inbound, partitions=partitions
                )
            )
        reason = wait_for_router(
            collector,
            policy=policy,
            manifest=manifest,
            offsets=offsets,
            should_stop=should_stop,
            on_status=on_status,
        )
        if before_snapshot is not None:
            before_snapshot()
        if offsets is not None:
            committed = offsets.read()
        missing = settle(collector, owed=owed_ids(manifest, committed), settle_s=policy.settle_s)
    acc = account(
        manifest,
        collector.observations,
        labels=taxonomy.labels,
        bin_s=bin_s,
        committed=committed,
        other_ids=other_ids,
    )
    data = acc.to_json()
    data |= {
        "stop_reason": reason.value,
        "router_group": router_group,
        "wait_policy": asdict(policy),
        "owed_outputs_missing_after_settle": len(missing),
    }
    (out_dir / "collect.json").write_text(json.dumps(data, indent=2) + "\n")
    with (out_dir / "outcomes.jsonl").open("w", encoding="utf-8") as f:
        for o in acc.outcomes:
            f.write(json.dumps(asdict(o)) + "\n")
    return data


def print_collect(c: dict[str, Any]) -> None:
    lat = c.get("latency_s") or {}

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    console().print(
        f"collect: sent {c['sent']}, routed {c['routed']}, triage {c['triaged']},"
        f" dead-letter {c['dead_lettered']}, not routed when the run ended {c['not_routed']},"
        f" LOST {c['lost']}, DUPLICATED {c['duplicated']}, unexpected {c['unexpected']}"
        f" (stopped: {c.get('stop_reason')}); accuracy routed {pct(c['accuracy_routed'])},"
        f" top-1 {pct(c['accuracy_top1'])}; latency p50 {lat.get('p50', float('nan')):.3f} s"
        f" p99 {lat.get('p99', float('nan')):.3f} s max {lat.get('max', float('nan')):.3f} s;"
        f" sent while the router was saturated (backlog) {c['backlogged']}"
    )


def mttr_step(
    *,
    out_dir: Path,
    taxonomy: Taxonomy,
    volume: float,
    hours: float,
    seed: int,
    assumptions: Any,
    cloud_accuracy: float,
    cloud_latency_s: float,
    router_accuracy: float,
    router_latency_s: float,
    desk: Any = None,
    replicates: int | None = None,
    router_triage_share: float = 0.05,
) -> dict[str, Any]:
    """Simulate the desk for each scenario on one day of traffic; write mttr.json.

    Args:
        desk: a calibrated desk (`loadgen.desk_file.DeskFile`): this router, the cloud LLM
            and the desk's own dispatch on it, with intervals (`bench.desk_steps`); None:
            the toy desk of `assumptions` (agents staffed for the peak, manual dispatch).
        router_triage_share: this router's share sent to triage when nothing was measured.
        replicates: a calibrated desk's bootstrap replicates to use (None: all).
    """
    from collections import Counter

    from bench import mttr
    from loadgen.traffic import IncidentStorm, TrafficModel, sample

    queues = taxonomy.labels
    measured, backlogged = _measured_decisions(out_dir / "outcomes.jsonl")
    truths_seen = Counter(d.truth for d in measured)
    shares = {q: float(truths_seen.get(q, 0)) or (1.0 if not measured else 0.0) for q in queues}
    if not any(shares.values()):
        shares = dict.fromkeys(queues, 1.0)
    storm = IncidentStorm(at_s=9.5 * 3600)
    model = TrafficModel(daily_volume=volume, storms=(storm,))
    start = datetime(2026, 11, 25, tzinfo=UTC)
    schedule = sample(model, start=start, duration_s=hours * 3600, seed=seed)
    storm_queues = [
        schedule.storms[i].queue if i >= 0 else None for i in schedule.storm_index.tolist()
    ]
    truths = mttr.assign_truths(storm_queues, shares=shares, seed=seed)
    total = sum(shares.values())
    base_peak_h = max(
        TrafficModel(daily_volume=volume).expected_arrivals(
            start=start + timedelta(hours=h), duration_s=3600
        )
        for h in range(24)
    )
    peak_per_h = {q: base_peak_h * shares[q] / total for q in queues}
    triage_share = (
        sum(d.kind != "routed" for d in measured) / len(measured)
        if measured
        else router_triage_share
    )
    toy = mttr.build_desk(
        assumptions,
        tiers={q.name: q.tier.value for q in taxonomy.queues},
        peak_per_h=peak_per_h,
        triage_share=triage_share,
    )
    if measured:
        router = mttr.measured_scenario(measured, name="this router (measured)", queues=queues)
    else:
        # Never the backlogged tickets' latencies: without clean ones the row is an assumption.
        router = mttr.parametric_scenario(
            name="this router (assumed)",
            queues=queues,
            latency_s=router_latency_s,
            accuracy=router_accuracy,
            triage_share=triage_share,
        )
    cloud = mttr.cloud_llm_scenario(
        queues=queues, ttft_s=CLOUD_TTFT_S, per_ticket_s=cloud_latency_s, accuracy=cloud_accuracy
    )
    common = {
        "cloud_accuracy": cloud_accuracy,
        "cloud_ttft_s": CLOUD_TTFT_S,
        "cloud_latency_s": cloud_latency_s,
        "measured_decisions": len(measured),
        "backlogged_decisions_left_out": backlogged,
    }
    if desk is not None:
        from bench.desk_steps import calibrated_mttr

        data = calibrated_mttr(
            desk=desk,
            router=router,
            cloud=cloud,
            queues=queues,
            truths=truths,
            seed=seed,
            days=hours / 24,
            assumptions=common,
            replicates=replicates,
        )
        return _write_mttr(out_dir, data)
    manual = mttr.manual_scenario(
        queues=queues,
        dispatchers=mttr.dispatchers_for(assumptions, peak_total_per_h=base_peak_h),
        minutes_per_ticket=assumptions.manual_min_per_ticket,
        accuracy=assumptions.manual_accuracy,
    )
    comparison = mttr.compare(
        toy,
        [router, cloud, manual],
        arrivals_s=schedule.times_s.tolist(),
        truths=truths,
        seed=seed,
        days=hours / 24,
    )
    from dataclasses import asdict

    data = mttr.comparison_json(
        comparison,
        baseline=manual.name,
        assumptions={
            **asdict(assumptions),
            **common,
            "agents": {q: d.agents for q, d in toy.queues.items()},
            "triage_agents": toy.triage.agents,
            "dispatchers": manual.dispatch.agents if manual.dispatch else 0,
        },
    )
    data["desk"] = {"name": "toy", "kind": "toy"}
    return _write_mttr(out_dir, data)


def _write_mttr(out_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mttr.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def _measured_decisions(path: Path) -> tuple[list[Any], int]:
    """Decisions the MTTR model may use, and how many backlogged ones were left out."""
    from bench.mttr import decisions_from_outcomes

    if not path.exists():
        return [], 0
    with path.open(encoding="utf-8") as f:
        return decisions_from_outcomes(json.loads(line) for line in f if line.strip())


def print_mttr(m: dict[str, Any]) -> None:
    out = console()
    methods = (m.get("intervals") or {}).get("methods") or {}

    def ci(name: str, key: str) -> str:
        lo_hi = methods.get(name, {}).get(key)
        return f" [{lo_hi[0]:.1f}, {lo_hi[1]:.1f}]" if lo_hi else ""

    desk = m.get("desk") or {}
    if desk:
        out.print(f"mttr: desk {desk.get('name')} ({desk.get('kind')})")
    for r in m["results"]:
        n = r["name"]
        out.print(
            f"mttr: {n}: mean {r['mttr_mean_h']:.2f} h{ci(n, 'mean_h')}, median"
            f" {r['mttr_p50_h']:.2f} h{ci(n, 'median_h')}, p90 {r['mttr_p90_h']:.2f} h"
            f"{ci(n, 'p90_h')}, misrouted {r['misrouted']}, triaged {r['triaged']},"
            f" routing {r['routing_latency_s']:.3g} s/ticket"
        )
    for pair, d in ((m.get("intervals") or {}).get("differences") or {}).items():
        out.print(
            f"difference: {pair}: "
            + "; ".join(
                f"{k.removesuffix('_h')} {x['point']:+.1f} h [{x['interval'][0]:+.1f},"
                f" {x['interval'][1]:+.1f}] {x['verdict']}"
                for k, x in d.items()
            )
        )
    for name, s in m["saved_vs_baseline"].items():
        iv = s.get("ticket_hours_per_day_interval")
        out.print(
            f"saved vs {m['baseline']}: {name}: {s['reference_hours_per_day']:,.0f} h/day"
            f" (latency x tickets), {s['ticket_hours_per_day']:,.0f} ticket-h/day (simulated"
            " MTTR"
            + (f"; 95% {iv[0]:,.0f} to {iv[1]:,.0f}" if iv else "")
            + f"), {s['agent_hours_per_day']:,.0f} agent-h/day"
        )


def report_step(
    *,
    out_dir: Path,
    cores: int,
    tickets_per_s: float | None = None,
    gpu_tickets_per_s: float | None = None,
    cores_per_machine: int = 16,
    volume: float | None = None,
    peak_per_s: float | None = None,
    figures: bool = True,
    prices: Any = None,
    tokenizer: Path | None = None,
    tokens_override: tuple[float | None, float | None] = (None, None),
    taxonomy: Taxonomy | None = None,
) -> dict[str, Path]:
    """Assemble report.md / report.json / PNGs from the run folder's JSON files.

    Args:
        prices: `bench.cost.Prices` (None: the dated list-price defaults).
        tokenizer: the expert folder whose tokenizer counts a cloud router's tokens per
            ticket (None: the default expert's, when it exists); written to tokens.json.
        tokens_override: input and output tokens per ticket to use instead of counting.
        taxonomy: the queues the cloud prompt lists (None: the packaged taxonomy).
    """
    from bench import cost, report

    def load(name: str) -> dict[str, Any] | None:
        path = out_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    collect = load("collect.json")
    if collect is None:
        raise typer.BadParameter(f"{out_dir / 'collect.json'} missing: run `collect` first")
    traffic = load("traffic.json") or {}
    demo = load("demo.json")
    probe = load("probe.json")
    probed = (probe or {}).get("summary", {}).get("max_sustainable_rate_per_s")
    measured_tps, saturated = report.measured_capacity(collect["series"])
    tps = tickets_per_s or probed or measured_tps
    day_volume = volume or traffic.get("daily_volume", 100_000)
    cap = None
    if tps:
        cap = report.capacity(
            report.CapacityInputs(
                tickets_per_s=tps,
                cpu_cores=cores,
                gpu_tickets_per_s=gpu_tickets_per_s,
                cores_per_machine=cores_per_machine,
            ),
            volume_per_day=day_volume,
            peak_per_s=peak_per_s or traffic.get("peak_per_s") or 0.0,
        )
        cap["throughput_source"] = (
            "given"
            if tickets_per_s
            else "capacity probe: highest rate with p99 <= 1 s"
            if probed
            else ("saturated bins" if saturated else "lower bound: never saturated")
        )
    tokens = tokens_step(
        out_dir=out_dir, tokenizer=tokenizer, override=tokens_override, taxonomy=taxonomy
    )
    costs = cost.monthly_costs(
        cap, tokens=tokens, prices=prices or cost.Prices(), volume_per_day=day_volume
    )
    data = report.build(
        collect=collect,
        replay=load("replay.json"),
        mttr=load("mttr.json"),
        capacity_figures=cap,
        traffic={k: v for k, v in traffic.items() if k != "per_hour"} or None,
        demo=demo,
        probe=probe,
        costs=costs,
    )
    return report.write(data, out_dir, figures=figures)


def tokens_step(
    *,
    out_dir: Path,
    tokenizer: Path | None,
    override: tuple[float | None, float | None] = (None, None),
    taxonomy: Taxonomy | None = None,
    corpus_n: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Tokens per ticket of a cloud LLM router: given, read from tokens.json, or counted with
    the expert's tokenizer on generated tickets (then written to tokens.json).

    Returns None when nothing was given and no tokenizer is at hand.
    """
    from bench.cost import measure_tokens
    from loadgen.default_expert import DEFAULT_MODEL_DIR

    given_in, given_out = override
    path = out_dir / "tokens.json"
    if given_in is not None:
        return {
            "tokenizer": "given (--input-tokens-per-ticket)",
            "tickets": 0,
            "input_tokens_per_ticket": given_in,
            "output_tokens_per_ticket": given_out if given_out is not None else 5.0,
            "instruction_tokens": 0,
            "ticket_tokens_per_ticket": 0.0,
        }
    folder = tokenizer or (DEFAULT_MODEL_DIR if DEFAULT_MODEL_DIR.exists() else None)
    if tokenizer is None and path.exists():
        return dict(json.loads(path.read_text()))
    if folder is None:
        return None
    tax = taxonomy or _default_taxonomy()
    corpus = load_or_make_corpus_for_tokens(n=corpus_n, seed=seed)
    try:
        tokens = measure_tokens(
            [(t.ticket.text(), t.queue) for t in corpus],
            tokenizer_dir=folder,
            queues=[(q.name, q.description) for q in tax.queues],
        )
    except (OSError, ValueError) as exc:
        # A folder without a readable tokenizer costs the report its API row, never the run.
        console().print(f"[yellow]tokens per ticket not counted[/] ({folder}): {exc}")
        return None
    if given_out is not None:
        tokens["output_tokens_per_ticket"] = given_out
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tokens, indent=2) + "\n")
    return tokens


def _default_taxonomy() -> Taxonomy:
    from schemas.taxonomy import Taxonomy

    return Taxonomy.load()


def load_or_make_corpus_for_tokens(*, n: int, seed: int) -> list[Any]:
    """The demo's generated tickets (the same generator and seed as its replay)."""
    from loadgen.steps import load_or_make_corpus

    return load_or_make_corpus(None, n=n, seed=seed)
