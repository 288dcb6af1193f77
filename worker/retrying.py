"""Named tenacity retry policies for transient failures; short, bounded and jittered.

Retries happen at the call site, only for `RetryableError`; exhausting them re-raises, and
the pipeline then crashes rather than dead-lettering an outage.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from prometheus_client import Counter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from worker.errors import RetryableError

log = structlog.get_logger(__name__)


class Metrics(Protocol):
    """Where retries are counted: `worker.metrics.Metrics` or the feedback consumer's."""

    retries: Counter


def _before_sleep(operation: str, metrics: Metrics):  # type: ignore[no-untyped-def]
    def hook(state: RetryCallState) -> None:
        metrics.retries.labels(operation=operation).inc()
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "retry_scheduled",
            operation=operation,
            attempt=state.attempt_number,
            error_type=type(exc).__name__,
            error=str(exc),
        )

    return hook


def publish_retrying(
    metrics: Metrics, *, max_attempts: int = 8, max_delay_s: float = 60.0
) -> AsyncRetrying:
    """Retry a publish through broker blips (about a minute at most)."""
    return AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(max_attempts) | stop_after_delay(max_delay_s),
        wait=wait_exponential_jitter(multiplier=0.1, max=10.0),
        before_sleep=_before_sleep("publish", metrics),
        reraise=True,
    )


def commit_retrying(metrics: Metrics, *, max_attempts: int = 5) -> AsyncRetrying:
    """Retry an offset commit a few times; a failed commit only delays progress."""
    return AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
        before_sleep=_before_sleep("commit", metrics),
        reraise=True,
    )


def infer_retrying(metrics: Metrics, *, max_attempts: int = 3) -> AsyncRetrying:
    """Retry an inference whose engine reported a transient failure."""
    return AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
        before_sleep=_before_sleep("infer", metrics),
        reraise=True,
    )
