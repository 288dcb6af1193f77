"""Progress off a terminal: periodic plain lines, never silence."""

from __future__ import annotations

import io

from expert.progress import progress


def test_off_a_terminal_progress_prints_plain_lines_with_counts_and_loss() -> None:
    out = io.StringIO()
    with progress("training", every_s=0.0, stream=out) as report:
        for step in range(1, 4):
            report(step, 3, 0.25 * step)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("training: 1/3 steps, loss 0.250")
    assert lines[-1].startswith("training: 3/3 steps, loss 0.750")


def test_lines_are_rate_limited_but_the_last_state_is_printed() -> None:
    out = io.StringIO()
    with progress("building", every_s=3600.0, stream=out) as report:
        for step in range(1, 101):
            report(step, 200, float("nan"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first call, then the final state when the block ends
    assert lines[-1].startswith("building: 100/200 steps,")
    assert "loss" not in lines[-1]
