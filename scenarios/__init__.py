"""End-to-end runs on top of loadgen and bench: the demo and the drift scenario."""
