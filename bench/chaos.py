"""Chaos accounting: every inbound record against the router's outputs, through kills.

Pure (no I/O in the accounting functions); the Kafka and log reading of the command-line
entry (`python -m bench.chaos`) sits at the bottom of the module.

Every output record names its inbound record in its `router.source.*` headers. At-least-once
mode: an inbound record without an output is LOST; outputs beyond the first are DUPLICATED.

Exactly-once mode: every output also carries `router.txn` = "<transactional id>:<boot>:<seq>",
and the worker logs `transaction_committed` (txn, tickets, offsets) or `transaction_aborted`
(txn, reason) for each transaction. A broker that does not filter aborted records (the
embedded one) shows aborted outputs too, so each output is classified by its transaction:
- committed: logged committed;
- aborted: logged aborted;
- unknown: not logged. Only the last transaction of a killed boot may be unknown (the kill
  can land between the broker's commit and the log line). It is resolved by evidence: if
  its inbound records all have outputs in committed transactions it was aborted (had it
  committed, they would be duplicates), if none do it committed (had it aborted, they would
  be lost); anything in between is a violation. Callers may cross-check the resolution with
  the group's committed offsets the killed boot left behind (`check_snapshot`).
Then: zero lost and zero duplicated among committed outputs; each committed transaction
holds as many outputs as it logged, and none of them at or beyond the offsets it committed
(outputs and offsets move together); committed offsets never go back.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SourceRef = tuple[str, int, int]  # inbound (topic, partition, offset)
TP = tuple[str, int]
_SHOWN = 5


@dataclass(frozen=True, slots=True)
class Output:
    """One output record: where it is, which inbound record it answers, its transaction."""

    topic: str
    partition: int
    offset: int
    source: SourceRef
    txn: str | None = None


@dataclass(frozen=True, slots=True)
class TxnName:
    """A parsed `router.txn` header value."""

    transactional_id: str
    boot: str
    seq: int

    @classmethod
    def parse(cls, name: str) -> TxnName:
        tid, boot, seq = name.rsplit(":", 2)
        return cls(transactional_id=tid, boot=boot, seq=int(seq))


@dataclass(frozen=True, slots=True)
class TxnLog:
    """What a worker logged about one transaction."""

    name: str
    committed: bool
    tickets: int | None = None
    offsets: Mapping[TP, int] = field(default_factory=dict)
    reason: str | None = None


_TP_KEY = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]$")


def parse_offsets(raw: object) -> dict[TP, int]:
    """The `offsets` of a `transaction_committed` event: {"topic[p]": offset, ...}."""
    out: dict[TP, int] = {}
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            m = _TP_KEY.match(str(key))
            if m is None:
                raise ValueError(f"unexpected offsets key {key!r}")
            out[(m["topic"], int(m["partition"]))] = int(value)
    elif raw is not None:
        raise ValueError(f"unexpected offsets value {raw!r}")
    return out


def transaction_logs(events: Iterable[Mapping[str, Any]]) -> dict[str, TxnLog]:
    """Transaction outcomes from a worker's JSON log events."""
    logs: dict[str, TxnLog] = {}
    for e in events:
        if e.get("event") == "transaction_committed":
            name = str(e["txn"])
            logs[name] = TxnLog(
                name=name,
                committed=True,
                tickets=int(e["tickets"]) if e.get("tickets") is not None else None,
                offsets=parse_offsets(e.get("offsets")),
            )
        elif e.get("event") == "transaction_aborted":
            name = str(e["txn"])
            logs[name] = TxnLog(name=name, committed=False, reason=str(e.get("reason")))
    return logs


# ---------------------------------------------------------------------------- at least once


@dataclass(frozen=True, slots=True)
class AtLeastOnceFigures:
    """The accounting of an at-least-once run."""

    sent: int
    outputs: int
    lost: int
    duplicated: int
    unexpected: int  # outputs naming an inbound record that was not sent
    lost_examples: tuple[SourceRef, ...] = ()

    def summary(self, *, kills: int) -> str:
        return (
            f"at-least-once: sent {self.sent}, lost {self.lost}, duplicated {self.duplicated}, "
            f"kills {kills} (outputs {self.outputs}, unexpected {self.unexpected})"
        )


def account_at_least_once(
    sent: Collection[SourceRef], outputs: Iterable[Output]
) -> AtLeastOnceFigures:
    """Lost, duplicated and unexpected outputs of an at-least-once run."""
    counts = Counter(o.source for o in outputs)
    sent_set = set(sent)
    lost = sorted(sent_set - counts.keys())
    return AtLeastOnceFigures(
        sent=len(sent_set),
        outputs=sum(counts.values()),
        lost=len(lost),
        duplicated=sum(n - 1 for s, n in counts.items() if s in sent_set),
        unexpected=sum(n for s, n in counts.items() if s not in sent_set),
        lost_examples=tuple(lost[:_SHOWN]),
    )


def ungrounded(committed: Mapping[TP, int], done: Collection[SourceRef]) -> list[SourceRef]:
    """Inbound records below a committed offset without an output (at-least-once: none)."""
    return [
        (t, p, o) for (t, p), end in committed.items() for o in range(end) if (t, p, o) not in done
    ]


# ---------------------------------------------------------------------------- exactly once


@dataclass(frozen=True, slots=True)
class Boot:
    """One run of a worker process: its boot id (from the txn names) and how it ended."""

    boot: str
    killed: bool


@dataclass
class ExactlyOnceFigures:
    """The accounting of an exactly-once run."""

    sent: int = 0
    outputs: int = 0
    committed_outputs: int = 0
    aborted_outputs: int = 0
    committed_txns: int = 0
    aborted_txns: int = 0
    unknown_txns_committed: list[str] = field(default_factory=list)
    unknown_txns_aborted: list[str] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    violations: list[str] = field(default_factory=list)
    committed_sources: set[SourceRef] = field(default_factory=set)

    def summary(self, *, kills: int) -> str:
        return (
            f"exactly-once: sent {self.sent}, lost {self.lost}, duplicated {self.duplicated} "
            f"(among committed), kills {kills}; outputs {self.outputs}: committed "
            f"{self.committed_outputs} in {self.committed_txns} txns, aborted "
            f"{self.aborted_outputs} (visible; {self.aborted_txns} txns); unknown txns "
            f"resolved committed {len(self.unknown_txns_committed)}, aborted "
            f"{len(self.unknown_txns_aborted)}; violations {len(self.violations)}"
        )


def _committed_in_order(
    logs: Mapping[str, TxnLog], boots: Sequence[Boot]
) -> list[tuple[TxnName, TxnLog]]:
    order = {b.boot: i for i, b in enumerate(boots)}
    named = [(TxnName.parse(n), t) for n, t in logs.items() if t.committed]
    return sorted(named, key=lambda nt: (order.get(nt[0].boot, len(order)), nt[0].seq))


def _check_committed_txns(
    by_txn: Mapping[str, list[Output]],
    logs: Mapping[str, TxnLog],
    boots: Sequence[Boot],
    figures: ExactlyOnceFigures,
) -> None:
    """Per committed transaction: output count as logged, outputs below its offsets,
    offsets never going back."""
    last: dict[TP, int] = {}
    for name, txn in _committed_in_order(logs, boots):
        outs = by_txn.get(txn.name, [])
        if txn.tickets is not None and txn.tickets != len(outs):
            figures.violations.append(
                f"{txn.name} logged {txn.tickets} tickets, {len(outs)} outputs carry it"
            )
        for o in outs:
            tp = (o.source[0], o.source[1])
            if tp not in txn.offsets or o.source[2] >= txn.offsets[tp]:
                figures.violations.append(
                    f"{txn.name} committed output for {o.source} without its offset "
                    f"(committed {txn.offsets.get(tp)})"
                )
                break
        for tp, offset in txn.offsets.items():
            if offset < last.get(tp, 0):
                figures.violations.append(
                    f"{txn.name} moved {tp} back from {last[tp]} to {offset} ({name.boot})"
                )
            last[tp] = offset


def _resolve_unknown(
    name: str,
    outs: Sequence[Output],
    *,
    killed: bool,
    last_of_boot: bool,
    logged_committed: Collection[SourceRef],
    figures: ExactlyOnceFigures,
) -> bool:
    """Whether the unlogged transaction `name` committed (see the module docstring)."""
    if not killed:
        figures.violations.append(f"{name}: never logged, but its boot ended cleanly")
    elif not last_of_boot:
        figures.violations.append(f"{name}: never logged, and a later transaction followed")
    srcs = {o.source for o in outs}
    covered = srcs & set(logged_committed)
    if covered == srcs:
        figures.unknown_txns_aborted.append(name)
        return False
    if not covered:
        figures.unknown_txns_committed.append(name)
        return True
    figures.violations.append(
        f"{name}: {len(covered)} of its {len(srcs)} inbound records have committed outputs "
        "elsewhere (committed: duplicates; aborted: lost)"
    )
    figures.unknown_txns_aborted.append(name)
    return False


def account_exactly_once(
    sent: Collection[SourceRef],
    outputs: Iterable[Output],
    logs: Mapping[str, TxnLog],
    boots: Sequence[Boot],
    *,
    broker_filters_aborted: bool,
) -> ExactlyOnceFigures:
    """Classify every output by its transaction and account for every inbound record.

    Args:
        sent: the inbound records.
        outputs: every output record read (read_committed).
        logs: the transaction outcomes logged by every boot.
        boots: every boot, in start order; all but a cleanly stopped one count as killed.
        broker_filters_aborted: the broker hides aborted records (Apache Kafka): every
            output read is then committed, whatever the logs say.
    """
    figures = ExactlyOnceFigures(sent=len(set(sent)))
    outs = list(outputs)
    figures.outputs = len(outs)
    by_txn: dict[str, list[Output]] = defaultdict(list)
    for o in outs:
        if o.txn is None:
            figures.violations.append(f"output {o.topic}[{o.partition}]@{o.offset} has no txn")
            continue
        by_txn[o.txn].append(o)
    killed = {b.boot: b.killed for b in boots}
    last_seq: dict[str, int] = {}
    for name in [*by_txn, *logs]:
        t = TxnName.parse(name)
        last_seq[t.boot] = max(last_seq.get(t.boot, 0), t.seq)
    logged_committed = {
        o.source for n, group in by_txn.items() if n in logs and logs[n].committed for o in group
    }
    committed: list[Output] = []
    for name in sorted(by_txn, key=lambda n: (TxnName.parse(n).boot, TxnName.parse(n).seq)):
        group = by_txn[name]
        t = TxnName.parse(name)
        log = logs.get(name)
        if log is not None:
            is_committed = log.committed
            if not log.committed and broker_filters_aborted:
                figures.violations.append(f"{name}: logged aborted, yet its outputs are visible")
                is_committed = True
        elif broker_filters_aborted:
            is_committed = True
        else:
            is_committed = _resolve_unknown(
                name,
                group,
                killed=killed.get(t.boot, True),
                last_of_boot=t.seq == last_seq[t.boot],
                logged_committed=logged_committed,
                figures=figures,
            )
        if is_committed:
            committed.extend(group)
        else:
            figures.aborted_outputs += len(group)
    figures.committed_txns = sum(1 for t in logs.values() if t.committed)
    figures.aborted_txns = sum(1 for t in logs.values() if not t.committed)
    figures.committed_outputs = len(committed)
    counts = Counter(o.source for o in committed)
    sent_set = set(sent)
    figures.lost = len(sent_set - counts.keys())
    figures.duplicated = sum(n - 1 for s, n in counts.items() if s in sent_set)
    figures.unexpected = sum(n for s, n in counts.items() if s not in sent_set)
    figures.committed_sources = set(counts)
    _check_committed_txns(by_txn, logs, boots, figures)
    return figures


def check_snapshot(
    snapshot: Mapping[TP, int],
    *,
    boot: str,
    outputs: Iterable[Output],
    figures: ExactlyOnceFigures,
    check_unknown: bool = True,
) -> list[str]:
    """Cross-check the committed offsets a killed `boot` left behind.

    Take the snapshot once the transaction the kill interrupted is settled (the restarted
    worker has fenced it) and before anything else commits: right after the kill, a commit
    the broker was still processing may not show yet. Every inbound record below a snapshot
    offset must have a committed output. With `check_unknown`, the boot's unknown
    transaction must agree with the snapshot: resolved committed means the snapshot is
    past all its records, resolved aborted means it is before all of them.
    """
    problems = [
        f"after killing {boot}: {s} is below the committed offset but has no committed output"
        for s in ungrounded(snapshot, figures.committed_sources)[:_SHOWN]
    ]
    if not check_unknown:
        return problems
    unknown = {n: True for n in figures.unknown_txns_committed} | {
        n: False for n in figures.unknown_txns_aborted
    }
    per_txn: dict[str, list[Output]] = defaultdict(list)
    for o in outputs:
        if o.txn in unknown and TxnName.parse(o.txn).boot == boot:
            per_txn[o.txn].append(o)
    for name, outs in per_txn.items():
        for o in outs:
            tp = (o.source[0], o.source[1])
            past = snapshot.get(tp, 0) > o.source[2]
            if past != unknown[name]:
                problems.append(
                    f"{name} resolved {'committed' if unknown[name] else 'aborted'}, but the "
                    f"committed offset of {tp} after the kill is {snapshot.get(tp)} "
                    f"(record {o.source[2]})"
                )
                break
    return problems


# ---------------------------------------------------------------------------- command line


def _read_outputs(
    bootstrap: str, topics: Sequence[str], *, idle_s: float, deadline_s: float
) -> list[Output]:
    """Every output record (read_committed, from the beginning) with a source header."""
    import time
    import uuid

    from confluent_kafka import Consumer, KafkaError

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-accounting-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe(list(topics))
    out: list[Output] = []
    at_eof: set[TP] = set()
    start = last = time.monotonic()
    try:
        while (now := time.monotonic()) - start < deadline_s:
            assigned = {(p.topic, p.partition) for p in consumer.assignment()}
            if assigned and assigned <= at_eof and now - last > idle_s:
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            tp = (str(msg.topic()), int(msg.partition() or 0))
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(tp)
                continue
            at_eof.discard(tp)
            last = time.monotonic()
            headers: dict[str, bytes] = {}
            raw = msg.headers() or []
            for name, value in raw.items() if isinstance(raw, dict) else raw:
                headers[name] = value.encode() if isinstance(value, str) else (value or b"")
            if "router.source.offset" not in headers:
                continue
            txn = headers.get("router.txn")
            out.append(
                Output(
                    topic=tp[0],
                    partition=tp[1],
                    offset=int(msg.offset() or 0),
                    source=(
                        headers["router.source.topic"].decode(),
                        int(headers["router.source.partition"]),
                        int(headers["router.source.offset"]),
                    ),
                    txn=txn.decode() if txn is not None else None,
                )
            )
    finally:
        consumer.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.chaos`: print the accounting figures of a run, as JSON.

    Sent records come from a replay manifest (partition and offset of each delivered
    ticket); outputs are read from the taxonomy's output topics. With --exactly-once, the
    worker logs (JSON lines) give each transaction's outcome; each log file is one boot,
    in start order, the last one stopped cleanly.
    """
    import argparse
    import json
    from pathlib import Path

    from loadgen.replay import read_manifest
    from schemas.taxonomy import Taxonomy

    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=main.__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--taxonomy", type=Path, default=None)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--exactly-once", action="store_true")
    parser.add_argument("--worker-log", type=Path, action="append", default=[])
    parser.add_argument("--broker-filters-aborted", action="store_true")
    parser.add_argument("--idle-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    tax = Taxonomy.load(args.taxonomy)
    sent = [
        (tax.topics.inbound, r.partition, r.offset)
        for r in read_manifest(args.manifest)
        if r.delivered and r.partition is not None and r.offset is not None
    ]
    topics = [q.topic for q in tax.queues] + [tax.topics.triage, tax.topics.dead_letter]
    outputs = _read_outputs(args.bootstrap, topics, idle_s=args.idle_s, deadline_s=600)
    if not args.exactly_once:
        alo = account_at_least_once(sent, outputs)
        print(json.dumps(asdict(alo)))
        return 0 if not alo.lost and not alo.unexpected else 1
    logs: dict[str, TxnLog] = {}
    boots: list[Boot] = []
    for i, path in enumerate(args.worker_log):
        lines = path.read_text(errors="replace").splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        found = transaction_logs(events)
        logs.update(found)
        if found:
            boot = TxnName.parse(next(iter(found))).boot
            boots.append(Boot(boot=boot, killed=i < len(args.worker_log) - 1))
    figures = account_exactly_once(
        sent, outputs, logs, boots, broker_filters_aborted=args.broker_filters_aborted
    )
    shown = {k: v for k, v in asdict(figures).items() if k != "committed_sources"}
    print(json.dumps(shown))
    return 0 if not figures.violations and not figures.lost and not figures.duplicated else 1


if __name__ == "__main__":
    raise SystemExit(main())
