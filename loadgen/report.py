"""The capacity report: Markdown + JSON + PNG figures from a run's measurements, and a cost model.

Owns turning the collect / replay / MTTR results (plain JSON-ready dicts) into one report
and the arithmetic of how many machines a volume and its peak need. It reads nothing and
measures nothing itself; the only I/O is writing the files it is asked to write.
matplotlib is imported inside the plotting function (Agg backend, no display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CapacityInputs:
    """What the cost model needs.

    Attributes:
        tickets_per_s: sustained routing throughput measured on `cpu_cores` cores.
        cpu_cores: CPU cores the measured worker(s) used.
        gpu_tickets_per_s: throughput of one GPU (an input: not measured on this machine).
        cores_per_machine: CPU cores per machine of the CPU fleet.
        gpus_per_machine: GPUs per machine of the GPU fleet.
        target_utilisation: run machines at most this busy at the peak (headroom).
    """

    tickets_per_s: float
    cpu_cores: int
    gpu_tickets_per_s: float | None = None
    cores_per_machine: int = 16
    gpus_per_machine: int = 1
    target_utilisation: float = 0.7


def capacity(inputs: CapacityInputs, *, volume_per_day: float, peak_per_s: float) -> Json:
    """Machines needed for a daily volume and its peak rate, on CPUs and on GPUs (pure).

    The fleet is sized for the peak (storms included) at `target_utilisation`; the average
    rate only tells how idle it is on average.
    """
    if inputs.tickets_per_s <= 0 or inputs.cpu_cores <= 0:
        raise ValueError("tickets_per_s and cpu_cores must be > 0")
    per_core = inputs.tickets_per_s / inputs.cpu_cores
    average_per_s = volume_per_day / 86_400
    cores_peak = peak_per_s / (per_core * inputs.target_utilisation)
    cores_avg = average_per_s / per_core
    out: Json = {
        "volume_per_day": volume_per_day,
        "average_per_s": average_per_s,
        "peak_per_s": peak_per_s,
        "peak_to_average": peak_per_s / average_per_s if average_per_s else math.nan,
        "tickets_per_s_per_core": per_core,
        "target_utilisation": inputs.target_utilisation,
        "cpu_cores_for_peak": math.ceil(cores_peak),
        "cpu_cores_for_average": math.ceil(cores_avg),
        "cpu_machines": math.ceil(cores_peak / inputs.cores_per_machine),
        "cores_per_machine": inputs.cores_per_machine,
        "tickets_per_day_per_core": per_core * 86_400,
    }
    if inputs.gpu_tickets_per_s:
        gpus = peak_per_s / (inputs.gpu_tickets_per_s * inputs.target_utilisation)
        out |= {
            "tickets_per_s_per_gpu": inputs.gpu_tickets_per_s,
            "gpus_for_peak": math.ceil(gpus),
            "gpu_machines": math.ceil(gpus / inputs.gpus_per_machine),
        }
    return out


def build(
    *,
    collect: Json,
    replay: Json | None = None,
    mttr: Json | None = None,
    capacity_figures: Json | None = None,
    traffic: Json | None = None,
) -> Json:
    """The report's JSON: headline figures first, then each section as given."""
    headline = {
        "sent": collect.get("sent"),
        "routed": collect.get("routed"),
        "triaged": collect.get("triaged"),
        "dead_lettered": collect.get("dead_lettered"),
        "lost": collect.get("lost"),
        "duplicated": collect.get("duplicated"),
        "accuracy_routed": collect.get("accuracy_routed"),
        "accuracy_top1": collect.get("accuracy_top1"),
        "triage_rate": collect.get("triage_rate"),
        "dead_letter_rate": collect.get("dead_letter_rate"),
        "throughput_per_s": collect.get("throughput_per_s"),
        "latency_p50_s": collect.get("latency_s", {}).get("p50"),
        "latency_p99_s": collect.get("latency_s", {}).get("p99"),
    }
    return {
        "headline": headline,
        "traffic": traffic,
        "replay": replay,
        "collect": collect,
        "mttr": mttr,
        "capacity": capacity_figures,
    }


def _fmt(value: Any, spec: str = ".3g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:{spec}}{unit}"
    return f"{value}{unit}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


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
    lines = [
        "## Outcomes",
        "",
        *_table(
            ["sent", "routed", "triage", "dead-letter", "LOST", "DUPLICATED", "unexpected"],
            [
                [
                    str(c["sent"]),
                    str(c["routed"]),
                    str(c["triaged"]),
                    str(c["dead_lettered"]),
                    str(c["lost"]),
                    str(c["duplicated"]),
                    str(c["unexpected"]),
                ]
            ],
        ),
        "",
        f"Accuracy of routed tickets {_pct(c['accuracy_routed'])}; top-1 accuracy including"
        f" triage guesses {_pct(c['accuracy_top1'])}; correctly routed share of all sent"
        f" {_pct(c['correct_routed_share'])}; triage rate {_pct(c['triage_rate'])};"
        f" dead-letter rate {_pct(c['dead_letter_rate'])}.",
        "",
        "End-to-end latency (send -> output record timestamp), seconds:",
        "",
        *_table(
            ["p50", "p90", "p95", "p99", "max", "mean"],
            [[_fmt(lat.get(k), ".3f") for k in ("p50", "p90", "p95", "p99", "max", "mean")]],
        ),
        "",
        "Stage means: "
        + (
            ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in (c.get("stage_mean_s") or {}).items())
            or "n/a"
        )
        + f". Throughput over the run {_fmt(c.get('throughput_per_s'), '.1f')} tickets/s;"
        f" highest backlog {max(c['series']['backlog'], default=0)} tickets.",
        "",
    ]
    if c.get("lost_ids"):
        lines += [f"LOST: {c['lost']}; first ids: {', '.join(c['lost_ids'][:20])}", ""]
    if c.get("duplicated_ids"):
        dupes = ", ".join(f"{k} x{v}" for k, v in list(c["duplicated_ids"].items())[:20])
        lines += [f"DUPLICATED: {dupes}", ""]
    return lines


def _mttr_md(m: Json, *, speedup: float | None = None) -> list[str]:
    rows = [
        [
            r["name"],
            _fmt(r["routing_latency_s"], ".3g", " s"),
            _fmt(r["mttr_mean_h"], ".2f"),
            _fmt(r["mttr_p90_h"], ".2f"),
            str(r["misrouted"]),
            str(r["triaged"]),
        ]
        for r in m["results"]
    ]
    lines = [
        "## MTTR by scenario (service-desk simulation)",
        "",
        f"{m['tickets']} tickets over {_fmt(m['days'], '.3g')} day(s). Assumptions: "
        + "; ".join(f"{k} {_assumption(v)}" for k, v in m.get("assumptions", {}).items())
        + ".",
        "",
        *_table(
            ["scenario", "routing time", "MTTR mean h", "MTTR p90 h", "misrouted", "triaged"], rows
        ),
        "",
    ]
    if speedup and speedup > 1:
        lines += [
            f"The measured routing time is the replay's end-to-end latency, and the replay ran"
            f" {_fmt(speedup, '.3g')}x faster than real time: whenever that offered more tickets"
            " per second than the worker's capacity, tickets waited in Kafka and the wait is"
            " counted here, as it is in the simulation. Latency at real-time rates:"
            " `ticket-router bench worker` and `ticket-router loadgen capacity`.",
            "",
        ]
    saved = m.get("saved_vs_baseline") or {}
    if saved:
        lines += [
            f"Hours per day saved versus `{m.get('baseline')}`:",
            "",
            *_table(
                [
                    "scenario",
                    "reference (latency x tickets)",
                    "simulated ticket-hours",
                    "agent-hours",
                ],
                [
                    [
                        name,
                        _fmt(s["reference_hours_per_day"], ".1f"),
                        _fmt(s["ticket_hours_per_day"], ".1f"),
                        _fmt(s["agent_hours_per_day"], ".1f"),
                    ]
                    for name, s in saved.items()
                ],
            ),
            "",
        ]
    return lines


def _assumption(value: Any) -> str:
    if isinstance(value, Mapping):
        if all(isinstance(v, int) for v in value.values()):
            return f"{sum(value.values())} in total"
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return _fmt(value)


def _capacity_md(cap: Json) -> list[str]:
    lines = [
        "## Capacity and cost",
        "",
        f"{_fmt(cap['volume_per_day'], ',.0f')} tickets/day: average"
        f" {_fmt(cap['average_per_s'], '.2f')}/s, peak {_fmt(cap['peak_per_s'], '.2f')}/s"
        f" ({_fmt(cap['peak_to_average'], '.1f')}x average)."
        f" Measured {_fmt(cap['tickets_per_s_per_core'], '.2f')} tickets/s per CPU core"
        f" ({_fmt(cap['tickets_per_day_per_core'], ',.0f')} per core-day).",
        f"At {_pct(cap['target_utilisation'])} utilisation at the peak: "
        f"{cap['cpu_cores_for_peak']} CPU cores = {cap['cpu_machines']} machine(s) of"
        f" {cap['cores_per_machine']} cores (the average alone needs"
        f" {cap['cpu_cores_for_average']} cores).",
    ]
    if "gpus_for_peak" in cap:
        lines.append(
            f"On GPUs at {_fmt(cap['tickets_per_s_per_gpu'], '.0f')} tickets/s each (an input,"
            f" not measured here): {cap['gpus_for_peak']} GPU(s),"
            f" {cap['gpu_machines']} machine(s)."
        )
    return [*lines, ""]


def markdown(report: Json, figures: Mapping[str, str]) -> str:
    """The report as Markdown; `figures` maps a caption to a PNG path relative to it."""
    lines = ["# Ticket router: load test and capacity report", ""]
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
            f" peak {_fmt(traffic.get('peak_per_s'), '.2f')}/s (1-min bins).",
            "",
        ]
    if report.get("replay"):
        lines += _replay_md(report["replay"])
    lines += _collect_md(report["collect"])
    if report.get("mttr"):
        lines += _mttr_md(report["mttr"], speedup=(report.get("replay") or {}).get("speedup"))
    if report.get("capacity"):
        lines += _capacity_md(report["capacity"])
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
        names = [r["name"] for r in mttr["results"]]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [r["mttr_mean_h"] for r in mttr["results"]], 0.4, label="mean")
        ax.bar([i + 0.2 for i in x], [r["mttr_p90_h"] for r in mttr["results"]], 0.4, label="p90")
        ax.set_xticks(list(x), names)
        ax.set(ylabel="MTTR (hours)")
        ax.legend()
        figures["MTTR by scenario"] = _save(fig, out_dir, "mttr.png")
    return figures


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
