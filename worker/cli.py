"""The worker's commands: `broker up|down|status`, `topics create|list`, `worker`, `bench worker`.

The only place that installs signal handlers and maps errors to exit codes:
0 clean stop, 1 crash, 2 bad config, 3 broker unreachable at start, 4 engine/model failed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from schemas.taxonomy import Taxonomy, TaxonomyError
from worker.policy import modes_in_force

console = Console(stderr=True)
out = Console()

broker_app = typer.Typer(
    help="Run the embedded Kafka-protocol broker (local use and tests).", no_args_is_help=True
)
topics_app = typer.Typer(help="Create the topic layout on any Kafka.", no_args_is_help=True)

StateDir = Annotated[
    Path, typer.Option(help="Where the broker's pid and log live.", envvar="ROUTER_STATE_DIR")
]
TaxonomyOpt = Annotated[
    Path | None, typer.Option("--taxonomy", help="Taxonomy YAML (default: packaged).")
]
PartitionsOpt = Annotated[int, typer.Option(min=1, help="Partitions per topic.")]


def _load_taxonomy(path: Path | None) -> Taxonomy:
    try:
        return Taxonomy.load(path)
    except TaxonomyError as exc:
        console.print(f"[red]taxonomy error:[/] {exc}")
        raise typer.Exit(2) from exc


@broker_app.command("up")
def broker_up(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1.")] = 9092,
    state_dir: StateDir = Path(".state"),
    taxonomy: TaxonomyOpt = None,
    partitions: PartitionsOpt = 6,
) -> None:
    """Start the embedded broker, create the topic layout, print the bootstrap address."""
    from worker.broker import EmbeddedBroker, TopicLayout, create_layout
    from worker.errors import BrokerUnreachableError

    tax = _load_taxonomy(taxonomy)
    broker = EmbeddedBroker(state_dir=state_dir, port=port)
    try:
        pid = broker.start()
    except BrokerUnreachableError as exc:
        console.print(f"[red]broker did not start:[/] {exc} (log: {broker.log_file})")
        raise typer.Exit(3) from exc
    created = create_layout(broker.bootstrap, TopicLayout.from_taxonomy(tax, partitions=partitions))
    console.print(f"broker pid {pid}, log {broker.log_file}; created {len(created)} topics")
    out.print(broker.bootstrap)


@broker_app.command("down")
def broker_down(state_dir: StateDir = Path(".state")) -> None:
    """Stop the embedded broker started from this state directory."""
    from worker.broker import EmbeddedBroker

    stopped = EmbeddedBroker(state_dir=state_dir).stop()
    console.print("broker stopped" if stopped else "no broker was running")


@broker_app.command("status")
def broker_status(state_dir: StateDir = Path(".state")) -> None:
    """Exit 0 and print the bootstrap address when the embedded broker runs, else exit 1."""
    from worker.broker import EmbeddedBroker

    broker = EmbeddedBroker(state_dir=state_dir)
    if broker.running_pid() is None:
        console.print("no broker running")
        raise typer.Exit(1)
    out.print(broker.bootstrap)


@topics_app.command("create")
def topics_create(
    bootstrap: Annotated[str, typer.Option(help="HOST:PORT of any Kafka.")],
    taxonomy: TaxonomyOpt = None,
    partitions: PartitionsOpt = 6,
    replication_factor: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Create the router's topics (inbound, one per queue, triage, dead-letter) if missing."""
    from worker.broker import TopicLayout, create_layout

    layout = TopicLayout.from_taxonomy(_load_taxonomy(taxonomy), partitions=partitions)
    created = create_layout(bootstrap, layout, replication_factor=replication_factor)
    console.print(f"{len(created)} created, {len(layout.topics) - len(created)} already there")
    for name in layout.topics:
        out.print(name)


@topics_app.command("list")
def topics_list(bootstrap: Annotated[str, typer.Option(help="HOST:PORT of any Kafka.")]) -> None:
    """List the cluster's topics with their partition counts."""
    from worker.kafka_io import list_topics

    for name, parts in sorted(list_topics(bootstrap).items()):
        out.print(f"{name}\t{parts}")


def worker(
    config: Annotated[
        Path | None, typer.Option(help="YAML settings file (env and flags win).")
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers.")] = None,
    model: Annotated[Path | None, typer.Option(help="Expert model folder.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="Tickets in flight at most.")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = None,
    check_config: Annotated[
        bool, typer.Option(help="Validate the settings, print them, exit.")
    ] = False,
) -> None:
    """Route tickets: inbound topic -> expert -> per-queue / triage / dead-letter topics."""
    from worker.config import load_settings, masked
    from worker.logs import configure_logging

    overrides: dict[str, object] = {
        "max_in_flight": max_in_flight,
        "log_level": log_level,
        "kafka": {"bootstrap_servers": bootstrap} if bootstrap else None,
        "engine": {"model_dir": model} if model else None,
    }
    try:
        settings = load_settings(config_file=config, **overrides)
        modes_in_force(Taxonomy.load(settings.taxonomy_path), settings.routing.modes)
    except (ValidationError, TaxonomyError, ValueError) as exc:
        console.print(f"[red]invalid configuration:[/] {exc}")
        raise typer.Exit(2) from exc
    if check_config:
        from expert.serving import engine_placement

        placement = engine_placement(settings.engine, streaming=True)
        console.print(
            f"cpu: {placement.cpu['kind']} ({placement.cpu['model_name']}); engine format: "
            f"{placement.dtype} ({placement.reason}); model threads: {placement.threads}"
        )
        out.print_json(data={**masked(settings), "hardware": placement.as_dict()})
        return
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    raise typer.Exit(asyncio.run(_serve(settings)))


async def _serve(settings: object) -> int:
    import structlog

    from worker.config import Settings
    from worker.errors import BrokerUnreachableError, EngineUnavailableError
    from worker.runner import started_worker

    assert isinstance(settings, Settings)
    log = structlog.get_logger("worker.cli")
    loop = asyncio.get_running_loop()
    signals_seen = 0
    current: list[object] = []

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            log.critical("shutdown_forced", signal=sig.name)
            _kill_children()
            os._exit(1)
        log.info("shutdown_requested", signal=sig.name)
        for w in current:
            w.stop()  # type: ignore[attr-defined]

    def on_hangup() -> None:
        # SIGHUP: read the expert registry's pointer now (no restart, no drain).
        reloaded = any(w.reload() for w in current)  # type: ignore[attr-defined]
        log.info("reload_requested", signal="SIGHUP", registry=reloaded)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        async with started_worker(settings) as w:
            current.append(w)
            if signals_seen:
                w.stop()
            await w.pipeline.run(w.source)
    except EngineUnavailableError as exc:
        log.critical("engine_unavailable", error=str(exc))
        return 4
    except BrokerUnreachableError as exc:
        log.critical("broker_unreachable", error=str(exc))
        return 3
    except Exception as exc:
        log.critical("worker_crashed", error_type=type(exc).__name__, error=str(exc))
        return 1
    return 0


def _kill_children() -> None:
    """Take the engine-core subprocess down with us on a forced exit."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            continue
