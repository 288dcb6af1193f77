"""structlog configuration: JSON lines in production, a console renderer on a terminal.

Called once by the CLI. Library modules only call `structlog.get_logger(__name__)`.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

# Bound loggers are cached on first use (faster in production). The test suite turns this
# off: a logger cached under one command's configuration keeps it, and
# `structlog.testing.capture_logs` in a later test would not see its events.
CACHE_LOGGERS = True


class _Stderr:
    """Writes to whatever `sys.stderr` is at write time (it may be replaced after set-up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    *, level: str = "INFO", fmt: Literal["json", "console", "auto"] = "auto"
) -> None:
    """Route structlog (and stdlib logging) to stderr at `level` in the chosen format."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
