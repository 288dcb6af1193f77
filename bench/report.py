"""The capacity report: Markdown + JSON + PNG figures from a run's measurements, and a cost model.

Owns turning the collect / replay / MTTR results (plain JSON-ready dicts) into one report
and the arithmetic of how many machines a volume and its peak need. With a demo's run
description (demo.json, probe.json) the report leads with the MTTR comparison and says how
its figures were obtained: machine and number format, the capacity probe, which part of the
day was replayed at what speed-up, and any backlog, labelled apart from the router's own
latency. It reads nothing and measures nothing itself; the only I/O is writing the files it
is asked to write. matplotlib is imported inside the plotting function (Agg backend).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import report_mttr
from bench.cost import CapacityInputs, capacity, capacity_md
from bench.markdown_fmt import fmt as _fmt
from bench.markdown_fmt import pct as _pct
from bench.markdown_fmt import table as _table

__all__ = ["CapacityInputs", "build", "capacity", "markdown", "measured_capacity", "write"]

Json = dict[str, Any]
_headline_md = report_mttr.headline_md
MTTR_CAPTION = report_mttr.CAPTION


def build(
    *,
    collect: Json,
    replay: Json | None = None,
    mttr: Json | None = None,
    capacity_figures: Json | None = None,
    traffic: Json | None = None,
    demo: Json | None = None,
    probe: Json | None = None,
    costs: Json | None = None,
) -> Json:
    """The report's JSON: headline figures first, then each section as given."""
    kept_up = collect.get("latency_kept_up_s") or {}
    headline = {
        "mttr": [
            {
                k: r.get(k)
                for k in (
                    "name",
                    "routing_latency_s",
                    "mttr_mean_h",
                    "mttr_p50_h",
                    "mttr_p90_h",
                    "misrouted",
                )
            }
            | {"intervals": (r.get("extras") or {}).get("intervals")}
            for r in (mttr or {}).get("results", [])
        ],
        "mttr_desk": (mttr or {}).get("desk", {}).get("name"),
        "monthly_cost_usd": {
            r["option"]: r["usd_per_month"] for r in (costs or {}).get("rows", [])
        },
        "sent": collect.get("sent"),
        "routed": collect.get("routed"),
        "triaged": collect.get("triaged"),
        "dead_lettered": collect.get("dead_lettered"),
        "not_routed_when_run_ended": collect.get("not_routed"),
        "lost": collect.get("lost"),
        "duplicated": collect.get("duplicated"),
        "sent_while_saturated": collect.get("backlogged"),
        "accuracy_routed": collect.get("accuracy_routed"),
        "accuracy_top1": collect.get("accuracy_top1"),
        "triage_rate": collect.get("triage_rate"),
        "dead_letter_rate": collect.get("dead_letter_rate"),
        "throughput_per_s": collect.get("throughput_per_s"),
        "latency_p50_s": collect.get("latency_s", {}).get("p50"),
        "latency_p99_s": collect.get("latency_s", {}).get("p99"),
        "latency_kept_up_p50_s": kept_up.get("p50"),
        "latency_kept_up_p99_s": kept_up.get("p99"),
        "capacity_probe_per_s": (probe or {}).get("summary", {}).get("max_sustainable_rate_per_s"),
        "speedup": (replay or {}).get("speedup"),
    }
    return {
        "headline": headline,
        "demo": demo,
        "probe": probe,
        "traffic": traffic,
        "replay": replay,
        "collect": collect,
        "mttr": mttr,
        "capacity": capacity_figures,
        "costs": costs,
    }


def _replay_md(replay: Json) -> list[str]:
    return [
        "## Replay",
        "",
        f"Format `{replay['format']}`, speed-up {_fmt(replay.get('speedup'))}"
        f" ({'paced' if replay.get('speedup') else 'as fast as possible'}),"
        f" {replay['sent']} sent, {replay['delivered']} acknowledged, {replay['failed']} failed,"
        f" {_fmt(replay['wall_s'], '.1f', ' s')} wall, {_fmt(replay['send_rate_per_s'], '.1f')}"
        " tickets/s.",
        (
            f"Send lag (actual - scheduled): p50 {_fmt(replay['lag_p50_s'] * 1000, '.1f', ' ms')},"
            f" p99 {_fmt(replay['lag_p99_s'] * 1000, '.1f', ' ms')},"
            f" max {_fmt(replay['lag_max_s'] * 1000, '.1f', ' ms')}."
            if replay.get("speedup")
            else "No schedule (as fast as possible), so no send lag."
        )
        + (" Stopped at its wall-time bound." if replay.get("stopped_early") else ""),
        "",
    ]


def _collect_md(c: Json) -> list[str]:
    lat = c.get("latency_s") or {}
    keys = ("p50", "p90", "p95", "p99", "max", "mean")
    latency_rows = [["all answered tickets", *(_fmt(lat.get(k), ".3f") for k in keys)]]
    for label, key in (
        ("sent while the router kept up", "latency_kept_up_s"),
        ("sent while it was saturated (backlog)", "latency_backlogged_s"),
    ):
        if c.get(key):
            latency_rows.append([label, *(_fmt(c[key].get(k), ".3f") for k in keys)])
    lines = [
        "## Outcomes",
        "",
        *_table(
            [
                "sent",
                "routed",
                "triage",
                "dead-letter",
                "not routed when the run ended",
                "LOST",
                "DUPLICATED",
                "unexpected",
            ],
            [
                [
                    str(c["sent"]),
                    str(c["routed"]),
                    str(c["triaged"]),
                    str(c["dead_lettered"]),
                    str(c.get("not_routed", 0)),
                    str(c["lost"]),
                    str(c["duplicated"]),
                    str(c["unexpected"]),
                ]
            ],
        ),
        "",
        "LOST counts only tickets the router's consumer group committed past without writing"
        " any output (a real loss); a ticket still in the inbound topic or in flight when the"
        " run ended is *not routed when the run ended*"
        + (f" (the collector stopped: {c['stop_reason']})." if c.get("stop_reason") else "."),
        "",
        f"Accuracy of routed tickets {_pct(c['accuracy_routed'])}; top-1 accuracy including"
        f" triage guesses {_pct(c['accuracy_top1'])}; correctly routed share of all sent"
        f" {_pct(c['correct_routed_share'])}; triage rate {_pct(c['triage_rate'])};"
        f" dead-letter rate {_pct(c['dead_letter_rate'])}.",
        "",
        "End-to-end latency (send -> output record timestamp), seconds:",
        "",
        *_table(["tickets", *keys], latency_rows),
        "",
        "Stage means: "
        + (
            ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in (c.get("stage_mean_s") or {}).items())
            or "n/a"
        )
        + f". Throughput over the run {_fmt(c.get('throughput_per_s'), '.1f')} tickets/s;"
        f" highest backlog {max(c['series']['backlog'], default=0)} tickets;"
        f" {c.get('backlogged', 0)} tickets sent while the router was saturated (in a"
        f" {_fmt(c['series']['bin_s'], '.3g')} s bin that began with at least as many tickets"
        " waiting as the router finished in it).",
        "",
    ]
    if c.get("lost_ids"):
        lines += [f"LOST: {c['lost']}; first ids: {', '.join(c['lost_ids'][:20])}", ""]
    if c.get("not_routed_ids"):
        lines += [
            f"Not routed when the run ended: {c['not_routed']}; first ids:"
            f" {', '.join(c['not_routed_ids'][:20])}",
            "",
        ]
    if c.get("duplicated_ids"):
        dupes = ", ".join(f"{k} x{v}" for k, v in list(c["duplicated_ids"].items())[:20])
        lines += [f"DUPLICATED: {dupes}", ""]
    return lines


def _hhmm(offset_s: float) -> str:
    m = int(round(offset_s / 60))
    return f"{m // 60:02d}:{m % 60:02d}"


def _probe_md(probe: Json) -> list[str]:
    steps = sorted(probe.get("steps", []), key=lambda s: s["offered_rate_per_s"])
    summary = probe.get("summary") or {}
    best = summary.get("max_sustainable_rate_per_s")
    slo = probe.get("slo") or {}
    return [
        f"**Capacity probe** ({_fmt(probe.get('wall_s'), '.0f')} s, {probe.get('tickets')}"
        " tickets, not part of the replay): open-loop steps of"
        f" {_fmt((probe.get('plan') or {}).get('step_s'), '.3g')} s against the running"
        f" worker, p99 <= {_fmt(slo.get('p99_s'), '.3g')} s and"
        f" >= {_pct(slo.get('min_delivered_fraction'))} answered within the step; the first"
        " step offers the day's busiest minute in real time. Highest passing rate: "
        + (f"**{best:.1f} tickets/s**." if best else "none (no step met the SLO).")
        + (f" Stopped: {summary.get('stopped_because')}." if summary else ""),
        "",
        *_table(
            ["offered /s", "sent /s", "answered /s", "p50 s", "p99 s", "verdict"],
            [
                [
                    _fmt(s["offered_rate_per_s"], ".1f"),
                    _fmt(s["achieved_send_rate_per_s"], ".1f"),
                    _fmt(s["delivered_rate_per_s"], ".1f"),
                    _fmt(s["p50_s"], ".3f"),
                    _fmt(s["p99_s"], ".3f"),
                    "pass" if s["passed"] else "FAIL: " + "; ".join(s["reasons"]),
                ]
                for s in steps
            ],
        ),
        "",
    ]


def _demo_md(demo: Json, probe: Json | None, replay: Json | None, collect: Json) -> list[str]:
    """How the figures were obtained: machine, expert, probe, replayed window, phases."""
    hw = demo.get("hardware") or {}
    engine = hw.get("engine") or {}
    cpu = engine.get("cpu") or {}
    expert = demo.get("expert") or {}
    plan = demo.get("plan") or {}
    day = demo.get("day") or {}
    load = hw.get("load_average_at_start") or [math.nan]
    lines = [
        "## How these figures were obtained",
        "",
        f"- **Machine**: {cpu.get('kind')} ({cpu.get('model_name')}), {hw.get('cpu_count')}"
        f" cores; the worker's engine ran in **{engine.get('dtype')}** ({engine.get('reason')})"
        f" with {engine.get('threads')} model thread(s). The broker, the worker, its engine"
        f" processes and the load generator shared these cores (load average"
        f" {_fmt(float(load[0]), '.2f')} when the demo started: other jobs on the machine"
        " lower every figure here).",
        f"- **Expert**: `{expert.get('model_dir')}`, "
        + (
            "built in this run."
            if expert.get("built")
            else "given on the command line."
            if expert.get("given")
            else "reused from the cache (built by an earlier run)."
        ),
    ]
    if plan:
        lines.append(
            f"- **Replay**: {_hhmm(plan['from_s'])}-{_hhmm(plan['to_s'])} of"
            f" {day.get('date')} (a business day of {day.get('tickets', 0):,} tickets"
            f" with the day's curve and its incident storm): **{plan['tickets']:,} tickets**"
            f" at **{plan['speedup']:.1f}x** in {plan['wall_s'] / 60:.1f} min. Speed-up:"
            f" {plan['why']}; the busiest minute (real {plan['day_peak_per_s']:.2f}/s) was"
            f" offered at {plan['offered_peak_per_s']:.1f}/s. The latencies below are the"
            " router's at that offered load (higher than the real day's), not a backlog of"
            " compression."
        )
    if replay and replay.get("stopped_early"):
        lines.append(f"- The replay stopped early: {replay['sent']} of {replay['planned']} sent.")
    if demo.get("interrupted_in"):
        lines.append(
            f"- **Interrupted by the user during the {demo['interrupted_in']}**: the figures"
            " cover what was sent and answered until then."
        )
    lines.append(
        f"- **Drain**: the collector waited while the router made progress; it stopped"
        f" because: {collect.get('stop_reason', 'n/a')}. Not routed when the run ended:"
        f" {collect.get('not_routed', 0)}; LOST: {collect.get('lost', 0)}."
    )
    phases = demo.get("phases") or []
    if phases:
        lines.append(
            "- **Wall time** by phase: "
            + ", ".join(f"{p['phase']} {p['wall_s']:.0f} s" for p in phases)
            + f"; {demo.get('wall_s_before_report', 0) / 60:.1f} min before the report"
            f" (budget {demo.get('budget_s', 0) / 60:.0f} min for this command)."
        )
    lines.append("")
    if probe:
        lines += _probe_md(probe)
    return lines


def markdown(report: Json, figures: Mapping[str, str]) -> str:
    """The report as Markdown; `figures` maps a caption to a PNG path relative to it."""
    demo = report.get("demo")
    title = "demo report" if demo else "load test and capacity report"
    lines = [f"# Ticket router: {title}", ""]
    figures = dict(figures)
    mttr_png = figures.pop(MTTR_CAPTION, None)
    if report.get("mttr"):
        lines += report_mttr.headline_md(report["mttr"], figure=mttr_png)
        lines += report_mttr.desk_md(report["mttr"])
    if demo:
        lines += _demo_md(demo, report.get("probe"), report.get("replay"), report["collect"])
    traffic = report.get("traffic")
    if traffic:
        lines += [
            "## Traffic",
            "",
            f"Schedule from {traffic.get('start')} for {_fmt(traffic.get('hours'), '.3g')} h:"
            f" {traffic.get('sampled')} tickets sampled ({_fmt(traffic.get('expected'), ',.0f')}"
            f" expected) at a daily volume of {_fmt(traffic.get('daily_volume'), ',.0f')},"
            f" intraday peak/trough {_fmt(traffic.get('peak_to_trough'), '.3g')};"
            f" storms: {'; '.join(traffic.get('storms') or []) or 'none'}"
            f" ({traffic.get('storm_tickets', 0)} storm tickets);"
            f" peak {_fmt(traffic.get('peak_per_s'), '.2f')}/s (1-min bins, real time).",
            "",
        ]
    if report.get("replay"):
        lines += _replay_md(report["replay"])
    lines += _collect_md(report["collect"])
    if report.get("mttr"):
        lines += report_mttr.details_md(report["mttr"])
    if report.get("capacity") or report.get("costs"):
        lines += capacity_md(report.get("capacity"), report.get("costs"))
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{caption}]({path})" for caption, path in figures.items()]
        lines.append("")
    return "\n".join(lines)


def plot(report: Json, out_dir: Path) -> dict[str, str]:
    """Write the PNG figures; return caption -> file name (relative to `out_dir`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    c = report["collect"]
    s = c["series"]
    if s["t_s"]:
        t_min = [t / 60 for t in s["t_s"]]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.plot(t_min, [n / s["bin_s"] for n in s["sent"]], label="arrivals (sent)/s")
        ax.plot(t_min, [n / s["bin_s"] for n in s["done"]], label="routed+triage+DL/s")
        ax2 = ax.twinx()
        ax2.fill_between(t_min, s["backlog"], alpha=0.2, color="grey", label="backlog")
        ax.set(xlabel="minutes since first send", ylabel="tickets/s")
        ax2.set_ylabel("backlog (tickets)")
        ax.legend(loc="upper left")
        figures["Arrival vs routed rate, and backlog"] = _save(fig, out_dir, "rates.png")

        fig, ax = plt.subplots(figsize=(9, 4))
        for key in ("latency_p50_s", "latency_p95_s", "latency_p99_s"):
            ax.plot(
                t_min,
                [v if v is not None else float("nan") for v in s[key]],
                label=key.split("_")[1],
            )
        ax.set(xlabel="minutes since first send", ylabel="end-to-end latency (s)")
        ax.legend()
        figures["Latency percentiles over time"] = _save(fig, out_dir, "latency.png")
    replay = report.get("replay")
    if replay and replay.get("speedup") and replay.get("lag_series"):
        due, lag = zip(*replay["lag_series"], strict=True)
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.plot([d / 60 for d in due], [x * 1000 for x in lag], ".", markersize=3)
        ax.set(xlabel="minutes since replay start", ylabel="send lag (ms)")
        figures["Replay send lag (actual - scheduled)"] = _save(fig, out_dir, "lag.png")
    if c.get("confusion") and any(any(r) for r in c["confusion"]):
        figures["Confusion matrix"] = _confusion_png(plt, c, out_dir)
    mttr = report.get("mttr")
    if mttr and mttr.get("results"):
        figures[MTTR_CAPTION] = report_mttr.mttr_png(plt, mttr, out_dir, _save)
    probe = report.get("probe")
    if probe and probe.get("steps"):
        figures["Capacity probe: latency and answered rate by offered rate"] = _probe_png(
            plt, probe, out_dir
        )
    return figures


def _probe_png(plt: Any, probe: Json, out_dir: Path) -> str:
    steps = sorted(probe["steps"], key=lambda s: s["offered_rate_per_s"])
    x = [s["offered_rate_per_s"] for s in steps]
    fig, (lat, rate) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("p99_s", "p50_s"):
        lat.plot(x, [math.nan if s[key] is None else s[key] for s in steps], marker="o", label=key)
    lat.axhline(probe["slo"]["p99_s"], color="red", linestyle="--", label="SLO p99")
    lat.set(xlabel="offered rate (tickets/s)", ylabel="end-to-end latency (s)", yscale="log")
    lat.legend()
    rate.plot(x, [s["delivered_rate_per_s"] for s in steps], marker="o", label="answered")
    rate.plot([0, max(x)], [0, max(x)], color="grey", linestyle=":", label="answered = offered")
    rate.set(xlabel="offered rate (tickets/s)", ylabel="tickets/s")
    rate.legend()
    return _save(fig, out_dir, "probe.png")


def _confusion_png(plt: Any, c: Json, out_dir: Path) -> str:
    labels, matrix = c["labels"], c["confusion"]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    rows = [[v / max(1, sum(r)) for v in r] for r in matrix]
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, out_dir, "confusion.png")


def _save(fig: Any, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def write(report: Json, out_dir: Path, *, figures: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and (optionally) the PNGs into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot(report, out_dir) if figures else {}
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown(report, pngs))
    for name in pngs.values():
        paths[name] = out_dir / name
    return paths


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def measured_capacity(series: Mapping[str, Any]) -> tuple[float | None, bool]:
    """Sustained throughput from a run's time series, and whether the router was saturated.

    A bin counts as saturated when the queue at its start (tickets sent and not yet answered,
    LOST ones excluded) was at least what the router finished in it: work waited the whole
    bin, so its rate is the router's capacity, not the arrival rate. The last bin is partial
    and never counts. Without saturated bins the best bin's rate is returned: a lower bound.
    """
    done, bin_s = series.get("done", []), series["bin_s"]
    backlog = series.get("queued") or series.get("backlog", [])
    full = range(1, len(done) - 1)
    saturated = [done[i] / bin_s for i in full if backlog[i - 1] >= done[i] > 0]
    if saturated:
        return sum(saturated) / len(saturated), True
    best = max(done, default=0)
    return (best / bin_s if best else None), False
