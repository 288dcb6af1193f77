"""The streaming worker: Kafka in, the expert engine, per-queue topics out."""
