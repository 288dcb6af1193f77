"""Every Prometheus metric the feedback consumer exports, in one `FeedbackMetrics` per registry.

Owns metric names, help texts, label sets and buckets, in the style of `worker.metrics`.
It serves nothing (see `worker.health`). Label values come from small fixed sets: taxonomy
queues, source systems, outcomes, reason enums, the accuracy windows, and expert versions
(`model`: one per version deployed, as in `router_build_info`); never ticket ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Decision -> human action: minutes to days.
FEEDBACK_DELAY_BUCKETS_S = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
    259200.0,
    604800.0,
)
# Feedback held until its decision arrived: a join that waited.
HELD_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
LIVE_WINDOWS_S = {"1h": 3600.0, "24h": 86400.0}


class FeedbackMetrics:
    """The feedback consumer's metrics, registered on `registry` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.feedback_consumed = Counter(
            "router_feedback_consumed_total",
            "Feedback records read from the feedback topic, by the format they were read as.",
            ["source"],
            registry=registry,
        )
        self.feedback_events = Counter(
            "router_feedback_events_total",
            "Feedback stored (joined or held), by source system and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self.feedback_skipped = Counter(
            "router_feedback_skipped_total",
            "Valid updates that are not feedback (no routing signal, an integration user).",
            ["source", "reason"],
            registry=registry,
        )
        self.feedback_dead_lettered = Counter(
            "router_feedback_dead_lettered_total",
            "Unreadable feedback published to the feedback dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.verdicts = Counter(
            "router_feedback_verdicts_total",
            "Routed decisions judged by their first feedback: confirmed (the human's final "
            "queue is the decided one) or reassigned, by decided queue and expert version.",
            ["queue", "model", "verdict"],
            registry=registry,
        )
        self.mode_verdicts = Counter(
            "router_feedback_mode_verdicts_total",
            "Decisions of queues not yet autorouted, judged by their first feedback as "
            "router_feedback_verdicts_total judges routed ones: mode shadow (the shadow "
            "decisions autoroute would have routed) or recommend (the suggestions on triage "
            "records); confirmed when the human's final queue is the decided one.",
            ["mode", "queue", "model", "verdict"],
            registry=registry,
        )
        self.triage_outcomes = Counter(
            "router_feedback_triage_outcomes_total",
            "Triaged tickets judged by their first feedback: the queue the humans chose, and "
            "whether the expert's best guess was it (right, wrong, none for a deadline).",
            ["queue", "guess"],
            registry=registry,
        )
        self.without_decision = Counter(
            "router_feedback_without_decision_total",
            "Feedback whose decision never arrived within the hold time (or beyond the held "
            "limit): stored as a label without a decision.",
            ["source"],
            registry=registry,
        )
        self.held = Gauge(
            "router_feedback_held",
            "Feedback held until the decision it is about is read from the routed topics.",
            registry=registry,
        )
        self.held_duration = Histogram(
            "router_feedback_held_seconds",
            "How long feedback that arrived before its decision waited for the join.",
            buckets=HELD_BUCKETS_S,
            registry=registry,
        )
        self.feedback_delay = Histogram(
            "router_feedback_delay_seconds",
            "Decision to the human action that judged it (first feedback per ticket).",
            buckets=FEEDBACK_DELAY_BUCKETS_S,
            registry=registry,
        )
        self.live_judged = Gauge(
            "router_live_judged_decisions",
            "Routed decisions first judged by feedback within the window (this consumer's "
            "share of the feedback topic).",
            ["window"],
            registry=registry,
        )
        self.live_correct = Gauge(
            "router_live_correct_decisions",
            "Of those, the decisions whose queue the humans kept.",
            ["window"],
            registry=registry,
        )
        self.live_accuracy = Gauge(
            "router_live_accuracy_ratio",
            "Correct / judged routed decisions within the window (NaN before any feedback); "
            "sum the two gauges above across consumers for the deployment's accuracy.",
            ["window"],
            registry=registry,
        )
        self.decisions_logged = Counter(
            "router_decisions_logged_total",
            "Routing decisions read from the routed and triage topics into the decision log.",
            registry=registry,
        )
        self.decisions_unreadable = Counter(
            "router_decisions_unreadable_total",
            "Records on the routed and triage topics that are not a routed ticket (skipped).",
            registry=registry,
        )
        self.decision_log_size = Gauge(
            "router_decision_log_decisions",
            "Tickets with a decision in the decision log.",
            registry=registry,
        )
        self.decision_log_caught_up = Gauge(
            "router_decision_log_caught_up",
            "1 once the decision log has read every routed and triage partition to its end.",
            registry=registry,
        )
        self.commits = Counter(
            "router_feedback_commits_total",
            "Feedback offset commits, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        self.retries = Counter(
            "router_feedback_retries_total",
            "Retries scheduled after a transient failure, by operation.",
            ["operation"],
            registry=registry,
        )
        self.ready = Gauge(
            "router_feedback_ready",
            "1 when the decision log is open and feedback partitions are assigned, else 0.",
            registry=registry,
        )
