"""The report's MTTR sections: the headline comparison of routing methods, the desk it ran on,
the details, and the MTTR figure.

Owns how mttr.json reads to a person: on a calibrated desk (`bench.desk_steps`) the headline
gives each method's mean, median and p90 with their intervals, says which differences are
larger than their interval (and calls the others no difference), and describes the desk,
its fit and its validation; on the toy desk it keeps the assumed desk's table. Pure: it
formats what it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.markdown_fmt import fmt, pct, table

Json = dict[str, Any]
CAPTION = "MTTR by routing method"


def is_calibrated(m: Json) -> bool:
    """The comparison ran on a desk fitted on a real history."""
    return (m.get("desk") or {}).get("kind") == "calibrated"


def _saved(m: Json, name: str) -> Json:
    return (m.get("saved_vs_baseline") or {}).get(name) or {}


def _with_interval(point: float | None, interval: list[float] | None, spec: str = ".1f") -> str:
    if interval is None:
        return fmt(point, spec)
    return f"{fmt(point, spec)} [{fmt(interval[0], spec)}, {fmt(interval[1], spec)}]"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _router_note(m: Json) -> list[str]:
    a = m.get("assumptions") or {}
    used, left_out = a.get("measured_decisions"), a.get("backlogged_decisions_left_out", 0)
    router = next((r for r in m["results"] if r["name"].startswith("this router")), None)
    if router is not None and used:
        return [
            f"This router's row replays its measured decisions and end-to-end latencies: {used:,}"
            " tickets of this run sent while the router kept up (mean routing time"
            f" {fmt(router['routing_latency_s'], '.3g')} s). {left_out:,} tickets sent while"
            " it was saturated are left out: their latency is a backlog the replay built,"
            " not the router's, and never reaches this comparison.",
            "",
        ]
    if router is not None and used == 0:
        return [
            "No ticket of this run was answered while the router kept up, so this router's"
            " row uses an assumed routing time, never a backlog's.",
            "",
        ]
    return []


def headline_md(m: Json, *, figure: str | None) -> list[str]:
    """The MTTR comparison: the report's headline."""
    lines = (_calibrated_headline(m) if is_calibrated(m) else _toy_headline(m)) + _router_note(m)
    if figure:
        lines += [f"![{CAPTION}]({figure})", ""]
    return lines


def _toy_headline(m: Json) -> list[str]:
    rows = [
        [
            r["name"],
            fmt(r["routing_latency_s"], ".3g", " s"),
            fmt(r["mttr_mean_h"], ".2f"),
            fmt(r["mttr_p90_h"], ".2f"),
            str(r["misrouted"]),
            str(r["triaged"]),
            fmt(_saved(m, r["name"]).get("ticket_hours_per_day"), ",.0f"),
        ]
        for r in m["results"]
    ]
    a = m.get("assumptions") or {}
    return [
        "## Headline: time to resolve a ticket (MTTR) by routing method",
        "",
        *table(
            [
                "scenario",
                "routing time per ticket",
                "MTTR mean h",
                "MTTR p90 h",
                "misrouted",
                "to triage",
                f"ticket-hours/day saved vs {m.get('baseline')}",
            ],
            rows,
        ),
        "",
        f"One simulated day of {m['tickets']:,} tickets through the toy service desk (`--desk"
        " toy`: agents per queue staffed for the busiest hour; handling times, misroute penalty"
        " and triage time are the assumptions listed under *MTTR details*, not a real desk's)."
        f" Cloud LLM router: the reference system's {fmt(a.get('cloud_ttft_s'), '.3g')} s time"
        f" to first token, {fmt(a.get('cloud_latency_s'), '.3g')} s per classification,"
        f" {pct(a.get('cloud_accuracy'))} accuracy. Manual dispatch:"
        f" {fmt(a.get('manual_min_per_ticket'), '.3g')} dispatcher minutes per ticket,"
        f" {pct(a.get('manual_accuracy'))} accuracy.",
        "",
    ]


def _calibrated_headline(m: Json) -> list[str]:
    iv = m.get("intervals") or {}
    methods = iv.get("methods") or {}
    rows = []
    for r in m["results"]:
        ci = methods.get(r["name"], {})
        saved = _saved(m, r["name"])
        rows.append(
            [
                r["name"],
                pct(r["extras"].get("first_assignment_right")),
                _duration(r["extras"].get("routing_median_s"))
                + " / "
                + _duration(r["routing_latency_s"]),
                _with_interval(r["mttr_mean_h"], ci.get("mean_h")),
                _with_interval(r["mttr_p50_h"], ci.get("median_h")),
                _with_interval(r["mttr_p90_h"], ci.get("p90_h")),
                _with_interval(
                    saved.get("ticket_hours_per_day"),
                    saved.get("ticket_hours_per_day_interval"),
                    ",.0f",
                )
                if saved
                else "(baseline)",
            ]
        )
    desk = m["desk"]
    a = m.get("assumptions") or {}
    return [
        "## Headline: time to resolve a ticket (MTTR) by routing method",
        "",
        *table(
            [
                "routing method",
                "first assignment right",
                "routing time per ticket (median / mean)",
                "MTTR mean h [95%]",
                "median h [95%]",
                "p90 h [95%]",
                f"ticket-hours/day saved vs {m.get('baseline')} [95%]",
            ],
            rows,
        ),
        "",
        f"One simulated day of {m['tickets']:,} tickets on the desk `{desk['name']}`, fitted on"
        f" a real ticket history (`{desk['source']}`; see *The desk* below). The desk's own"
        f" dispatch sends {pct(desk['first_assignment_accuracy'])} of tickets to the right group"
        " first (measured in its history); a ticket sent to a wrong group first waits there"
        f" (median {fmt(desk['first_hop_median_h'], '.1f')} h) before it is passed on. Cloud"
        f" LLM router: {fmt(a.get('cloud_latency_s'), '.3g')} s per ticket,"
        f" {pct(a.get('cloud_accuracy'))} accuracy (the reference system's). Tickets a router"
        " sends to triage are dispatched by the desk's people.",
        "",
        *_differences_md(iv, baseline=m.get("baseline")),
    ]


def _differences_md(iv: Json, *, baseline: str | None) -> list[str]:
    diffs = iv.get("differences") or {}
    if not diffs:
        return ["No replicates in the desk file: no intervals, so no difference is claimed.", ""]
    lines = [
        f"Intervals: {iv['interval'][0]}-{iv['interval'][1]} percentiles over"
        f" {iv.get('replicates')} replicates, each with the desk refitted on a bootstrap"
        " resample of its history's incidents, a bootstrap resample of"
        f" {iv.get('replicate_tickets'):,} of the day's tickets and its own seed. A difference"
        " whose interval contains zero is reported as **no difference**.",
        "",
    ]
    for pair, d in diffs.items():
        parts = []
        for key, label in (("mean_h", "mean"), ("median_h", "median"), ("p90_h", "p90")):
            x = d[key]
            verdict = (
                "**no difference**" if x["verdict"] == "no difference" else f"**{x['verdict']}**"
            )
            parts.append(
                f"{label} {x['point']:+.1f} h [{x['interval'][0]:+.1f}, {x['interval'][1]:+.1f}]"
                f" {verdict}"
            )
        lines.append(f"- {pair}: " + "; ".join(parts) + ".")
    return [*lines, ""]


def desk_md(m: Json) -> list[str]:
    """The desk the comparison ran on: where it came from, what it fitted, how well."""
    if not is_calibrated(m):
        return []
    d = m["desk"]
    v = d.get("validation") or {}
    o, s = v.get("observed") or {}, v.get("simulated") or {}
    fw = v.get("forward_check") or {}
    conf = d.get("confounding") or {}
    lines = [
        "## The desk",
        "",
        f"`{d['name']}`: fitted on `{d['source']}`"
        + (f" ({d['citation']})" if d.get("citation") else "")
        + f" ({d['format']}, {d['incidents']:,}"
        f" incidents, {d['censored']} still open at the export's end and kept as censored),"
        f" on {d['fitted_at']}. Its times are opening to resolution in calendar hours: nights,"
        " weekends and pending states included, at the desk's own staffing.",
        "",
        f"**Does it reproduce the desk?** {v.get('method', '')}: median"
        f" {fmt(o.get('median_h'), '.1f')} h observed vs {fmt(s.get('median_h'), '.1f')} h"
        f" simulated, p90 {fmt(o.get('p90_h'), '.0f')} h vs {fmt(s.get('p90_h'), '.0f')} h,"
        f" first assignment right {pct(o.get('first_assignment_accuracy'))} vs"
        f" {pct(s.get('first_assignment_accuracy'))}: "
        + ("within 20%." if v.get("reproduces_the_desk") else "NOT within 20%.")
        + (_forward_md(fw) if fw else ""),
        "",
        f"**Reassigned tickets are also harder tickets.** {conf.get('explanation', '')}",
        "",
        "**This router's accuracy** in the headline is measured on this run's tickets (the"
        " demo's taxonomy), not on this desk's: the desk's groups and tickets are anonymised,"
        " so the comparison assumes the router and the cloud LLM would route this desk's"
        " tickets as well as they route the run's. Re-run `loadgen mttr --router-accuracy`"
        " with your own measured accuracy to see your case.",
        "",
    ]
    return lines


def _forward_md(fw: Json) -> str:
    o, s = fw.get("observed") or {}, fw.get("simulated") or {}
    ok = all(c.get("within_20pct") for c in (fw.get("within_20pct") or {}).values())
    return (
        " The forward check (the last block, fitted only on the blocks before it): median"
        f" {fmt(o.get('median_h'), '.1f')} h observed vs {fmt(s.get('median_h'), '.1f')} h"
        f" simulated, p90 {fmt(o.get('p90_h'), '.0f')} h vs {fmt(s.get('p90_h'), '.0f')} h: "
        + (
            "within 20%."
            if ok
            else "NOT within 20%: those incidents were slower than any before them, which a"
            " desk fitted on the earlier ones cannot know (drift, see `calibration.md`)."
        )
    )


def _assumption(value: Any) -> str:
    if isinstance(value, Mapping):
        if all(isinstance(v, int) for v in value.values()):
            return f"{sum(value.values())} in total"
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return fmt(value)


def details_md(m: Json) -> list[str]:
    """Assumptions and the hours saved, each way of counting."""
    lines = [
        "## MTTR details (service-desk simulation)",
        "",
        f"{m['tickets']} tickets over {fmt(m['days'], '.3g')} day(s). Assumptions: "
        + "; ".join(f"{k} {_assumption(v)}" for k, v in m.get("assumptions", {}).items())
        + ".",
        "",
    ]
    saved = m.get("saved_vs_baseline") or {}
    if saved:
        lines += [
            f"Hours per day saved versus `{m.get('baseline')}`:",
            "",
            *table(
                [
                    "scenario",
                    "reference (latency x tickets)",
                    "simulated ticket-hours",
                    "agent-hours (assumed minutes)",
                ],
                [
                    [
                        name,
                        fmt(s["reference_hours_per_day"], ",.1f"),
                        fmt(s["ticket_hours_per_day"], ",.1f"),
                        fmt(s["agent_hours_per_day"], ",.1f"),
                    ]
                    for name, s in saved.items()
                ],
            ),  # fmt: skip
            "",
        ]
    return lines


def mttr_png(plt: Any, m: Json, out_dir: Path, save: Any) -> str:
    """Bars of mean and p90 (and median, with intervals, on a calibrated desk)."""
    results = m["results"]
    names = [f"{r['name']}\n({fmt(r['routing_latency_s'], '.3g')} s/ticket)" for r in results]
    methods = (m.get("intervals") or {}).get("methods") or {}
    fig, ax = plt.subplots(figsize=(9, 4))
    x = list(range(len(names)))
    series = [("mean", "mttr_mean_h", "mean_h"), ("p90", "mttr_p90_h", "p90_h")]
    if is_calibrated(m):
        series.insert(1, ("median", "mttr_p50_h", "median_h"))
    width = 0.8 / len(series)
    for j, (label, key, ci_key) in enumerate(series):
        values = [r[key] for r in results]
        errors = None
        if methods:
            lo = [v - methods.get(r["name"], {}).get(ci_key, [v, v])[0] for v, r in
                  zip(values, results, strict=True)]  # fmt: skip
            hi = [methods.get(r["name"], {}).get(ci_key, [v, v])[1] - v for v, r in
                  zip(values, results, strict=True)]  # fmt: skip
            errors = [lo, hi]
        offset = (j - (len(series) - 1) / 2) * width
        bars = ax.bar([i + offset for i in x], values, width, yerr=errors, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names, fontsize=8)
    where = f"desk {m['desk']['name']}" if is_calibrated(m) else "toy desk"
    ax.set(ylabel="time to resolve (hours)", title=f"MTTR by routing method ({where})")
    ax.legend()
    return str(save(fig, out_dir, "mttr.png"))
