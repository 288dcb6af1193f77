"""Every Prometheus metric the worker exports, in one `Metrics` object per registry.

Owns metric names, help texts, label sets and buckets. It does not serve them (see
`worker.health`) and never uses ticket ids, offsets or error strings as label values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# End-to-end: ticket created at the source -> routed ticket acknowledged by the broker.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENGINE_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# A new expert version noticed -> serving new tickets: an engine load and warm-up.
SWAP_BUCKETS_S = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0)


class Metrics:
    """The worker's metrics, registered on `registry` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages_consumed = Counter(
            "router_messages_consumed_total",
            "Inbound records read from Kafka.",
            ["topic"],
            registry=registry,
        )
        self.tickets_routed = Counter(
            "router_tickets_routed_total",
            "Tickets published to their queue's topic and acknowledged by the broker.",
            ["queue"],
            registry=registry,
        )
        self.tickets_triaged = Counter(
            "router_tickets_triaged_total",
            "Tickets published to the human-triage topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.queue_decisions = Counter(
            "router_queue_decisions_total",
            "Answered tickets by predicted queue, that queue's mode and the outcome: routed, "
            "low_confidence, recommend_mode (to triage with the suggestion) or shadow_mode "
            "(to triage, the decision to the shadow topic).",
            ["queue", "mode", "outcome"],
            registry=registry,
        )
        self.queue_mode = Gauge(
            "router_queue_mode_info",
            "1 for each queue's mode in force (autoroute, recommend, shadow).",
            ["queue", "mode"],
            registry=registry,
        )
        self.tickets_dead_lettered = Counter(
            "router_tickets_dead_lettered_total",
            "Unreadable records published to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.retries = Counter(
            "router_retries_total",
            "Retries scheduled after a transient failure, by operation.",
            ["operation"],
            registry=registry,
        )
        self.commits = Counter(
            "router_commits_total",
            "Offset commits, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "router_in_flight_tickets",
            "Tickets read but not yet published and acknowledged.",
            registry=registry,
        )
        self.engine_running = Gauge(
            "router_engine_running_requests",
            "Requests the inference engine is running now.",
            registry=registry,
        )
        self.engine_waiting = Gauge(
            "router_engine_waiting_requests",
            "Requests waiting in the inference engine's queue.",
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            "router_end_to_end_latency_seconds",
            "Ticket created (Kafka record timestamp) to output acknowledged by the broker.",
            ["disposition"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "router_inference_duration_seconds",
            "Time the engine took to answer one ticket.",
            buckets=ENGINE_BUCKETS_S,
            registry=registry,
        )
        self.confidence = Histogram(
            "router_confidence",
            "Confidence of the chosen queue (probability normalised over the labels).",
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "router_consumer_lag_messages",
            "Records in the partition not yet read by this worker (high watermark - position).",
            ["topic", "partition"],
            registry=registry,
        )
        self.committed_offset = Gauge(
            "router_committed_offset",
            "Last offset committed for the partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "router_assigned_partitions",
            "Inbound partitions assigned to this worker.",
            registry=registry,
        )
        self.ready = Gauge(
            "router_ready",
            "1 when the engine is loaded and partitions are assigned, else 0.",
            registry=registry,
        )
        self.build_info = Info(
            "router_build",
            "Version of the worker and the expert it serves.",
            registry=registry,
        )
        self.expert_version = Info(
            "router_expert_version",
            "The expert version serving new tickets (registry version, served model id).",
            registry=registry,
        )
        self.expert_swaps = Counter(
            "router_expert_swaps_total",
            "Changes to a newly promoted expert version, by result (succeeded, refused).",
            ["result"],
            registry=registry,
        )
        self.expert_swap_duration = Histogram(
            "router_expert_swap_duration_seconds",
            "A new expert version noticed -> serving new tickets (its engine's load and "
            "warm-up; in drain-first mode, the pause in routing).",
            buckets=SWAP_BUCKETS_S,
            registry=registry,
        )
        self.expert_engines = Gauge(
            "router_expert_engines",
            "Expert engines loaded now (2 while a new version is loaded beside the old one).",
            registry=registry,
        )
