"""The optimisation loop every builder shares: batches, learning-rate schedule, time budget.

Owns length-bucketed batching, the warm-up + decay schedule, gradient clipping, progress
reports, early stopping hooks, torch's thread count during a build, and the time budget:
the schedule runs on progress = max(steps done / steps planned, time spent / time budget),
so a build that would overrun its budget decays its learning rate and ends on time instead
of being cut mid-schedule. It knows nothing about what the model is.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""Called after each optimiser step with (steps done, steps planned, running loss)."""

EpochCallback = Callable[[int], bool]
"""Called after each full epoch with the epoch number (1-based); True stops training."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """Learning-rate factor as a function of progress in [0, 1].

    Attributes:
        warmup_fraction: share of progress spent ramping up linearly.
        shape: "cosine" (to `floor`) or "linear" (to 0) after the warm-up.
        floor: the cosine's final factor.
    """

    warmup_fraction: float = 0.05
    shape: Literal["cosine", "linear"] = "cosine"
    floor: float = 0.1

    def factor(self, progress: float, *, step: int, warmup_steps: int) -> float:
        """The factor at `progress` (warm-up counted in steps so it is never skipped)."""
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = min(1.0, max(0.0, (progress - self.warmup_fraction) / (1 - self.warmup_fraction)))
        if self.shape == "linear":
            return max(0.0, 1.0 - p)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * p))


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What a training run did.

    Attributes:
        steps: optimiser steps taken.
        planned_steps: steps the epochs asked for.
        epochs_done: passes over the data actually made (fractional).
        final_loss: mean loss of the last (possibly partial) epoch.
        seconds: wall time of the loop.
        stopped_by: "plan" (all planned steps), "budget" (time ran out) or "early_stop".
    """

    steps: int
    planned_steps: int
    epochs_done: float
    final_loss: float
    seconds: float
    stopped_by: Literal["plan", "budget", "early_stop"]


def length_batches(
    lengths: Sequence[int], *, batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding), in shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lengths.__getitem__)
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads for the block: `threads`, or (None) the cores free now
    (`expert.hardware.training_threads`)."""
    import torch

    from expert import hardware

    before = torch.get_num_threads()
    chosen = threads or hardware.training_threads(hardware.detect())
    log.info("training_threads_chosen", threads=chosen, requested=threads)
    torch.set_num_threads(chosen)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Loop:
    """One training run's state: steps taken, time spent, the learning-rate schedule."""

    def __init__(
        self,
        *,
        optimiser: Any,
        schedule: Schedule,
        planned: int,
        time_budget_s: float | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.optimiser = optimiser
        self.schedule = schedule
        self.planned = planned
        self.warmup_steps = max(1, round(planned * schedule.warmup_fraction))
        self.time_budget_s = time_budget_s
        self.on_progress = on_progress
        self.peaks = [group["lr"] for group in optimiser.param_groups]
        self.params = [p for group in optimiser.param_groups for p in group["params"]]
        self.started = time.perf_counter()
        self.step = 0
        self.losses: list[float] = []

    def progress(self) -> float:
        by_steps = self.step / self.planned
        if self.time_budget_s is None or self.time_budget_s <= 0:
            return by_steps
        return max(by_steps, (time.perf_counter() - self.started) / self.time_budget_s)

    def take_step(self, loss_of: Callable[[], Any]) -> None:
        import torch

        factor = self.schedule.factor(
            self.progress(), step=self.step, warmup_steps=self.warmup_steps
        )
        for group, peak in zip(self.optimiser.param_groups, self.peaks, strict=True):
            group["lr"] = peak * factor
        loss = loss_of()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimiser.step()
        self.step += 1
        self.losses.append(float(loss.item()))
        running = sum(self.losses) / len(self.losses)
        if self.on_progress is not None:
            self.on_progress(self.step, self.planned, running)
        if self.step % max(1, self.planned // 20) == 0:
            log.info(
                "training_progressed",
                step=self.step,
                total_steps=self.planned,
                loss=round(running, 4),
            )


def train(
    model: Any,
    batch_loss: Callable[[list[int]], Any],
    *,
    lengths: Sequence[int],
    batch_size: int,
    epochs: float,
    optimiser: Any,
    schedule: Schedule,
    seed: int,
    time_budget_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainingResult:
    """Run clipped optimiser steps over length-bucketed batches until the plan, the time
    budget or an early stop ends it.

    Args:
        model: a torch module (put in train mode here, eval mode at the end).
        batch_loss: row indices -> scalar loss tensor.
        lengths: token length of every training row (for bucketing).
        batch_size: rows per step.
        epochs: planned passes over the rows (fractions allowed).
        optimiser: a torch optimiser; each group's "lr" is its peak learning rate.
        schedule: the learning-rate shape over progress.
        seed: shuffling seed.
        time_budget_s: wall-time budget of this loop (None: none).
        on_progress: per-step progress callback.
        on_epoch_end: per-epoch hook; returning True stops (early stopping).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible shuffling, not security
    planned = max(1, round(math.ceil(len(lengths) / batch_size) * epochs))
    loop = _Loop(
        optimiser=optimiser,
        schedule=schedule,
        planned=planned,
        time_budget_s=time_budget_s,
        on_progress=on_progress,
    )
    stopped_by: Literal["plan", "budget", "early_stop"] = "plan"
    epoch = 0
    model.train()
    while loop.progress() < 1.0 and stopped_by == "plan":
        loop.losses = []
        for batch in length_batches(lengths, batch_size=batch_size, rng=rng):
            if loop.progress() >= 1.0:
                break
            loop.take_step(lambda batch=batch: batch_loss(batch))
        else:
            epoch += 1
            if on_epoch_end is not None and on_epoch_end(epoch):
                stopped_by = "early_stop"
            model.train()
    if stopped_by == "plan" and loop.step < planned:
        stopped_by = "budget"
        log.warning("training_cut_by_budget", steps=loop.step, planned_steps=planned)
    model.eval()
    return TrainingResult(
        steps=loop.step,
        planned_steps=planned,
        epochs_done=round(loop.step * batch_size / max(1, len(lengths)), 3),
        final_loss=sum(loop.losses) / max(1, len(loop.losses)),
        seconds=time.perf_counter() - loop.started,
        stopped_by=stopped_by,
    )
