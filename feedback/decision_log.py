"""The decision log: every routing decision by ticket id, and the feedback joined with it.

Owns one SQLite file per feedback consumer (the only `sqlite3` import): the decisions read
from the routed and triage topics with the position reached in each partition (stored in the
same transaction, so a restart resumes exactly where the file ends, and a lost file is
rebuilt from the topics), the labels (the latest feedback per ticket, with the text, field
values and the decision it was judged against), and the feedback held while its decision is
not known yet. Each decision keeps the routed ticket's structured field values
(`feedback.ticket_fields`) so that a field expert can be retrained; a file written before
they were kept gains the column on open, its older rows read as "not kept". Memory stays
bounded whatever the file holds: SQLite keeps at most `cache_mib` of pages in RAM and every
read streams.

It decides nothing about Kafka or metrics (that is `feedback.consumer`); judging is one
rule: a decision is right when the human's final queue is the queue it chose.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from feedback.ticket_fields import decode, encode, logged_values
from schemas.feedback import Feedback, LabeledTicket
from schemas.routing import Disposition, TriageReason
from schemas.ticket import SourceSystem, Ticket

TP = tuple[str, int]
SCHEMA_VERSION = 1
# Columns added after the first release (older files gain them on open, NULL in old rows).
_ADDED_COLUMNS = {"decisions": ("fields",), "labels": ("fields",)}
# SQLite's default limit on bound variables is 32766; stay well below it per IN (...).
_IN_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    ticket_id TEXT PRIMARY KEY,
    queue TEXT,
    confidence REAL NOT NULL,
    disposition TEXT NOT NULL,
    triage_reason TEXT,
    model_id TEXT NOT NULL,
    adapter_id TEXT,
    decided_at REAL NOT NULL,
    source TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    fields TEXT,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_decided_at ON decisions (decided_at);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS labels (
    ticket_id TEXT PRIMARY KEY,
    final_queue TEXT NOT NULL,
    outcome TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    source TEXT NOT NULL,
    feedback TEXT NOT NULL,
    subject TEXT,
    body TEXT,
    fields TEXT,
    model_id TEXT,
    decided_queue TEXT,
    disposition TEXT,
    correct INTEGER,
    judged_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_judged_at ON labels (judged_at) WHERE judged_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL,
    feedback TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_ticket ON pending (ticket_id);
CREATE INDEX IF NOT EXISTS pending_received ON pending (received_at);
"""


class DecisionLogError(RuntimeError):
    """The store cannot be opened or written (disk, lock, schema): the consumer must stop."""


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One routing decision as the router published it.

    Attributes:
        ticket_id: the ticket's id (the routed record's key).
        queue: the queue the expert chose (None: the engine missed its deadline).
        confidence: its probability.
        disposition: routed to the queue, or sent to triage.
        triage_reason: why it went to triage.
        model_id, adapter_id: the expert version that decided (`router.model`).
        decided_at: when the engine answered.
        source: the ITSM tool the ticket came from.
        subject, body: the ticket's text as routed.
        topic, partition, offset: where the routed record is.
        fields: the ticket's structured field values by address, canonical as the expert
            reads them (`feedback.ticket_fields`); None when logged before they were kept.
    """

    ticket_id: str
    queue: str | None
    confidence: float
    disposition: Disposition
    triage_reason: TriageReason | None
    model_id: str
    adapter_id: str | None
    decided_at: datetime
    source: SourceSystem
    subject: str
    body: str
    topic: str
    partition: int
    offset: int
    fields: Mapping[str, tuple[str, ...]] | None = None

    @property
    def text(self) -> str:
        """The text the expert classified (`Ticket.text()`, email noise removed)."""
        return Ticket.model_construct(subject=self.subject, body=self.body).text()


class _RoutedTicket(BaseModel):
    """The fields of `schemas.routing.RoutedTicket` the log keeps (the rest is ignored)."""

    model_config = ConfigDict(extra="ignore")

    class _Ticket(BaseModel):
        model_config = ConfigDict(extra="ignore")
        id: str
        source: SourceSystem = SourceSystem.CANONICAL
        subject: str
        body: str = ""
        # The structured fields, as published (read into `LoggedDecision.fields`).
        requester: str | None = None
        priority: str | None = None
        impact: str | None = None
        urgency: str | None = None
        category_hints: list[str] = []
        custom_fields: dict[str, Any] = {}

    class _Decision(BaseModel):
        model_config = ConfigDict(extra="ignore")
        queue: str | None
        confidence: float
        model_id: str
        adapter_id: str | None = None

    ticket: _Ticket
    decision: _Decision
    disposition: Disposition
    triage_reason: TriageReason | None = None
    decided_at: AwareDatetime


def decode_decision(*, topic: str, partition: int, offset: int, value: bytes) -> LoggedDecision:
    """Read a routed (or triage) record's value.

    Raises:
        ValueError: the value is not a routed ticket (pydantic's ValidationError is one).
    """
    routed = _RoutedTicket.model_validate_json(value)
    return LoggedDecision(
        ticket_id=routed.ticket.id,
        queue=routed.decision.queue,
        confidence=routed.decision.confidence,
        disposition=routed.disposition,
        triage_reason=routed.triage_reason,
        model_id=routed.decision.model_id,
        adapter_id=routed.decision.adapter_id,
        decided_at=routed.decided_at,
        source=routed.ticket.source,
        subject=routed.ticket.subject,
        body=routed.ticket.body,
        topic=topic,
        partition=partition,
        offset=offset,
        fields=logged_values(dict(routed.ticket)),
    )


@dataclass(frozen=True, slots=True)
class Judgement:
    """Feedback joined with the decision it is about.

    Attributes:
        feedback: the feedback.
        decision: the decision.
        first: True for the ticket's first judgement (later feedback revises the label).
        correct: the final queue is the decided queue (None: the router named no queue).
        held_s: how long the feedback waited for its decision (0 when it was known).
    """

    feedback: Feedback
    decision: LoggedDecision
    first: bool
    correct: bool | None
    held_s: float


@dataclass(frozen=True, slots=True)
class FeedbackStored:
    """What storing one feedback did: joined (`judgement`), held for later, or stale."""

    feedback: Feedback
    judgement: Judgement | None = None
    held: bool = False


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Judged decisions whose first feedback arrived since a point in time."""

    routed: int
    routed_correct: int
    triaged: int
    triaged_guess_right: int


# ---------------------------------------------------------------------------- the store


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class DecisionLog:
    """The SQLite decision log of one feedback consumer.

    Args:
        path: the database file (created with its folder when missing).
        cache_mib: most page cache SQLite may hold in memory.
        durable: fsync every commit (`synchronous=FULL`); without it a power loss may lose
            the last commits (a process crash never does).
        read_only: open an existing file for lookups beside a running consumer.
    """

    def __init__(
        self, path: Path, *, cache_mib: int = 16, durable: bool = True, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.cache_mib = cache_mib
        self.durable = durable
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # What to select for the field values: "fields", or NULL in a file from before them
        # opened read-only (a writer adds the column).
        self._fields = {"decisions": "NULL", "labels": "NULL"}

    # -- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) the file; a writer takes an exclusive lock on it.

        Raises:
            DecisionLogError: unreadable file, another consumer holds it, wrong schema.
        """
        try:
            if self.read_only:
                uri = f"file:{self.path}?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, isolation_level=None, timeout=10, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock()
                # Opened here, then used only from the consumer's one store thread.
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, timeout=10, check_same_thread=False
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                sync = "FULL" if self.durable else "NORMAL"
                self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.execute(f"PRAGMA cache_size=-{int(self.cache_mib) * 1024}")
            self._db.execute("PRAGMA mmap_size=0")
            if not self.read_only:
                self._db.executescript(_SCHEMA)
                self._check_version()
                self._add_columns()
            for table in self._fields:
                if "fields" in self._columns(table):
                    self._fields[table] = "fields"
        except sqlite3.Error as exc:
            self.close()
            raise DecisionLogError(f"{self.path}: cannot open the decision log: {exc}") from exc

    def _lock(self) -> None:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise DecisionLogError(
                f"{self.path}: another feedback consumer writes this decision log"
            ) from exc
        self._lock_fd = fd

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise DecisionLogError(
                f"{self.path}: schema version {row[0]}, this router reads {SCHEMA_VERSION}; "
                "move the file away and the consumer rebuilds it from the topics"
            )

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def _add_columns(self) -> None:
        """Columns added since the file was created: added, NULL in its older rows (the
        schema version stays: an older consumer still reads and writes such a file)."""
        for table, columns in _ADDED_COLUMNS.items():
            have = self._columns(table)
            for column in columns:
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")

    def close(self) -> None:
        """Close the file and release the lock (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("DecisionLog.open() was not called")
        return self._db

    def _write(self) -> _Transaction:
        return _Transaction(self.db)

    # -- decisions -----------------------------------------------------------------------

    def positions(self) -> dict[TP, int]:
        """The next offset to read per routed/triage partition (where the file ends)."""
        rows = self.db.execute("SELECT topic, partition, next_offset FROM positions")
        return {(topic, partition): offset for topic, partition, offset in rows}

    def add_decisions(
        self, decisions: Sequence[LoggedDecision], positions: Mapping[TP, int], *, now: float
    ) -> list[Judgement]:
        """Store decisions and the positions reached, then join feedback held for them.

        A ticket decided twice (a redelivered ticket, or one routed again) keeps its latest
        decision. Everything is one transaction.

        Returns:
            The judgements of held feedback whose decision just arrived.
        """
        with self._write():
            self.db.executemany(
                """
                INSERT INTO decisions (ticket_id, queue, confidence, disposition,
                    triage_reason, model_id, adapter_id, decided_at, source, subject, body,
                    fields, topic, partition, "offset")
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (ticket_id) DO UPDATE SET
                    queue = excluded.queue, confidence = excluded.confidence,
                    disposition = excluded.disposition, triage_reason = excluded.triage_reason,
                    model_id = excluded.model_id, adapter_id = excluded.adapter_id,
                    decided_at = excluded.decided_at, source = excluded.source,
                    subject = excluded.subject, body = excluded.body, fields = excluded.fields,
                    topic = excluded.topic,
                    partition = excluded.partition, "offset" = excluded."offset"
                WHERE excluded.decided_at >= decisions.decided_at
                """,
                [
                    (
                        d.ticket_id,
                        d.queue,
                        d.confidence,
                        d.disposition.value,
                        d.triage_reason.value if d.triage_reason else None,
                        d.model_id,
                        d.adapter_id,
                        _ts(d.decided_at),
                        d.source.value,
                        d.subject,
                        d.body,
                        encode(d.fields),
                        d.topic,
                        d.partition,
                        d.offset,
                    )
                    for d in decisions
                ],
            )
            self.db.executemany(
                """
                INSERT INTO positions (topic, partition, next_offset) VALUES (?, ?, ?)
                ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset
                """,
                [(t, p, o) for (t, p), o in positions.items()],
            )
            return self._join_held(sorted({d.ticket_id for d in decisions}), now=now)

    def _join_held(self, ticket_ids: list[str], *, now: float) -> list[Judgement]:
        held: list[tuple[int, str, str, float]] = []
        for chunk in _chunks(ticket_ids):
            marks = ",".join("?" * len(chunk))
            held += self.db.execute(
                f"SELECT seq, ticket_id, feedback, received_at FROM pending "  # noqa: S608 - only '?' marks are formatted in
                f"WHERE ticket_id IN ({marks})",
                chunk,
            ).fetchall()
        judgements = []
        for seq, ticket_id, text, received_at in sorted(held):
            decision = self._decision(ticket_id)
            feedback = Feedback.model_validate_json(text)
            judgement = self._store_label(
                feedback, decision, now=now, held_s=max(0.0, now - received_at)
            )
            if judgement is not None:
                judgements.append(judgement)
            self.db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
        return judgements

    def lookup(self, ticket_id: str) -> LoggedDecision | None:
        """The latest decision logged for `ticket_id`, or None."""
        return self._decision(ticket_id)

    def _decision(self, ticket_id: str) -> LoggedDecision | None:
        row = self.db.execute(
            f"""
            SELECT ticket_id, queue, confidence, disposition, triage_reason, model_id,
                adapter_id, decided_at, source, subject, body, topic, partition, "offset",
                {self._fields["decisions"]}
            FROM decisions WHERE ticket_id = ?
            """,  # noqa: S608 - a column name or NULL is formatted in
            (ticket_id,),
        ).fetchone()
        if row is None:
            return None
        return LoggedDecision(
            ticket_id=row[0],
            queue=row[1],
            confidence=row[2],
            disposition=Disposition(row[3]),
            triage_reason=TriageReason(row[4]) if row[4] else None,
            model_id=row[5],
            adapter_id=row[6],
            decided_at=_dt(row[7]),
            source=SourceSystem(row[8]),
            subject=row[9],
            body=row[10],
            topic=row[11],
            partition=row[12],
            offset=row[13],
            fields=decode(row[14]),
        )

    def count_decisions(self) -> int:
        """How many tickets have a decision in the log."""
        return int(self.db.execute("SELECT count(*) FROM decisions").fetchone()[0])

    def prune_decisions(self, *, decided_before: float) -> int:
        """Delete decisions older than `decided_before` (labels keep their own copy)."""
        with self._write():
            cursor = self.db.execute(
                "DELETE FROM decisions WHERE decided_at < ?", (decided_before,)
            )
            return cursor.rowcount

    # -- feedback ------------------------------------------------------------------------

    def add_feedback(self, items: Sequence[Feedback], *, now: float) -> list[FeedbackStored]:
        """Join each feedback with its decision, or hold it until the decision arrives.

        One transaction for the batch; the outcomes are in the items' order.
        """
        out = []
        with self._write():
            for feedback in items:
                decision = self._decision(feedback.ticket_id)
                if decision is None:
                    self.db.execute(
                        "INSERT INTO pending (ticket_id, feedback, received_at) VALUES (?, ?, ?)",
                        (feedback.ticket_id, feedback.model_dump_json(), now),
                    )
                    out.append(FeedbackStored(feedback, held=True))
                    continue
                judgement = self._store_label(feedback, decision, now=now, held_s=0.0)
                out.append(FeedbackStored(feedback, judgement=judgement))
        return out

    def expire_held(self, *, received_before: float, max_held: int, now: float) -> list[Feedback]:
        """Give up on held feedback received before `received_before`, and on the oldest
        beyond `max_held`: each is stored as a label without a decision.

        Returns:
            The feedback given up on (feedback without a decision).
        """
        with self._write():
            rows = self.db.execute(
                "SELECT seq, feedback FROM pending WHERE received_at < ? ORDER BY seq",
                (received_before,),
            ).fetchall()
            excess = self.pending_count() - len(rows) - max_held
            if excess > 0:
                rows += self.db.execute(
                    "SELECT seq, feedback FROM pending WHERE received_at >= ? ORDER BY seq LIMIT ?",
                    (received_before, excess),
                ).fetchall()
            expired = []
            for seq, text in rows:
                feedback = Feedback.model_validate_json(text)
                self._store_label(feedback, None, now=now, held_s=0.0)
                self.db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
                expired.append(feedback)
        return expired

    def pending_count(self) -> int:
        """Feedback held until its decision is known."""
        return int(self.db.execute("SELECT count(*) FROM pending").fetchone()[0])

    def _store_label(
        self, feedback: Feedback, decision: LoggedDecision | None, *, now: float, held_s: float
    ) -> Judgement | None:
        """Upsert the ticket's label (the latest feedback wins); judge it against `decision`.

        Returns:
            The judgement, or None without a decision or for feedback older than the label.
        """
        row = self.db.execute(
            "SELECT occurred_at, judged_at FROM labels WHERE ticket_id = ?", (feedback.ticket_id,)
        ).fetchone()
        occurred = _ts(feedback.occurred_at)
        if row is not None and occurred < row[0]:
            return None  # an older event arriving late: the label already says more
        correct = None
        if decision is not None and decision.queue is not None:
            correct = decision.queue == feedback.final_queue
        first = decision is not None and (row is None or row[1] is None)
        values: dict[str, object] = {
            "final_queue": feedback.final_queue,
            "outcome": feedback.outcome.value,
            "occurred_at": occurred,
            "source": feedback.source.value,
            "feedback": feedback.model_dump_json(),
            "updated_at": now,
        }
        if decision is not None:
            # Without a decision a label keeps the one it was judged against, if any.
            values |= {
                "subject": decision.subject,
                "body": decision.body,
                "fields": encode(decision.fields),
                "model_id": decision.model_id,
                "decided_queue": decision.queue,
                "disposition": decision.disposition.value,
                "correct": None if correct is None else int(correct),
            }
            if first:
                values["judged_at"] = now
        if row is None:
            values["ticket_id"] = feedback.ticket_id
            columns = ", ".join(values)
            marks = ", ".join("?" * len(values))
            sql = f"INSERT INTO labels ({columns}) VALUES ({marks})"  # noqa: S608 - our columns
            self.db.execute(sql, list(values.values()))
        else:
            sets = ", ".join(f"{column} = ?" for column in values)
            sql = f"UPDATE labels SET {sets} WHERE ticket_id = ?"  # noqa: S608 - our columns
            self.db.execute(sql, [*values.values(), feedback.ticket_id])
        if decision is None:
            return None
        return Judgement(feedback, decision, first=first, correct=correct, held_s=held_s)

    # -- live quality and labels ---------------------------------------------------------

    def window(self, *, judged_since: float) -> WindowStats:
        """Judged decisions whose first feedback was joined at or after `judged_since`."""
        routed = routed_correct = triaged = guess_right = 0
        rows = self.db.execute(
            """
            SELECT disposition, count(*), coalesce(sum(correct), 0) FROM labels
            WHERE judged_at IS NOT NULL AND judged_at >= ? GROUP BY disposition
            """,
            (judged_since,),
        )
        for disposition, count, right in rows:
            if disposition == Disposition.ROUTED.value:
                routed, routed_correct = count, right
            else:  # triage, and shadow decisions (their tickets were triaged too)
                triaged, guess_right = triaged + count, guess_right + right
        return WindowStats(routed, routed_correct, triaged, guess_right)

    def labeled_tickets(self, *, since: datetime | None = None) -> Iterator[LabeledTicket]:
        """Every ticket a human settled whose text is known, oldest feedback first.

        One per ticket (the latest feedback's final queue); streamed, never all in memory.
        This is what retraining reads (`ticket-router decisions labels` writes it as JSONL).
        """
        cursor = self.db.execute(
            f"""
            SELECT ticket_id, subject, body, final_queue, occurred_at, model_id,
                {self._fields["labels"]} FROM labels
            WHERE subject IS NOT NULL AND occurred_at >= ? ORDER BY occurred_at, ticket_id
            """,  # noqa: S608 - a column name or NULL is formatted in
            (_ts(since) if since is not None else float("-inf"),),
        )
        for ticket_id, subject, body, queue, occurred_at, model_id, fields in cursor:
            yield LabeledTicket(
                ticket_id=ticket_id,
                text=Ticket.model_construct(subject=subject, body=body or "").text(),
                label=queue,
                labeled_at=_dt(occurred_at),
                decided_by=model_id,
                fields=decode(fields),
            )


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any error; SQLite errors become
    `DecisionLogError` (the consumer stops without committing the batch's offsets)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DecisionLogError(f"cannot start a write: {exc}") from exc

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                self._db.execute("ROLLBACK")
                raise DecisionLogError(f"commit failed: {commit_error}") from commit_error
        self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise DecisionLogError(f"write failed: {exc}") from exc


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]
