"""What measures the router: collect, capacity, probe, benches, chaos, MTTR, reports."""
