"""Capacity and money: machines for a volume and its peak, and what running them costs a
month, next to what a cloud LLM API would charge for the same tickets.

Owns the sizing arithmetic (measured tickets/s per core, a GPU's tickets/s as an input),
the prices (each a flag with a dated default and a named source: list prices, assumptions
to override, never measurements), the tokens a ticket costs (measured on tickets with the
expert's tokenizer, loaded from its folder with no code execution), and the report's
capacity-and-cost section. Pure apart from loading a tokenizer in `measure_tokens`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]

HOURS_PER_MONTH = 730.0  # 365 x 24 / 12
DAYS_PER_MONTH = 365 / 12
PRICES_AS_OF = "2024"


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
        "cpu_machines": max(1, math.ceil(cores_peak / inputs.cores_per_machine)),
        "cores_per_machine": inputs.cores_per_machine,
        "tickets_per_day_per_core": per_core * 86_400,
    }
    if inputs.gpu_tickets_per_s:
        gpus = peak_per_s / (inputs.gpu_tickets_per_s * inputs.target_utilisation)
        out |= {
            "tickets_per_s_per_gpu": inputs.gpu_tickets_per_s,
            "gpus_for_peak": math.ceil(gpus),
            "gpu_machines": max(1, math.ceil(gpus / inputs.gpus_per_machine)),
        }
    return out


@dataclass(frozen=True, slots=True)
class Prices:
    """Prices in US dollars: list prices (see `PRICE_SOURCES`), assumptions to override.

    Attributes:
        input_per_mtok: cloud LLM API, per million input (prompt) tokens.
        output_per_mtok: cloud LLM API, per million output tokens.
        machine_per_month: one CPU machine of `cores_per_machine` cores, a month on demand.
        gpu_machine_per_month: one GPU machine, a month on demand.
    """

    input_per_mtok: float = 2.50
    output_per_mtok: float = 10.00
    machine_per_month: float = round(0.714 * HOURS_PER_MONTH, 2)
    gpu_machine_per_month: float = round(1.006 * HOURS_PER_MONTH, 2)


PRICE_SOURCES = {
    "input_per_mtok": f"OpenAI API pricing page, GPT-4o input, list price as of {PRICES_AS_OF}",
    "output_per_mtok": f"OpenAI API pricing page, GPT-4o output, list price as of {PRICES_AS_OF}",
    "machine_per_month": "AWS EC2 On-Demand pricing page, c7i.4xlarge (16 vCPU, 32 GiB),"
    f" us-east-1, Linux, $0.714/h x 730 h, list price as of {PRICES_AS_OF}",
    "gpu_machine_per_month": "AWS EC2 On-Demand pricing page, g5.xlarge (1 NVIDIA A10G),"
    f" us-east-1, Linux, $1.006/h x 730 h, list price as of {PRICES_AS_OF}",
}

CLOUD_PROMPT = (
    "You route IT service-desk tickets. Answer with exactly one queue name from this list"
    " and nothing else.\n{queues}\n\nTicket:\n{ticket}\n\nQueue:"
)


def cloud_prompt(ticket_text: str, *, queues: Sequence[tuple[str, str]]) -> str:
    """The prompt a cloud LLM router would send per ticket: the queues with their
    descriptions (it knows nothing of the desk otherwise), then the ticket."""
    listing = "\n".join(f"- {name}: {description}" for name, description in queues)
    return CLOUD_PROMPT.replace("{queues}", listing).replace("{ticket}", ticket_text)


def measure_tokens(
    tickets: Sequence[tuple[str, str]],
    *,
    tokenizer_dir: Path,
    queues: Sequence[tuple[str, str]],
) -> Json:
    """Tokens per ticket of a cloud LLM router, counted with the expert's tokenizer.

    Args:
        tickets: (text, true queue) pairs; the answer is the queue's name.
        tokenizer_dir: a model folder with a Hugging Face tokenizer (read locally, no
            remote code).
        queues: the taxonomy's (name, description) pairs the prompt lists.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        str(tokenizer_dir), local_files_only=True, trust_remote_code=False
    )
    prompt_in = [len(tok.encode(cloud_prompt(t, queues=queues))) for t, _ in tickets]
    answer_out = [len(tok.encode(label, add_special_tokens=False)) + 1 for _, label in tickets]
    ticket_only = [len(tok.encode(t, add_special_tokens=False)) for t, _ in tickets]
    return {
        "tokenizer": str(tokenizer_dir),
        "tickets": len(tickets),
        "input_tokens_per_ticket": statistics.fmean(prompt_in),
        "input_tokens_p90": sorted(prompt_in)[int(0.9 * (len(prompt_in) - 1))],
        "ticket_tokens_per_ticket": statistics.fmean(ticket_only),
        "instruction_tokens": len(tok.encode(cloud_prompt("", queues=queues))),
        "output_tokens_per_ticket": statistics.fmean(answer_out),
        "prompt": CLOUD_PROMPT,
    }


def monthly_costs(
    cap: Json | None, *, tokens: Json | None, prices: Prices, volume_per_day: float
) -> Json:
    """Monthly cost rows: this router on CPU machines (and on GPUs when a GPU figure was
    given), and the cloud LLM API for the same tickets."""
    rows: list[Json] = []
    if cap is not None:
        rows.append(
            {
                "option": "this router, CPU machines",
                "how": f"{cap['cpu_machines']} machine(s) of {cap['cores_per_machine']} cores for"
                f" the peak, from {cap['tickets_per_s_per_core']:.2f} tickets/s per core"
                f" ({cap.get('throughput_source', 'measured')})",
                "usd_per_month": cap["cpu_machines"] * prices.machine_per_month,
            }
        )
        if "gpu_machines" in cap:
            rows.append(
                {
                    "option": "this router, GPU machines",
                    "how": f"{cap['gpu_machines']} GPU machine(s) at"
                    f" {cap['tickets_per_s_per_gpu']:.0f} tickets/s per GPU (an input, not"
                    " measured)",
                    "usd_per_month": cap["gpu_machines"] * prices.gpu_machine_per_month,
                }
            )
    if tokens is not None:
        tin, tout = tokens["input_tokens_per_ticket"], tokens["output_tokens_per_ticket"]
        per_ticket = (tin * prices.input_per_mtok + tout * prices.output_per_mtok) / 1e6
        rows.append(
            {
                "option": "cloud LLM API",
                "how": f"{tin:,.0f} input + {tout:.1f} output tokens per ticket (measured with"
                f" the expert's tokenizer) x {volume_per_day * DAYS_PER_MONTH:,.0f}"
                " tickets/month",
                "usd_per_ticket": per_ticket,
                "usd_per_month": per_ticket * volume_per_day * DAYS_PER_MONTH,
            }
        )
    return {
        "volume_per_day": volume_per_day,
        "rows": rows,
        "prices": asdict(prices),
        "price_sources": PRICE_SOURCES,
        "tokens": tokens,
    }


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def capacity_md(cap: Json | None, costs: Json | None) -> list[str]:
    """The report's capacity-and-cost section."""
    lines = ["## Capacity and cost", ""]
    if cap:
        lines += [
            f"{cap['volume_per_day']:,.0f} tickets/day: average {cap['average_per_s']:.2f}/s,"
            f" peak {cap['peak_per_s']:.2f}/s ({cap['peak_to_average']:.1f}x average)."
            f" Measured {cap['tickets_per_s_per_core']:.2f} tickets/s per CPU core"
            f" ({cap['tickets_per_day_per_core']:,.0f} per core-day).",
            f"At {_pct(cap['target_utilisation'])} utilisation at the peak: "
            f"{cap['cpu_cores_for_peak']} CPU cores = {cap['cpu_machines']} machine(s) of"
            f" {cap['cores_per_machine']} cores (the average alone needs"
            f" {cap['cpu_cores_for_average']} cores).",
        ]
        if "gpus_for_peak" in cap:
            lines.append(
                f"On GPUs at {cap['tickets_per_s_per_gpu']:.0f} tickets/s each (an input, not"
                f" measured here): {cap['gpus_for_peak']} GPU(s), {cap['gpu_machines']}"
                " machine(s)."
            )
        lines.append("")
    if costs and costs["rows"]:
        lines += [
            f"Monthly cost for {costs['volume_per_day']:,.0f} tickets a day"
            f" ({DAYS_PER_MONTH:.1f} days a month):",
            "",
            "| option | how | US$ per month |",
            "|---|---|---|",
            *(f"| {r['option']} | {r['how']} | {r['usd_per_month']:,.0f} |" for r in costs["rows"]),
            "",
            "Prices (assumptions, not measurements; each is a flag of `loadgen report`): "
            + "; ".join(
                f"{k} ${v:,.2f} ({costs['price_sources'][k]})" for k, v in costs["prices"].items()
            )
            + ".",
            "",
        ]
        t = costs.get("tokens")
        if t:
            lines += [
                f"Tokens per ticket measured on {t['tickets']:,} tickets with the tokenizer of"
                f" `{t['tokenizer']}`: {t['input_tokens_per_ticket']:,.0f} input (the queue list"
                f" with descriptions, {t['instruction_tokens']:,} tokens, plus the ticket,"
                f" {t['ticket_tokens_per_ticket']:,.0f}), {t['output_tokens_per_ticket']:.1f}"
                " output (the queue's name). A cloud model's own tokenizer counts differently;"
                " pass `--input-tokens-per-ticket` to use its count.",
                "",
            ]
    elif costs is not None:
        lines += ["No cost rows: neither a measured throughput nor tokens per ticket.", ""]
    return lines
