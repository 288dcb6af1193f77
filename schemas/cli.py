"""The `ticket-router schemas ...` commands: export the JSON Schemas, validate a payload file.

Owns argument handling and output only; the contracts live in their own modules. Exit
codes: 0 success, 1 the payload is not a valid ticket (or feedback), 2 bad arguments or
configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.dead_letter import DeadLetter
from schemas.feedback import Feedback, LabeledTicket
from schemas.feedback_parse import FeedbackParseError, NotFeedback, parse_feedback
from schemas.group_map import GroupMap, GroupMapError
from schemas.itsm import ADAPTERS, jira_update, servicenow_update, zendesk_update
from schemas.parse import TicketParseError, parse_ticket
from schemas.routing import RoutedTicket
from schemas.taxonomy import Taxonomy, TaxonomyError
from schemas.ticket import SourceSystem

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

app = typer.Typer(
    name="schemas",
    help="Wire contracts: export JSON Schemas, validate ticket and feedback payloads.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every exported JSON Schema, by file base name.

    Inbound payloads (tickets and feedback) are described as they are accepted
    (validation mode); the routed ticket, the dead letter and the labeled ticket as the
    router writes them (serialization mode).
    """
    documents = {
        adapter.schema_name: adapter.payload_json_schema() for adapter in ADAPTERS.values()
    }
    documents["routed-ticket"] = RoutedTicket.model_json_schema(mode="serialization")
    documents["dead-letter"] = DeadLetter.model_json_schema(mode="serialization")
    documents["feedback"] = Feedback.model_json_schema()
    documents["servicenow-incident-update"] = servicenow_update.payload_json_schema()
    documents["jira-issue-updated"] = jira_update.payload_json_schema()
    documents["zendesk-ticket-event"] = zendesk_update.payload_json_schema()
    documents["labeled-ticket"] = LabeledTicket.model_json_schema(mode="serialization")
    return {name: {"$schema": JSON_SCHEMA_DIALECT, **doc} for name, doc in documents.items()}


@app.command("export")
def export(
    directory: Annotated[
        Path, typer.Argument(file_okay=False, help="Directory to write *.schema.json into.")
    ],
) -> None:
    """Write one JSON Schema file per wire contract (created or overwritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, document in json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
        typer.echo(str(path))


@app.command("validate")
def validate(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="A payload file."),
    ],
    source_format: Annotated[
        SourceSystem | None,
        typer.Option("--format", help="The payload's format; detected when omitted."),
    ] = None,
) -> None:
    """Parse a payload file as the worker would; print the ticket, or the error and exit 1."""
    try:
        ticket = parse_ticket(file.read_bytes(), source_format=source_format)
    except TicketParseError as exc:
        typer.echo(f"{exc.reason}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(ticket.model_dump_json(indent=2))


@app.command("validate-feedback")
def validate_feedback(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="A feedback payload."),
    ],
    group_map: Annotated[
        Path | None, typer.Option(help="Group-map YAML (default: the packaged example).")
    ] = None,
    taxonomy: Annotated[
        Path | None, typer.Option(help="Taxonomy YAML (default: packaged).")
    ] = None,
) -> None:
    """Read a feedback payload as the feedback consumer would; print it, or why not (exit 1)."""
    try:
        tax = Taxonomy.load(taxonomy)
        groups = GroupMap.load(group_map, labels=tax.labels)
    except (TaxonomyError, GroupMapError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    try:
        result = parse_feedback(file.read_bytes(), group_map=groups, labels=tax.labels)
    except FeedbackParseError as exc:
        typer.echo(f"{exc.reason}: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if isinstance(result, NotFeedback):
        typer.echo(f"not feedback ({result.reason}): {result.source} ticket {result.ticket_id}")
        return
    typer.echo(result.model_dump_json(indent=2))
