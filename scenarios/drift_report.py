"""The drift scenario's figures, plot and report (pure apart from writing the files).

Owns how a drift run is measured: each ticket's first output joined with the version that
decided it, grouped into three phases (before the drift, after it on the older expert, after
the swap on the retrained one): live accuracy of routed tickets, top-1 accuracy with the
triaged tickets' best guess, triage rate, latency; the desk's own verdicts per version (what
the feedback consumer counted); tickets lost and duplicated over the run and around the
swap; the end-to-end p99 of the minute around the swap against the minute before; and the
retrain's wall time. The accuracy-over-time plot marks the drift, the retrain and the swap.
It reads nothing from Kafka: `scenarios.drift` hands it the accounting and the timeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Json = dict[str, Any]
BIN_S = 15.0
AROUND_S = 30.0  # "the minute around the swap": 30 s either side of the switch


@dataclass(slots=True)
class Timeline:
    """When things happened, Unix seconds (None: did not happen).

    Attributes:
        started_at: the replay's first send.
        drift_at: the first drifted ticket's due time.
        retrain_started_at, retrain_ended_at: the retrain command's run.
        promoted_at: when the registry pointer moved (its history's time).
        switch_at: the first decision by the new version.
        last_old_at: the last decision by the old version.
        ended_at: the replay's last send.
    """

    started_at: float
    drift_at: float
    retrain_started_at: float | None = None
    retrain_ended_at: float | None = None
    promoted_at: float | None = None
    switch_at: float | None = None
    last_old_at: float | None = None
    ended_at: float | None = None
    trigger_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """One sent ticket's first output and who decided it."""

    sent_at: float
    truth: str
    kind: str  # routed / triage / dead_letter / lost / not_routed / unreadable
    predicted: str | None
    latency_s: float | None
    model: str | None


def join(outcomes: Sequence[Mapping[str, Any]], models: Mapping[str, str]) -> list[Row]:
    """Outcome rows (`bench.collect.TicketOutcome` as JSON) with the deciding model."""
    return [
        Row(
            sent_at=float(o["sent_at"]),
            truth=str(o["truth"]),
            kind=str(o["kind"]),
            predicted=o.get("predicted"),
            latency_s=o.get("latency_s"),
            model=models.get(str(o["ticket_id"])),
        )
        for o in outcomes
    ]


@dataclass(slots=True)
class PhaseFigures:
    """Figures of the tickets of one phase."""

    tickets: int = 0
    answered: int = 0
    routed: int = 0
    accuracy_routed: float | None = None
    accuracy_top1: float | None = None
    triage_rate: float | None = None
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None


def phase_figures(rows: Sequence[Row]) -> PhaseFigures:
    """Accuracy, triage rate and latency of `rows` (answered ones; lost ones count in tickets)."""
    answered = [r for r in rows if r.kind in ("routed", "triage")]
    routed = [r for r in answered if r.kind == "routed"]
    guessed = [r for r in answered if r.predicted is not None]
    latencies = [r.latency_s for r in rows if r.latency_s is not None]
    return PhaseFigures(
        tickets=len(rows),
        answered=len(answered),
        routed=len(routed),
        accuracy_routed=_share(sum(r.predicted == r.truth for r in routed), len(routed)),
        accuracy_top1=_share(sum(r.predicted == r.truth for r in guessed), len(answered)),
        triage_rate=_share(len(answered) - len(routed), len(answered)),
        latency_p50_s=_pct(latencies, 50),
        latency_p99_s=_pct(latencies, 99),
    )


def _share(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def phases(rows: Sequence[Row], timeline: Timeline, *, old: str, new: str | None) -> Json:
    """The three phases: before the drift, drifted on the old expert, after the swap."""
    before = [r for r in rows if r.sent_at < timeline.drift_at and r.model == old]
    drifted_old = [r for r in rows if r.sent_at >= timeline.drift_at and r.model == old]
    after = [r for r in rows if new is not None and r.model == new]
    return {
        "before_drift": asdict(phase_figures(before)),
        "drifted_old_expert": asdict(phase_figures(drifted_old)),
        "after_swap_new_expert": asdict(phase_figures(after)),
    }


def around_swap(
    rows: Sequence[Row], switch_at: float | None, promoted_at: float | None = None
) -> Json:
    """End-to-end latency of the tickets sent in the minute around the switch (30 s either
    side) against the minute before it, and while the new version loaded (from the
    promotion to the switch); lost tickets in each."""
    if switch_at is None:
        return {}

    def window(lo: float, hi: float) -> Json:
        inside = [r for r in rows if lo <= r.sent_at - switch_at < hi]
        latencies = [r.latency_s for r in inside if r.latency_s is not None]
        return {
            "from_s": lo,
            "to_s": hi,
            "tickets": len(inside),
            "answered": len(latencies),
            "p50_s": _pct(latencies, 50),
            "p99_s": _pct(latencies, 99),
            "max_s": round(max(latencies), 4) if latencies else None,
            "lost": sum(r.kind == "lost" for r in inside),
        }

    out = {
        "minute_around_swap": window(-AROUND_S, AROUND_S),
        "minute_before": window(-3 * AROUND_S, -AROUND_S),
    }
    if promoted_at is not None and promoted_at < switch_at:
        out["while_loading"] = window(promoted_at - switch_at, 0.0)
    return out


@dataclass(slots=True)
class Series:
    """Per-bin figures by send time, seconds from the start."""

    t_s: list[float] = field(default_factory=list)
    accuracy_old: list[float | None] = field(default_factory=list)
    accuracy_new: list[float | None] = field(default_factory=list)
    top1: list[float | None] = field(default_factory=list)
    triage_rate: list[float | None] = field(default_factory=list)
    p99_s: list[float | None] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)


def series(rows: Sequence[Row], *, t0: float, old: str, new: str | None) -> Series:
    """Routed accuracy per version, top-1 accuracy, triage rate and p99 per `BIN_S` bin."""
    out = Series()
    if not rows:
        return out
    bins = int(max(r.sent_at for r in rows) - t0) // int(BIN_S) + 1
    grouped: list[list[Row]] = [[] for _ in range(bins)]
    for r in rows:
        grouped[int((r.sent_at - t0) // BIN_S)].append(r)
    for i, group in enumerate(grouped):
        out.t_s.append(i * BIN_S)
        out.tickets.append(len(group))
        for model, target in ((old, out.accuracy_old), (new, out.accuracy_new)):
            routed = [r for r in group if r.kind == "routed" and r.model == model]
            target.append(_share(sum(r.predicted == r.truth for r in routed), len(routed)))
        figures = phase_figures(group)
        out.top1.append(figures.accuracy_top1)
        out.triage_rate.append(figures.triage_rate)
        out.p99_s.append(figures.latency_p99_s)
    return out


def verdicts_by_model(samples: Sequence[Json]) -> Json:
    """The desk's verdicts per version at the last metrics sample: confirmed, reassigned and
    the accuracy they give (what `router_feedback_verdicts_total` says)."""
    if not samples:
        return {}
    out: Json = {}
    for model, counts in samples[-1]["verdicts"].items():
        judged = counts["confirmed"] + counts["reassigned"]
        out[model] = {**counts, "accuracy": _share(counts["confirmed"], judged)}
    return out


def build(
    *,
    rows: Sequence[Row],
    accounting: Json,
    timeline: Timeline,
    old: str,
    new: str | None,
    metrics_samples: Sequence[Json],
    retrain: Json | None,
    options: Json,
    hardware: Json,
) -> Json:
    """Every figure of the run, JSON-ready."""
    t0 = timeline.started_at
    switch = timeline.switch_at
    near = [
        r for r in rows if switch is not None and -2 * AROUND_S <= r.sent_at - switch < 2 * AROUND_S
    ]
    return {
        "options": options,
        "hardware": hardware,
        "timeline_s": {
            k: None if v is None else round(v - t0, 1)
            for k, v in asdict(timeline).items()
            if k not in ("started_at", "trigger_reason")
        },
        "trigger_reason": timeline.trigger_reason,
        "models": {"old": old, "new": new},
        "phases": phases(rows, timeline, old=old, new=new),
        "feedback_verdicts": verdicts_by_model(metrics_samples),
        "around_swap": around_swap(rows, switch, timeline.promoted_at),
        "accounting": {
            "sent": accounting.get("sent"),
            "lost": accounting.get("lost"),
            "duplicated": accounting.get("duplicated"),
            "not_routed": accounting.get("not_routed"),
            "dead_lettered": accounting.get("dead_lettered"),
            "lost_within_60s_of_swap": sum(r.kind == "lost" for r in near),
            "duplicated_ids": accounting.get("duplicated_ids", {}),
            "decided_by_both_versions": accounting.get("decided_by_both_versions", 0),
            "stop_reason": accounting.get("stop_reason"),
        },
        "retrain": retrain,
        "series": asdict(series(rows, t0=t0, old=old, new=new)),
        "feedback_samples": [
            {"t_s": round(s["t"] - t0, 1), "verdicts": s["verdicts"]} for s in metrics_samples
        ],
    }


def _fmt(x: float | None, kind: str = "pct") -> str:
    if x is None:
        return "-"
    return f"{x:.1%}" if kind == "pct" else f"{x:.3f} s"


def render_markdown(report: Json) -> str:
    """The report for people: the verdict table first, then the swap, then the retrain."""
    p = report["phases"]
    names = (
        ("before_drift", "before the drift (old expert)"),
        ("drifted_old_expert", "after the drift, old expert"),
        ("after_swap_new_expert", "after the swap, retrained expert"),
    )
    lines = [
        "# Drift scenario",
        "",
        f"Old expert `{report['models']['old']}`, retrained `{report['models']['new']}`."
        f" Retrain trigger: {report['trigger_reason']}.",
        "",
        "| phase | tickets | live accuracy (routed) | top-1 incl. triage | triage rate |"
        " e2e p50 | e2e p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in names:
        f = p[key]
        lines.append(
            f"| {label} | {f['tickets']} | {_fmt(f['accuracy_routed'])} |"
            f" {_fmt(f['accuracy_top1'])} | {_fmt(f['triage_rate'])} |"
            f" {_fmt(f['latency_p50_s'], 's')} | {_fmt(f['latency_p99_s'], 's')} |"
        )
    lines += ["", "Live accuracy as the desk's feedback judged it (the feedback consumer's"]
    lines += ["`router_feedback_verdicts_total`, routed decisions):", ""]
    for model, v in report["feedback_verdicts"].items():
        lines.append(
            f"- `{model}`: {v['confirmed']} confirmed, {v['reassigned']} reassigned:"
            f" {_fmt(v['accuracy'])}"
        )
    a, s = report["accounting"], report["around_swap"]
    lines += [
        "",
        "## The swap",
        "",
        "Timeline, seconds from the first send: "
        + ", ".join(f"{k.removesuffix('_at')} {v}" for k, v in report["timeline_s"].items())
        + ".",
        "",
        f"Tickets sent {a['sent']}: **lost {a['lost']}**, duplicated {a['duplicated']}"
        f" (outputs beyond the first), not routed when the run ended {a['not_routed']},"
        f" dead-lettered {a['dead_lettered']}; lost within 60 s of the swap:"
        f" {a['lost_within_60s_of_swap']}; tickets decided by both versions:"
        f" {a['decided_by_both_versions']}.",
        "",
    ]
    if s:
        m, b = s["minute_around_swap"], s["minute_before"]
        lines += [
            "| end-to-end latency | tickets | p50 | p99 | max |",
            "|---|---|---|---|---|",
            f"| minute before the swap | {b['tickets']} | {_fmt(b['p50_s'], 's')} |"
            f" {_fmt(b['p99_s'], 's')} | {_fmt(b['max_s'], 's')} |",
            f"| minute around the swap | {m['tickets']} | {_fmt(m['p50_s'], 's')} |"
            f" {_fmt(m['p99_s'], 's')} | {_fmt(m['max_s'], 's')} |",
        ]
        if "while_loading" in s:
            w = s["while_loading"]
            lines.append(
                f"| while the new version loaded (promotion to swap) | {w['tickets']} |"
                f" {_fmt(w['p50_s'], 's')} | {_fmt(w['p99_s'], 's')} | {_fmt(w['max_s'], 's')} |"
            )
        lines.append("")
    r = report.get("retrain") or {}
    if r:
        lines += [
            "## The retrain",
            "",
            f"Wall time of `ticket-router expert retrain` {r.get('wall_s')} s (exit code"
            f" {r.get('exit_code')}; by phase {r.get('phases_s')}); {r.get('verdict')}."
            f" Promotion report: {r.get('report_md')}.",
            "",
        ]
    lines += [f"Hardware: {report['hardware']}", ""]
    return "\n".join(lines)


def plot(report: Json, path: Path) -> Path:
    """Accuracy over time (per version), triage rate and p99, with the events marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, t = report["series"], report["timeline_s"]
    minutes = [x / 60 for x in s["t_s"]]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)

    def line(ax: Any, ys: list[float | None], **kw: Any) -> None:
        ax.plot(minutes, [np.nan if y is None else y for y in ys], **kw)

    line(ax1, s["accuracy_old"], label=f"routed, {report['models']['old']}", color="tab:red")
    line(ax1, s["accuracy_new"], label=f"routed, {report['models']['new']}", color="tab:green")
    line(ax1, s["top1"], label="top-1 incl. triage", color="grey", linestyle=":")
    ax1.set_ylabel("live accuracy")
    ax1.set_ylim(0.4, 1.0)
    line(ax2, s["triage_rate"], color="tab:orange")
    ax2.set_ylabel("triage rate")
    line(ax3, s["p99_s"], color="tab:blue")
    ax3.set_ylabel("e2e p99 (s)")
    ax3.set_xlabel(f"minutes from the first send ({BIN_S:.0f} s bins by send time)")
    # Labels above the top panel, promoted and swap pushed apart: they are often seconds apart.
    marks = (
        ("drift_at", "drift", "black", "center"),
        ("retrain_started_at", "retrain", "tab:purple", "center"),
        ("promoted_at", "promoted ", "tab:brown", "right"),
        ("switch_at", " swap", "tab:green", "left"),
    )
    for key, label, color, align in marks:
        if t.get(key) is not None:
            for ax in (ax1, ax2, ax3):
                ax.axvline(t[key] / 60, color=color, linestyle="--", linewidth=1)
            ax1.text(
                t[key] / 60,
                1.01,
                label,
                color=color,
                ha=align,
                va="bottom",
                fontsize=8,
                transform=ax1.get_xaxis_transform(),
            )
    ax1.legend(loc="lower left", fontsize=8)
    fig.suptitle("Drift: live accuracy falls, a retrain is promoted, the worker swaps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: Json, out_dir: Path, *, figure: bool = True) -> dict[str, Path]:
    """drift.json, drift.md and (unless told not to) drift.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "drift.json", "markdown": out_dir / "drift.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    text = render_markdown(report)
    if figure:
        paths["png"] = plot(report, out_dir / "drift.png")
        text += "\n![live accuracy over time](drift.png)\n"
    paths["markdown"].write_text(text, "utf-8")
    return paths
