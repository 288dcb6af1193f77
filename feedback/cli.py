"""The feedback commands: `feedback` (the consumer), `decisions lookup` and `decisions labels`.

The only place the feedback consumer's signal handlers are installed and its errors mapped
to exit codes: 0 clean stop, 1 crash, 2 bad configuration (settings, taxonomy, group map),
3 broker unreachable at start, 4 decision log cannot be opened (locked by another consumer,
unreadable, another schema version).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

console = Console(stderr=True)

decisions_app = typer.Typer(
    help="Read the feedback consumer's decision log: one decision, or the labeled tickets.",
    no_args_is_help=True,
)

StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        help="The decision log (default: ROUTER_FEEDBACK__STORE_PATH's default).",
        dir_okay=False,
    ),
]
DEFAULT_STORE = Path(".state/feedback/decisions.sqlite3")


def feedback(
    config: Annotated[
        Path | None, typer.Option(help="YAML settings file (env and flags win).")
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    store: Annotated[Path | None, typer.Option(help="The decision log (SQLite file).")] = None,
    group_map: Annotated[
        Path | None, typer.Option(help="The tools' groups -> queues YAML.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = None,
    check_config: Annotated[
        bool, typer.Option(help="Validate the settings, print them, exit.")
    ] = False,
) -> None:
    """Join the service desk's feedback with the router's decisions; export live quality."""
    from schemas.group_map import GroupMap, GroupMapError
    from schemas.taxonomy import Taxonomy, TaxonomyError
    from worker.config import load_settings, masked
    from worker.logs import configure_logging

    feedback_overrides = {
        k: v for k, v in {"store_path": store, "group_map_path": group_map}.items() if v
    }
    overrides: dict[str, object] = {
        "log_level": log_level,
        "kafka": {"bootstrap_servers": bootstrap} if bootstrap else None,
        "feedback": feedback_overrides or None,
    }
    try:
        settings = load_settings(config_file=config, **overrides)
        taxonomy = Taxonomy.load(settings.taxonomy_path)
        GroupMap.load(settings.feedback.group_map_path, labels=taxonomy.labels)
    except (ValidationError, TaxonomyError, GroupMapError, ValueError) as exc:
        console.print(f"[red]invalid configuration:[/] {exc}")
        raise typer.Exit(2) from exc
    if check_config:
        Console().print_json(data=masked(settings))
        return
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    raise typer.Exit(asyncio.run(_serve(settings)))


async def _serve(settings: object) -> int:
    import structlog

    from feedback.decision_log import DecisionLogError
    from feedback.runner import started_feedback_consumer
    from worker.config import Settings
    from worker.errors import BrokerUnreachableError

    assert isinstance(settings, Settings)
    log = structlog.get_logger("feedback.cli")
    loop = asyncio.get_running_loop()
    signals_seen = 0
    current: list[object] = []

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.critical("shutdown_forced", signal=sig.name)
            os._exit(1)
        log.info("shutdown_requested", signal=sig.name)
        for running in current:
            running.stop()  # type: ignore[attr-defined]

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with started_feedback_consumer(settings) as running:
            current.append(running)
            if signals_seen:
                running.stop()
            await running.run()
    except DecisionLogError as exc:
        log.critical("decision_log_unavailable", error=str(exc))
        return 4
    except BrokerUnreachableError as exc:
        log.critical("broker_unreachable", error=str(exc))
        return 3
    except Exception as exc:
        log.critical("feedback_consumer_crashed", error_type=type(exc).__name__, error=str(exc))
        return 1
    return 0


def _open(store: Path) -> object:
    from feedback.decision_log import DecisionLog, DecisionLogError

    if not store.is_file():
        console.print(f"[red]no decision log at {store}[/]")
        raise typer.Exit(2)
    log_ = DecisionLog(store, read_only=True)
    try:
        log_.open()
    except DecisionLogError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(4) from exc
    return log_


@decisions_app.command("lookup")
def decisions_lookup(
    ticket_id: Annotated[str, typer.Argument(help="The ticket's id (the routed record's key).")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Print which expert version decided a ticket, the queue, confidence, triage or not, when."""
    from feedback.decision_log import DecisionLog

    log_ = _open(store)
    assert isinstance(log_, DecisionLog)
    try:
        found = log_.lookup(ticket_id)
    finally:
        log_.close()
    if found is None:
        console.print(f"no decision logged for ticket {ticket_id!r}")
        raise typer.Exit(1)
    typer.echo(
        json.dumps(
            {
                "ticket_id": found.ticket_id,
                "queue": found.queue,
                "confidence": found.confidence,
                "disposition": found.disposition.value,
                "triage_reason": found.triage_reason.value if found.triage_reason else None,
                "model_id": found.model_id,
                "adapter_id": found.adapter_id,
                "decided_at": found.decided_at.isoformat(),
                "source": found.source.value,
                "record": f"{found.topic}[{found.partition}]@{found.offset}",
                "fields": None if found.fields is None else dict(found.fields),
            },
            indent=2,
        )
    )


@decisions_app.command("labels")
def decisions_labels(
    out: Annotated[Path, typer.Option(help="JSONL file to write (one labeled ticket a line).")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Write the tickets humans settled (text + final queue) as JSONL for `expert build --data`."""
    from feedback.decision_log import DecisionLog

    log_ = _open(store)
    assert isinstance(log_, DecisionLog)
    count = 0
    try:
        with out.open("w", encoding="utf-8") as handle:
            for row in log_.labeled_tickets():
                handle.write(row.model_dump_json() + "\n")
                count += 1
    finally:
        log_.close()
    console.print(f"{count} labeled tickets written to {out}")
