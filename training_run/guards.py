"""What watches a run between two batches: divergence (:class:`DivergenceGuard`), stop signals
(:class:`StopRequests`) and the time the rest will take (:class:`TimeEstimate`)."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Any

import torch

from agents.trainers.base import Trainer, parameter_norm
from routing_env.engine import RoutingEngine
from training_run.settings import FIRST_RUN


class StopRequests:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next batch boundary; a second one acts at
    once (KeyboardInterrupt, or the default SIGTERM death). Installed only in the main thread (signal
    handlers live there), and only when there will be a checkpoint to stop at."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal as a user knows it (``Ctrl-C``, ``SIGTERM``); Ctrl-C when none came."""
        signum = self.signum or signal.SIGINT
        return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name

    def _at_once(self, signum: int) -> Any:
        """The handler for a second signal: the one before ours, unless that ignored the signal (a process
        started with SIGINT ignored, as by a shell's background job), which would leave the second Ctrl-C
        without effect: then KeyboardInterrupt for SIGINT, the default death for SIGTERM."""
        previous = self.previous[signum]
        if previous not in (signal.SIG_IGN, None):
            return previous
        return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL

    def __enter__(self) -> StopRequests:
        if self.enabled:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        signal.signal(signum, self._at_once(signum))  # the next one acts at once
        sys.stderr.write(
            f"\n{self.name}: stopping after this batch to write a checkpoint ({self.name} again stops at "
            "once, losing the batches since the last checkpoint)\n"
        )


class DivergenceGuard:
    """Finds a training that has gone non-finite, before it writes anything.

    After every batch it reads the engine's running means (train loss and reward; one device read of
    six numbers) and the trainer's :meth:`Trainer.health` (losses SB3 read anyway, the router's parameter
    norm: one device read). A NaN or infinite loss, reward or gradient shows there within a batch: a
    non-finite gradient makes the parameters it updates non-finite, and non-finite pool parameters make
    the next batch's losses non-finite. Two reads per batch, against a batch's many kernel launches, cost
    no measurable time on a GPU. Before a checkpoint it also checks the pool's parameters (one read; a
    checkpoint never holds a diverged pool), and after evaluation the record's losses.
    """

    def __init__(self, trainer: Trainer, engine: RoutingEngine) -> None:
        self.trainer, self.engine = trainer, engine

    def problem(self) -> str | None:
        stats = self.engine.stats()
        values = {"train loss": stats["train_loss"], "train reward": stats["train_reward"]}
        return non_finite({**values, **self.trainer.health()})

    def pool_problem(self) -> str | None:
        return non_finite({"module parameter norm": parameter_norm(self.engine.pool.parameters())})

    def record_problem(self, record: dict[str, Any]) -> str | None:
        keys = ("train_loss", "train_reward", "test_loss")
        return non_finite({k.replace("_", " "): record[k] for k in keys})

    def error_problem(self, error: RuntimeError) -> str | None:
        """What a RuntimeError of the agent says about divergence: torch's sampling fails on non-finite
        probabilities ("probability tensor contains either inf, nan or element < 0")."""
        message = str(error).splitlines()[0] if str(error) else ""
        if "nan" in message and "inf" in message:
            return self.problem() or f"the router's action probabilities are not finite ({message})"
        return self.problem()


def non_finite(values: dict[str, float]) -> str | None:
    """``"name value, ..."`` for the values that are NaN or infinite, None when all are finite."""
    bad = [f"{name} {value}" for name, value in values.items() if not math.isfinite(value)]
    return ", ".join(bad) or None


class TimeEstimate:
    """After the first batches, one line: the time per batch here and what the rest of the run takes;
    on the CPU, when that is over an hour, the quick first run (:data:`FIRST_RUN`), with its time here
    when ``first_run_timed`` (the run's time per batch is the one the first run's ``batch_cost`` is
    measured against). The first batch of an epoch is not timed (allocations, CUDA start-up)."""

    LINE_FROM_S = 600  # say nothing about shorter runs

    def __init__(self, device: torch.device, first_run_timed: bool = False) -> None:
        self.device, self.first_run_timed = device, first_run_timed
        self.done = False
        self.timed: list[float] = []

    def epoch_started(self) -> None:
        self.timed = []  # evaluation time must not count as batch time

    def batch_done(self, batches_left: int) -> str | None:
        if self.done:
            return None
        self.timed.append(time.perf_counter())
        if len(self.timed) < 3:
            return None
        self.done = True
        per_batch = (self.timed[2] - self.timed[0]) / 2
        total = per_batch * batches_left
        if total < self.LINE_FROM_S:
            return None
        line = (
            f"time: {per_batch:.2f} s per batch here, so the {batches_left:,} batches left take about "
            f"{duration(total)} (evaluation not counted)"
        )
        if self.device.type == "cpu" and total > 3600:
            advice = FIRST_RUN.advice(per_batch if self.first_run_timed else None)
            line += f". These are GPU-sized settings; {advice}"
        return line


def duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{max(1, round(seconds / 60))} min"
