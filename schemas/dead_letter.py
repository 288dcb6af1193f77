"""The dead-letter envelope: an inbound record the router could not read, kept byte-exact.

Owns the `DeadLetter` contract and the header names that follow Kafka Connect's dead-letter
conventions. No I/O.
"""

from __future__ import annotations

import base64
from enum import StrEnum

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_serializer,
    field_validator,
)


class DeadLetterReason(StrEnum):
    """Small fixed set of reasons (used as a metric label)."""

    UNDECODABLE = "undecodable"  # not UTF-8 / not JSON
    UNKNOWN_FORMAT = "unknown_format"  # JSON, but no adapter recognises it
    INVALID = "invalid"  # recognised, but fails validation
    PROMPT_TOO_LONG = "prompt_too_long"
    UNKNOWN_GROUP = "unknown_group"  # feedback naming a group no queue is mapped to


# Kafka Connect's dead-letter-queue header names (errors.deadletterqueue.context.headers.enable).
HEADER_PREFIX = "__connect.errors."
HEADER_TOPIC = HEADER_PREFIX + "topic"
HEADER_PARTITION = HEADER_PREFIX + "partition"
HEADER_OFFSET = HEADER_PREFIX + "offset"
HEADER_EXCEPTION_CLASS = HEADER_PREFIX + "exception.class.name"
HEADER_EXCEPTION_MESSAGE = HEADER_PREFIX + "exception.message"
HEADER_STAGE = HEADER_PREFIX + "stage"
HEADER_CONNECTOR = HEADER_PREFIX + "connector.name"


# In JSON, raw bytes travel as base64 text (RFC 4648, with padding).
_BASE64: dict[str, JsonValue] = {"contentEncoding": "base64"}


class DeadLetter(BaseModel):
    """An unreadable inbound record.

    Attributes:
        raw: the record value exactly as received (base64 in JSON).
        raw_key: the record key exactly as received, if any.
        reason: the reason class.
        error_type: the exception class name.
        error: the human-readable message naming the field at fault.
        source_topic, source_partition, source_offset: where the record was read.
        failed_at: when the router gave up on it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    raw: bytes = Field(json_schema_extra=_BASE64)
    raw_key: bytes | None = Field(default=None, json_schema_extra=_BASE64)
    reason: DeadLetterReason
    error_type: str
    error: str = Field(max_length=4000)
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    failed_at: AwareDatetime

    @field_serializer("raw", "raw_key", when_used="json")
    def _b64(self, value: bytes | None) -> str | None:
        return None if value is None else base64.b64encode(value).decode("ascii")

    @field_validator("raw", "raw_key", mode="before")
    @classmethod
    def _from_b64(cls, value: object) -> object:
        if isinstance(value, str):
            return base64.b64decode(value, validate=True)
        return value

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka Connect style dead-letter headers for this record."""
        return [
            (HEADER_TOPIC, self.source_topic.encode()),
            (HEADER_PARTITION, str(self.source_partition).encode()),
            (HEADER_OFFSET, str(self.source_offset).encode()),
            (HEADER_EXCEPTION_CLASS, self.error_type.encode()),
            (HEADER_EXCEPTION_MESSAGE, self.error.encode()),
            (HEADER_STAGE, b"VALUE_CONVERTER"),
            (HEADER_CONNECTOR, b"ticket-router"),
        ]
