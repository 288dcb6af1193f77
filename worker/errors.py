"""The worker's exception hierarchy: what to retry, what to dead-letter, what to crash on.

Exceptions carry their data as attributes. Owns no handling logic.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the worker raises on purpose."""


class RetryableError(RouterError):
    """An infrastructure blip that may clear: retried at the call site, bounded."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FatalError(RouterError):
    """The worker must stop without committing anything more (exit code 1)."""


class RecordTooLargeError(FatalError):
    """The broker (or the client) refuses a record this large."""


class TransactionAbortable(RouterError):
    """The open transaction must be aborted; its inputs are read again (exactly-once mode)."""


class BrokerUnreachableError(FatalError):
    """No broker answered at start-up (exit code 3)."""


class EngineUnavailableError(FatalError):
    """The inference engine failed to load or died (exit code 4 at start, 1 later)."""


class OffsetInvariantError(FatalError):
    """An offset that was neither routed nor dead-lettered was about to be committed."""


class ConfigError(RouterError):
    """Invalid configuration (exit code 2)."""
