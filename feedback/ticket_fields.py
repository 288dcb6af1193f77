"""The structured field values the decision log keeps for each decided ticket, and reading them
back as the columns a field expert is built from.

Owns which values are kept (every structured field the routed ticket carried, by its
`expert.fields` address: `priority`, ..., `category_hints`, `custom_fields.<key>`), their
form (the canonical values `expert.fields.canonical_values` gives, the same function the
expert's input is rendered with, so a kept value is exactly what any expert reading that
address saw), and their JSON encoding in the log. No I/O.

Why every field rather than only those the serving card names: the feedback consumer does
not know the cards (it reads the routed topics, not the registry), and a desk that builds its
first field expert then retrains it finds the fields of the tickets it settled before. The
canonical form bounds the cost: reference objects keep their display value, each value at
most `expert.fields.MAX_HINT_CHARS` characters, empty fields are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from expert.fields import CUSTOM_PREFIX, MULTI_VALUED, TICKET_SCALARS, InputSpec, canonical_values

# Field values by address; a missing address is a field the ticket did not carry.
FieldValues = Mapping[str, tuple[str, ...]]


def logged_values(ticket: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The canonical values of every structured field of a routed ticket, by address.

    Args:
        ticket: the ticket's attributes as published (`Ticket` field names; values as in
            its JSON, or the `Ticket`'s own).

    Returns:
        Non-empty values only: `{"priority": ("p3",), "custom_fields.cmdb_ci": ("mail",)}`.
    """
    found: dict[str, tuple[str, ...]] = {}
    for address in (*TICKET_SCALARS, *MULTI_VALUED):
        if values := canonical_values(address, ticket.get(address)):
            found[address] = values
    custom = ticket.get("custom_fields") or {}
    for key, raw in custom.items():
        address = CUSTOM_PREFIX + key
        if values := canonical_values(address, raw):
            found[address] = values
    return found


def encode(values: FieldValues | None) -> str | None:
    """The values as stored in the log (JSON; None stays NULL: fields were not kept)."""
    if values is None:
        return None
    return json.dumps({k: list(v) for k, v in values.items()}, ensure_ascii=False)


def decode(text: str | None) -> dict[str, tuple[str, ...]] | None:
    """Stored values back (None: a decision logged before the log kept fields)."""
    if text is None:
        return None
    return {k: tuple(v) for k, v in json.loads(text).items()}


def column_values(values: FieldValues, inputs: InputSpec) -> dict[str, tuple[str, ...]]:
    """What each field of `inputs` read for the ticket, by the field's data column."""
    return {spec.column: tuple(values.get(spec.address, ())) for spec in inputs.fields}
