"""The worker's settings: the only place the environment is read.

Precedence: CLI flags > environment (`ROUTER_` prefix, `__` between nested names) > an
optional YAML file (`--config` / `ROUTER_CONFIG_FILE`) > defaults. Built once in the CLI
and passed down explicitly; nothing else reads `os.environ` for configuration.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from expert.serving import EngineConfig
from schemas.taxonomy import QueueMode

# librdkafka settings the pipeline's correctness depends on; a user value is overridden.
ENFORCED_CONSUMER = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
}
ENFORCED_PRODUCER = {"enable.idempotence": "true", "acks": "all"}


class KafkaSettings(BaseModel):
    """Where the tickets come from and go to.

    Attributes:
        bootstrap_servers: HOST:PORT[,HOST:PORT...] of any Kafka-protocol broker.
        group_id: consumer group shared by every worker of one deployment.
        source_format: force one ITSM format for the inbound topic (else detected per record).
        session_timeout_ms: group session timeout; a short one makes joins fast.
        commit_interval_s: how often committable offsets are committed.
        security_protocol, sasl_mechanism, sasl_username, sasl_password, ssl_ca_location:
            passed to librdkafka as `security.protocol`, `sasl.*`, `ssl.ca.location`.
        extra: any other librdkafka setting, passed through to both clients.
        exactly_once: consume-transform-produce in transactions (outputs and input offsets
            committed atomically); downstream consumers must read with read_committed.
        transactional_id: the producer's transactional id (see effective_transactional_id).
        transaction_max_s, transaction_max_tickets: a transaction ends after this long or
            this many tickets, whichever comes first.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "ticket-router"
    source_format: Literal["servicenow", "jira", "zendesk", "canonical"] | None = None
    session_timeout_ms: int = Field(default=6000, ge=1000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    commit_interval_s: float = Field(default=1.0, gt=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    exactly_once: bool = False
    transactional_id: str | None = None
    transaction_max_s: float = Field(default=0.5, gt=0)
    transaction_max_tickets: int = Field(default=500, ge=1)

    def effective_transactional_id(self) -> str:
        """The producer's transactional id: stable across restarts of one worker, so a
        restarted worker fences its zombie. Defaults to `<group id>-<hostname>` (in
        Kubernetes the pod name)."""
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}"

    def common_config(self) -> dict[str, str]:
        """librdkafka settings shared by consumer and producer (secrets in clear: never log)."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf


class MetricsSettings(BaseModel):
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class RoutingSettings(BaseModel):
    """How decisions become destinations.

    Attributes:
        confidence_threshold: below it a ticket goes to human triage. None (default): the
            thresholds the expert's card recorded for its target precision on validation
            data (one per queue when the card has them, else its global one), or 0.5 when
            the card has none. A value here is ONE threshold for every queue: it overrides
            the card's per-queue thresholds too.
        deadline_s: a ticket the engine has not answered within this time goes to triage.
        modes: queue -> "autoroute", "recommend" or "shadow", overriding the taxonomy's
            `mode:` for those queues (`ROUTER_ROUTING__MODES='{"network_vpn": "shadow"}'`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    confidence_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    deadline_s: float = Field(default=30.0, gt=0)
    modes: dict[str, QueueMode] = Field(default_factory=dict)


class EngineSettings(EngineConfig, frozen=True):
    """The expert as the worker serves it: an `EngineConfig`, and where new versions appear.

    Attributes:
        registry_dir: an expert registry (`expert.registry`). The worker serves its current
            version (`model_dir`/`adapter_dir` only until a version is promoted) and swaps
            to a newly promoted one without a restart. None: serve `model_dir` for good.
        registry_poll_s: how often the registry's `current` pointer file is read (SIGHUP
            reads it at once).
        swap_mode: "auto" loads a new version beside the old one when the memory available
            fits another engine, else drains first; "overlap" and "drain_first" force one.
    """

    registry_dir: Path | None = None
    registry_poll_s: float = Field(default=2.0, gt=0)
    swap_mode: Literal["auto", "overlap", "drain_first"] = "auto"


class FeedbackSettings(BaseModel):
    """The feedback consumer (`ticket-router feedback`).

    Attributes:
        group_id: its consumer group on the feedback topic (not the workers' group).
        store_path: its decision log (SQLite; one file per consumer, rebuilt from the
            routed topics when missing).
        group_map_path: the tools' groups -> queues YAML (None: the packaged example).
        join_wait_s: how long feedback that arrived before its decision is held.
        max_held: most feedback held at once.
        decision_retention_days: decisions older than this leave the log (labels stay).
        cache_mib: SQLite page cache, the bound on the log's memory.
        metrics_port: its /metrics, /healthz, /readyz (beside a worker's 9464).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: str = "ticket-router-feedback"
    store_path: Path = Path(".state/feedback/decisions.sqlite3")
    group_map_path: Path | None = None
    join_wait_s: float = Field(default=600.0, gt=0)
    max_held: int = Field(default=100_000, ge=1)
    decision_retention_days: float | None = Field(default=90.0, gt=0)
    cache_mib: int = Field(default=16, ge=1)
    metrics_port: int = Field(default=9465, ge=0, le=65535)


class Settings(BaseSettings):
    """Everything the worker needs, validated before anything connects."""

    model_config = SettingsConfigDict(
        env_prefix="ROUTER_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        yaml_file=None,
    )

    kafka: KafkaSettings = KafkaSettings()
    engine: EngineSettings = EngineSettings(model_dir=Path(".state/models/default-expert"))
    metrics: MetricsSettings = MetricsSettings()
    routing: RoutingSettings = RoutingSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    taxonomy_path: Path | None = None
    max_in_flight: int = Field(default=256, ge=1)
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_from_plain_config(cls, value: Any) -> Any:
        # Callers that build an `EngineConfig` themselves get the worker's defaults added.
        if isinstance(value, EngineConfig) and not isinstance(value, EngineSettings):
            return value.model_dump()
        return value

    @model_validator(mode="after")
    def _grace_fits_poll_interval(self) -> Self:
        if self.shutdown_grace_s * 1000 >= self.kafka.max_poll_interval_ms:
            raise ValueError("shutdown_grace_s must be shorter than kafka.max_poll_interval_ms")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = os.environ.get("ROUTER_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(yaml_path)))
        return tuple(sources)


def load_settings(*, config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: `overrides` (CLI flags that were given) win over env and file."""
    if config_file is not None:
        os.environ["ROUTER_CONFIG_FILE"] = str(config_file)
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


_SECRET_KEY_PARTS = ("password", "secret", "token", "jaas", "credential", "key.pem", "ssl.key")


def is_secret_setting(name: str) -> bool:
    """True for librdkafka settings that carry credentials (never logged in clear)."""
    lowered = name.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings for logs and --check-config, secrets masked.

    SecretStr fields dump as '**********'; librdkafka passthrough settings whose names carry
    credentials (passwords, secrets, tokens, JAAS config, private keys) are masked too.
    """
    data = settings.model_dump(mode="json")
    extra = data["kafka"]["extra"]
    data["kafka"]["extra"] = {
        k: ("**********" if is_secret_setting(k) else v) for k, v in extra.items()
    }
    return data
