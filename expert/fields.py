"""Structured fields as expert input: which fields an expert reads, and the one text it reads.

Owns the field spec an expert records in its card (`InputSpec`: the fields, each a canonical
address on the `Ticket` plus the data column it came from at build time, and whether the
ticket text is read at all), resolving an address on a `Ticket`, canonicalising a value so
that a build row and a served ticket spell it alike, and rendering the expert input: the
text every model of the expert reads. No I/O, no model code.

Addresses (resolved by `ticket_values`):
- `priority`, `impact`, `urgency`, `source`, `requester`: the `Ticket`'s own fields;
- `category_hints`: every hint (a multi-valued field);
- `custom_fields.<key>`: `custom_fields[<key>]` (the key may contain dots, e.g. Jira's
  `priority.name`). A reference object gives its `display_value`, else `value`, else `name`
  (ServiceNow references, Jira named objects); a list gives each item.

The expert input is one string, so that every path that feeds the expert (build, eval,
retrain, the worker, `route`) passes what it passes today: one line per field,
`"<column>: <value>"` (values of a multi-valued field joined by `" | "`, empty when missing),
then the ticket text unless the expert reads fields only. With no fields it is exactly the
ticket text: experts without fields read what they always read. The neural model reads the
lines as a short prefix; the lexical model splits them off again (`split_input`) and reads
each field as a one-hot block beside the text's n-grams.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.itsm import normalise
from schemas.ticket import MAX_HINT_CHARS, Level, Priority, Ticket

CUSTOM_PREFIX = "custom_fields."
TICKET_SCALARS = ("priority", "impact", "urgency", "source", "requester")
MULTI_VALUED = ("category_hints",)
VALUE_SEPARATOR = " | "
_REFERENCE_KEYS = ("display_value", "value", "name")
_SPACES = re.compile(r"\s+")


class FieldError(ValueError):
    """A field spec is malformed (unknown address, duplicate or unusable column name)."""


class FieldSpec(BaseModel):
    """One structured field the expert reads.

    Attributes:
        address: where the value is on a served `Ticket` (see the module docstring).
        column: the data column (CSV header or JSONL key) it is read from at build time;
            also its name in the rendered input.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(min_length=1)
    column: str = Field(min_length=1, max_length=64)

    @field_validator("address")
    @classmethod
    def _known_address(cls, address: str) -> str:
        if address in TICKET_SCALARS or address in MULTI_VALUED:
            return address
        if address.startswith(CUSTOM_PREFIX) and len(address) > len(CUSTOM_PREFIX):
            return address
        raise FieldError(
            f"unknown field address {address!r}: expected one of "
            f"{', '.join(TICKET_SCALARS + MULTI_VALUED)} or custom_fields.<key>"
        )

    @field_validator("column")
    @classmethod
    def _plain_column(cls, column: str) -> str:
        if ":" in column or "\n" in column or "\r" in column or column != column.strip():
            raise FieldError(f"field column {column!r} must not hold ':', line breaks or edges")
        return column


class InputSpec(BaseModel):
    """What the expert reads: structured fields, and the ticket text unless fields only.

    The default (no fields, text read) is every expert built before fields existed.

    Attributes:
        fields: the fields, in the order they are rendered.
        reads_text: False for an expert built from data with no text column.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fields: tuple[FieldSpec, ...] = ()
    reads_text: bool = True

    @model_validator(mode="after")
    def _usable(self) -> InputSpec:
        columns = [spec.column for spec in self.fields]
        if len(set(columns)) != len(columns):
            raise FieldError(f"field columns must be distinct: {columns}")
        if not self.reads_text and not self.fields:
            raise FieldError("an expert that reads no text must read at least one field")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """The fields' column names, in order."""
        return tuple(spec.column for spec in self.fields)


def parse_fields(option: str) -> tuple[FieldSpec, ...]:
    """`--fields` to specs: comma-separated `COLUMN` or `COLUMN=ADDRESS`.

    A bare column is the `Ticket` field of that name when there is one (`priority`,
    `category_hints`, ...), else `custom_fields.<column>`.

    Raises:
        FieldError: an empty item or an unknown address.
    """
    specs = []
    for item in option.split(","):
        column, _, address = item.strip().partition("=")
        column, address = column.strip(), address.strip()
        if not column:
            raise FieldError(f"empty field in {option!r}")
        if not address:
            known = column in TICKET_SCALARS or column in MULTI_VALUED
            address = column if known else CUSTOM_PREFIX + column
        specs.append(FieldSpec(address=address, column=column))
    return tuple(specs)


def _plain(value: object) -> str | None:
    """A JSON scalar or reference object as text; None when missing."""
    if value is None or isinstance(value, list):
        return None
    if isinstance(value, dict):
        found = next((value[k] for k in _REFERENCE_KEYS if value.get(k) not in (None, "")), None)
        return _plain(found) if not isinstance(found, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _canonical_level(text: str) -> str:
    try:
        return Level(text).value
    except ValueError:
        pass
    try:
        found = normalise.servicenow_level(text)
    except ValueError:
        return text
    return found.value if found is not None else text


def _canonical_priority(text: str) -> str:
    try:
        return Priority(text.upper()).value
    except ValueError:
        pass
    try:
        found = normalise.servicenow_priority(text)
    except ValueError:
        found = normalise.jira_priority(text)
    return found.value if found is not None else text


def canonical_value(address: str, raw: object) -> str | None:
    """One value as the expert reads it, the same for a build row and a served ticket.

    Whitespace collapsed, case folded, at most `MAX_HINT_CHARS` characters, `|` replaced
    (it separates values). Priority, impact and urgency in the `Ticket`'s vocabulary
    ("3 - Moderate" in an export and P3 on a served ServiceNow ticket both give "p3").
    Returns None for a missing or empty value.
    """
    text = _plain(raw)
    if text is None:
        return None
    text = _SPACES.sub(" ", text.replace("|", "/")).strip()
    if not text:
        return None
    if address == "priority":
        text = _canonical_priority(text)
    elif address in ("impact", "urgency"):
        text = _canonical_level(text)
    return text.casefold()[:MAX_HINT_CHARS]


def canonical_values(address: str, raw: object) -> tuple[str, ...]:
    """Every value of a field (a list gives one per item), canonical, empty ones dropped."""
    items = raw if isinstance(raw, list | tuple) else [raw]
    values = (canonical_value(address, item) for item in items)
    return tuple(dict.fromkeys(v for v in values if v is not None))


def ticket_values(ticket: Ticket, spec: FieldSpec) -> tuple[str, ...]:
    """The canonical values of one field on a served ticket (empty: the ticket lacks it)."""
    address = spec.address
    raw: Any
    if address.startswith(CUSTOM_PREFIX):
        raw = ticket.custom_fields.get(address[len(CUSTOM_PREFIX) :])
    else:
        raw = getattr(ticket, address)
    return canonical_values(address, raw)


def row_values(row: Mapping[str, object], spec: FieldSpec) -> tuple[str, ...]:
    """The canonical values of one field in a build row (CSV: one value; JSONL: a list
    gives several). A missing column is a missing value."""
    return canonical_values(spec.address, row.get(spec.column))


def render(inputs: InputSpec, *, text: str, values: Sequence[Sequence[str]]) -> str:
    """The expert input from the ticket text and each field's canonical values.

    Exactly `text` when `inputs` names no field.
    """
    if not inputs.fields:
        return text
    lines = [
        f"{spec.column}: {VALUE_SEPARATOR.join(found)}".rstrip()
        for spec, found in zip(inputs.fields, values, strict=True)
    ]
    if inputs.reads_text:
        lines.append(text)
    return "\n".join(lines)


def expert_input(ticket: Ticket, inputs: InputSpec) -> str:
    """What the expert reads for a served ticket: the one place a `Ticket` becomes expert
    input (the worker, `route` and the engines call it; build rows take `row_input`)."""
    values = [ticket_values(ticket, spec) for spec in inputs.fields]
    return render(inputs, text=ticket.text() if inputs.reads_text else "", values=values)


def row_input(row: Mapping[str, object], inputs: InputSpec, *, text: str) -> str:
    """What the expert reads for a build row whose (cleaned) text is `text`."""
    values = [row_values(row, spec) for spec in inputs.fields]
    return render(inputs, text=text if inputs.reads_text else "", values=values)


def split_input(
    expert_text: str, *, columns: Sequence[str], reads_text: bool = True
) -> tuple[list[tuple[str, ...]], str]:
    """Undo `render`: each field's values and the ticket text.

    The first `len(columns)` lines are the fields; a line that does not start with its
    column's name reads as a missing value (an input not rendered for this expert).
    """
    if not columns:
        return [], expert_text
    lines = expert_text.split("\n", len(columns) if reads_text else len(columns) - 1)
    values: list[tuple[str, ...]] = []
    for i, column in enumerate(columns):
        line = lines[i] if i < len(lines) else ""
        head = f"{column}:"
        if line.startswith(head) and (rest := line[len(head) :].strip()):
            values.append(tuple(v for v in rest.split(VALUE_SEPARATOR.strip()) if v.strip()))
        else:
            values.append(())
    values = [tuple(v.strip() for v in found) for found in values]
    text = lines[len(columns)] if reads_text and len(lines) > len(columns) else ""
    return values, text
