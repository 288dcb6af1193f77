"""Number and table formatting shared by the report's Markdown sections (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def fmt(value: Any, spec: str = ".3g", unit: str = "") -> str:
    """A number with a format spec and unit; n/a for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:{spec}}{unit}"
    return f"{value}{unit}"


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals; n/a for None."""
    return "n/a" if value is None else f"{100 * value:.2f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
