"""The queue taxonomy: which resolver queues exist, their tiers, and the topics they map to.

Owns loading and validating the taxonomy YAML. It does no Kafka I/O: topic creation lives in
`worker.broker`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_QUEUE_NAME = r"^[a-z][a-z0-9_]{1,63}$"
# Kafka's legal topic characters; 249 is its length limit.
_TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"


class TaxonomyError(ValueError):
    """The taxonomy file is missing, unreadable or inconsistent; the message says where."""


class Tier(StrEnum):
    """Support tier of a resolver queue."""

    L1 = "L1"
    L2 = "L2"
    L3 = "L3"


class QueueMode(StrEnum):
    """What the router does with a ticket it predicts for a queue (README: "Rolling out").

    AUTOROUTE publishes a confident ticket to the queue's topic. RECOMMEND sends it to the
    triage topic with the decision as a suggestion. SHADOW routes nothing: the ticket goes to
    the triage topic (the desk's own dispatch) and the decision to the shadow topic, where
    the feedback consumer measures it.
    """

    AUTOROUTE = "autoroute"
    RECOMMEND = "recommend"
    SHADOW = "shadow"


class Queue(BaseModel):
    """One resolver queue.

    Attributes:
        name: the label the expert answers with (snake_case, stable).
        tier: support tier.
        description: what belongs in the queue, for humans and for corpus generation.
        topic: the Kafka topic routed tickets of this queue are published to.
        mode: what the router does with tickets predicted for it (default autoroute).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_QUEUE_NAME)
    tier: Tier
    description: str = Field(min_length=1)
    topic: str = Field(pattern=_TOPIC_NAME)
    mode: QueueMode = QueueMode.AUTOROUTE


class ControlTopics(BaseModel):
    """Topics that are not a queue: inbound tickets, human triage and dead letters, the
    service desk's feedback (with its own dead-letter topic, so that the inbound tickets'
    dead-letter topic accounts for inbound records only), and the shadow decisions of
    queues in shadow mode (read by the feedback consumer, never by a desk)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inbound: str = Field(default="tickets.inbound", pattern=_TOPIC_NAME)
    triage: str = Field(default="tickets.triage", pattern=_TOPIC_NAME)
    dead_letter: str = Field(default="tickets.dead-letter", pattern=_TOPIC_NAME)
    feedback: str = Field(default="tickets.feedback", pattern=_TOPIC_NAME)
    feedback_dead_letter: str = Field(default="tickets.feedback.dead-letter", pattern=_TOPIC_NAME)
    shadow: str = Field(default="tickets.shadow", pattern=_TOPIC_NAME)


class Taxonomy(BaseModel):
    """The list of queues and the topic layout derived from it.

    Attributes:
        version: format version of the file.
        topics: the control topics.
        queues: the resolver queues, in a stable order (the expert's label order).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    topics: ControlTopics = ControlTopics()
    queues: tuple[Queue, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _names_and_topics_are_unique(self) -> Self:
        names = [q.name for q in self.queues]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"queue names must be unique; repeated: {dupes}")
        topics = [q.topic for q in self.queues] + [
            self.topics.inbound,
            self.topics.triage,
            self.topics.dead_letter,
            self.topics.feedback,
            self.topics.feedback_dead_letter,
            self.topics.shadow,
        ]
        dupes = sorted({t for t in topics if topics.count(t) > 1})
        if dupes:
            raise ValueError(f"every queue and control topic must be distinct; repeated: {dupes}")
        return self

    @property
    def labels(self) -> list[str]:
        """Queue names in taxonomy order."""
        return [q.name for q in self.queues]

    def queue(self, name: str) -> Queue:
        """Return the queue called `name`.

        Raises:
            KeyError: no such queue.
        """
        for q in self.queues:
            if q.name == name:
                return q
        raise KeyError(f"unknown queue {name!r}; known: {self.labels}")

    def topic_for(self, name: str) -> str:
        """The routed topic of queue `name`."""
        return self.queue(name).topic

    def decision_topics(self) -> list[str]:
        """The topics the router publishes its decisions to: each queue's, triage, shadow."""
        return [*(q.topic for q in self.queues), self.topics.triage, self.topics.shadow]

    def modes(self) -> dict[str, QueueMode]:
        """Each queue's mode as the taxonomy sets it."""
        return {q.name: q.mode for q in self.queues}

    def all_topics(self) -> list[str]:
        """Every topic of the layout: inbound, each queue's, triage, dead-letter, feedback,
        the feedback's dead-letter topic and the shadow topic."""
        return [
            self.topics.inbound,
            *(q.topic for q in self.queues),
            self.topics.triage,
            self.topics.dead_letter,
            self.topics.feedback,
            self.topics.feedback_dead_letter,
            self.topics.shadow,
        ]

    def with_topic_suffix(self, suffix: str) -> Taxonomy:
        """The same queues with every topic name suffixed (isolated runs on a shared cluster)."""
        return self.model_copy(
            update={
                "topics": self.topics.model_copy(
                    update={k: f"{v}{suffix}" for k, v in self.topics.model_dump().items()}
                ),
                "queues": tuple(
                    q.model_copy(update={"topic": f"{q.topic}{suffix}"}) for q in self.queues
                ),
            }
        )

    @classmethod
    def from_yaml_text(cls, text: str, *, source: str = "<text>") -> Taxonomy:
        """Parse and validate a taxonomy document.

        Raises:
            TaxonomyError: with the source and the offending field named.
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TaxonomyError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise TaxonomyError(
                f"{source}: expected a mapping with 'queues', got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            )
            raise TaxonomyError(f"{source}: invalid taxonomy: {problems}") from exc

    @classmethod
    def load(cls, path: Path | str | None = None) -> Taxonomy:
        """Load the taxonomy at `path`, or the packaged default when `path` is None.

        Raises:
            TaxonomyError: the file is missing or invalid.
        """
        if path is None:
            text = resources.files("schemas").joinpath("taxonomy.yaml").read_text("utf-8")
            return cls.from_yaml_text(text, source="default taxonomy")
        p = Path(path)
        try:
            text = p.read_text("utf-8")
        except OSError as exc:
            raise TaxonomyError(f"{p}: cannot read taxonomy: {exc.strerror}") from exc
        return cls.from_yaml_text(text, source=str(p))


def is_valid_topic_name(name: str) -> bool:
    """True when `name` is a legal Kafka topic name."""
    return re.fullmatch(_TOPIC_NAME, name) is not None and name not in {".", ".."}
