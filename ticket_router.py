"""The `ticket-router` console script: mounts each package's Typer app as a command group.

Nothing imports this module. Each package owns its commands in its own `cli.py`; the
`loadgen` group (`scenarios.cli.loadgen_app`) gathers the traffic commands (loadgen), the
measuring ones (bench) and the drift scenario (scenarios).
"""

from __future__ import annotations

import typer

from bench import cli as bench_cli
from expert.cli import app as expert_app
from feedback.cli import decisions_app, feedback
from feedback.retrain_cli import retrain
from scenarios.cli import demo, loadgen_app
from schemas.cli import app as schemas_app
from worker.cli import broker_app, topics_app, worker
from worker.route import route
from worker.tail import tail

app = typer.Typer(
    name="ticket-router",
    help="Streaming IT-ticket router: Kafka in, vLLM expert, per-queue topics out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
# Retraining is the learning loop's (feedback), which the expert package must not import.
expert_app.command("retrain")(retrain)
app.add_typer(expert_app, name="expert")
app.add_typer(loadgen_app, name="loadgen")
app.add_typer(bench_cli.app, name="bench")
app.command("worker")(worker)
app.command("route")(route)
app.command("tail")(tail)
app.command("feedback")(feedback)
app.add_typer(decisions_app, name="decisions")
app.command("demo")(demo)

if __name__ == "__main__":
    app()
