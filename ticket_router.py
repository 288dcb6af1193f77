"""The `ticket-router` console script: mounts each package's Typer app as a command group.

Nothing imports this module. Each package owns its commands in its own `cli.py`.
"""

from __future__ import annotations

import typer

from expert.cli import app as expert_app
from loadgen.bench import bench_worker
from loadgen.bench_feedback import bench_feedback
from loadgen.cli import app as loadgen_app
from loadgen.cli import demo
from schemas.cli import app as schemas_app
from worker.cli import broker_app, topics_app, worker
from worker.feedback_cli import decisions_app, feedback
from worker.retrain_cli import retrain
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
# Retraining reads the decision log (worker), which the expert package must not import.
expert_app.command("retrain")(retrain)
app.add_typer(expert_app, name="expert")
app.add_typer(loadgen_app, name="loadgen")
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
bench_app.command("worker")(bench_worker)
bench_app.command("feedback")(bench_feedback)
app.add_typer(bench_app, name="bench")
app.command("worker")(worker)
app.command("route")(route)
app.command("tail")(tail)
app.command("feedback")(feedback)
app.add_typer(decisions_app, name="decisions")
app.command("demo")(demo)

if __name__ == "__main__":
    app()
