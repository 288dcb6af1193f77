"""The benchmark's CPU accounting (the benchmark itself prints figures and asserts nothing)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.worker_bench import CpuMeter

# Burns 0.3 s of CPU when told to, then says so and waits to be released.
CHILD = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.integration  # a child process
def test_cpu_meter_charges_this_process_and_its_children_apart() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        meter = CpuMeter()
        meter.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        assert child.stdout.readline().strip() == "done"
        meter.stop()
    finally:
        child.communicate("\n", timeout=10)
    assert 0.45 <= meter.used_s["router process"] < 2.0
    assert 0.25 <= meter.used_s["other children"] < 1.0  # 10 ms clock ticks
    per_ticket = meter.per_ticket_ms(10)
    assert per_ticket["router process"] == 1000 * meter.used_s["router process"] / 10
    assert per_ticket["total"] == sum(v for k, v in per_ticket.items() if k != "total")
