"""How a capacity ramp is shown: one line per step, the curve as a table, the plot.

Owns the presentation of `bench.capacity_ramp`'s figures: `step_line` while the ramp runs,
`print_curve` (a Rich table and the answer) and `plot` (capacity.png). Reads figures and
the JSON document only; it runs nothing. rich and matplotlib are imported inside the
functions that draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.capacity_ramp import Phase, Slo, StepFigures


def plot(steps: Sequence[StepFigures], *, slo: Slo, path: Path) -> None:
    """p99 (and p50) latency, and delivered vs achieved send rate, against offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(steps, key=lambda s: s.offered_rate_per_s)
    x = [s.offered_rate_per_s for s in ordered]
    fig, (lat, rate) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in (("p99", [s.p99_s for s in ordered]), ("p50", [s.p50_s for s in ordered])):
        lat.plot(x, [math.nan if v is None else v for v in values], marker="o", label=name)
    lat.axhline(slo.p99_s, color="red", linestyle="--", label=f"SLO p99 {slo.p99_s:g} s")
    for s in ordered:
        if not s.passed and s.p99_s is not None:
            lat.plot([s.offered_rate_per_s], [s.p99_s], "x", color="red", markersize=10)
    lat.set(xlabel="offered rate (tickets/s)", ylabel="end-to-end latency (s)", yscale="log")
    lat.legend()
    rate.plot(x, [s.delivered_rate_per_s for s in ordered], marker="o", label="delivered")
    rate.plot(x, [s.achieved_send_rate_per_s for s in ordered], marker=".", label="sent")
    top = max(x, default=1.0)
    rate.plot([0, top], [0, top], color="grey", linestyle=":", label="delivered = offered")
    passed = [s.offered_rate_per_s for s in ordered if s.passed]
    if passed:
        rate.axvline(max(passed), color="green", linestyle="--", label="max sustainable")
    rate.set(xlabel="offered rate (tickets/s)", ylabel="tickets/s")
    rate.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def step_line(s: StepFigures) -> str:
    """One line per finished step, printed while the ramp runs."""
    verdict = "pass" if s.passed else "FAIL: " + "; ".join(s.reasons)
    return (
        f"{s.phase} {s.offered_rate_per_s:.1f}/s: sent {s.sent} at"
        f" {s.achieved_send_rate_per_s:.1f}/s, delivered {s.delivered}"
        f" ({s.delivered_rate_per_s:.1f}/s), p99 {_fmt(s.p99_s)} s,"
        f" backlog {s.backlog_at_step_end} -> {s.backlog_after_tail}: {verdict}"
    )


def print_curve(doc: dict[str, Any]) -> None:
    """The curve as a rich table, and the answer."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    slo = doc["slo"]
    t = Table(
        title=f"capacity ramp (rates per s, latencies in s): p99 <= {slo['p99_s']:g} s and"
        f" >= {slo['min_delivered_fraction']:.0%} delivered within step + tail"
    )
    for col in ("offered", "sent", "delivered", "p50", "p95", "p99", "backlog", "left", "slope"):
        t.add_column(col, justify="right")
    t.add_column("verdict")
    failures = []
    for s in sorted(doc["steps"], key=lambda s: s["offered_rate_per_s"]):
        offered = f"{s['offered_rate_per_s']:.1f}" + ("b" if s["phase"] == Phase.BISECT else "")
        if not s["passed"]:
            failures.append(f"{offered}/s: " + "; ".join(s["reasons"]))
        t.add_row(
            offered,
            f"{s['achieved_send_rate_per_s']:.1f}",
            f"{s['delivered_rate_per_s']:.1f}",
            _fmt(s["p50_s"]),
            _fmt(s["p95_s"]),
            _fmt(s["p99_s"]),
            str(s["backlog_at_step_end"]),
            str(s["backlog_after_tail"]),
            f"{s['backlog_slope_per_s']:+.1f}",
            "pass" if s["passed"] else "[red]FAIL[/]",
        )
    console.print(t)
    console.print(
        "backlog: sent but not received at the step's end; left: after the tail;"
        " slope: backlog growth over the step's second half; b: bisection step"
    )
    for line in failures:
        console.print(f"failed {line}")
    hw = doc.get("hardware")
    if isinstance(hw, dict):
        console.print(
            f"engine: dtype {hw.get('dtype')}, {hw.get('threads')} model thread(s), "
            f"cpu {hw.get('cpu', {}).get('kind')}"
        )
    summary = doc["summary"]
    best = summary["max_sustainable_rate_per_s"]
    console.print(
        "max sustainable rate: "
        + ("none" if best is None else f"[bold]{best:.1f} tickets/s[/]")
        + (
            f"; first failing {summary['first_failing_rate_per_s']:.1f}/s"
            f" (delivered {summary['saturated_delivered_rate_per_s']:.1f}/s there)"
            if summary["first_failing_rate_per_s"] is not None
            else ""
        )
        + f"; stopped: {summary['stopped_because']}"
    )
