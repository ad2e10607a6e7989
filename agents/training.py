"""The training loop of a run: what ``python train.py`` (and a sweep trial) executes.

Every epoch trains on one pass over the training pairs (batches of ``batch_size`` episodes: one rollout
and update of the agent, one step of the pool), then evaluates every test pair once with deterministic
routing and a frozen pool, writes a line of ``metrics.jsonl`` and a checkpoint.

Between two batches the loop checks that training has not diverged (:class:`DivergenceGuard`), writes a
checkpoint when ``checkpoint_every_minutes`` have passed since the last one, and stops cleanly after
Ctrl-C or SIGTERM (:class:`StopRequests`): it writes a checkpoint there, so ``--resume`` continues from
that batch exactly as if the run had not stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from agents.algorithms import ALGORITHMS
from agents.config import RunConfig
from agents.evaluation import evaluate
from agents.plot import plot_run
from agents.run_folder import Checkpoint, MetricsLog, atomic_write, clear_run, set_rng_state
from agents.run_plan import CONFIG_FILE, checkpoint_state, read_config, resume_changes, resume_command
from agents.trainers.base import Trainer, parameter_norm
from routing_env.benchmarks import MTLBenchmark
from routing_env.build import get_benchmark, make_engine
from routing_env.config import resolve_device
from routing_env.engine import RoutingEngine
from routing_env.sb3_vec_env import RoutingSB3VecEnv

EpochReport = Callable[[dict[str, Any]], None]  # called with each epoch's metrics record


class TrainingDiverged(Exception):
    """A loss, reward or parameter stopped being finite; the run stopped before writing anything of the
    epoch (its last checkpoint is kept)."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run between two batches, after a checkpoint.

    Attributes:
        exit_code: 128 + the signal's number (130 for Ctrl-C), as a shell reports a killed process.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class ProgressBar:
    """A tqdm bar over all episodes of the run, with episodes per second and ETA."""

    def __init__(self, total_episodes: int, done_episodes: int, enabled: bool = True) -> None:
        self.bar = tqdm(
            total=total_episodes,
            initial=done_episodes,
            unit="ep",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not enabled,
        )

    def __call__(self, episodes: int) -> None:
        self.bar.update(episodes)

    def describe(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()


def batches_before(epoch: int, n_pairs: int, batch_size: int) -> int:
    """Batches of the epochs before ``epoch``: an epoch is the batches that begin in its pass over the
    ``n_pairs`` training pairs (batch ``j`` begins at pair ``j * batch_size``), so the router's
    learning-rate schedule (per epoch) and the pool's (per pass) stay in step."""
    return math.ceil(epoch * n_pairs / batch_size)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"


def usable_cores() -> int:
    """The CPU cores this process may use: its affinity mask, capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    for quota_file in _cgroup_cpu_max_files():
        try:
            quota, period = quota_file.read_text().split()
            if quota != "max":
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return cores


def _cgroup_cpu_max_files() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    files = [root / "cpu.max"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):  # cgroup v2: this process's group
                files.append(root / line[3:].lstrip("/") / "cpu.max")
    except OSError:
        pass
    return files


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads, by default the usable cores (never more than torch's own default, so
    ``OMP_NUM_THREADS`` still lowers it). Unbounded, a 2-core share of a big machine runs many threads
    that fight for it, and epoch times swing with the machine's load."""
    torch.set_num_threads(int(threads) if threads else min(torch.get_num_threads(), usable_cores()))
    return torch.get_num_threads()


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

    def __enter__(self) -> StopRequests:
        if self.enabled:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        signal.signal(signum, self.previous[signum])  # the next one acts at once
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        sys.stderr.write(
            f"\n{name}: stopping after this batch to write a checkpoint ({name} again stops at once, "
            "losing the batches since the last checkpoint)\n"
        )


class DivergenceGuard:
    """Finds a training that has gone non-finite, before it writes anything.

    After every batch it reads the engine's running means (train loss and reward; one device read of
    six numbers) and the trainer's :meth:`Trainer.health` (losses SB3 read anyway, the router's parameter
    norm: one device read). A NaN or infinite loss, reward or gradient shows there within a batch: a
    non-finite gradient makes the parameters it updates non-finite, and non-finite pool parameters make
    the next batch's losses non-finite. Two reads per batch, against a batch's many kernel launches, cost
    no measurable time on a GPU. Before a checkpoint it
    also checks the pool's parameters (one read; a checkpoint never holds a diverged pool), and after
    evaluation the record's losses.
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
    on the CPU, when that is over an hour, flags for a quick first run. The first batch of an epoch is
    not timed (allocations, CUDA start-up)."""

    LINE_FROM_S = 600  # say nothing about shorter runs
    QUICK_EPOCHS, QUICK_TEST_PAIRS, QUICK_TARGET_S = 3, 500, 600

    def __init__(self, device: torch.device, batch_size: int) -> None:
        self.device, self.batch_size = device, batch_size
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
            batches = max(1, int(self.QUICK_TARGET_S / (self.QUICK_EPOCHS * per_batch)))
            line += (
                f". These are the paper's GPU settings; for a first look on this CPU add --limit-train "
                f"{batches * self.batch_size} --limit-test {self.QUICK_TEST_PAIRS} --epochs "
                f"{self.QUICK_EPOCHS} (about {duration(batches * self.QUICK_EPOCHS * per_batch)} of training)"
            )
        return line


def duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{max(1, round(seconds / 60))} min"


@dataclass
class Position:
    """Where a run stands: ``epoch`` is the next epoch to train, ``batch`` the batches of it already
    trained; ``wall`` the seconds of the epochs before it, ``partial`` those spent in it so far."""

    epoch: int = 0
    batch: int = 0
    wall: float = 0.0
    partial: float = 0.0


class EpochLoop:
    """The epochs of one process of a run, from ``start`` to ``cfg.epochs``, with the checks,
    checkpoints and stops between batches (module docstring)."""

    def __init__(
        self,
        cfg: RunConfig,
        trainer: Trainer,
        train_env: RoutingSB3VecEnv,
        test_engine: RoutingEngine,
        val_engine: RoutingEngine | None,
        bench: MTLBenchmark,
        metrics: MetricsLog,
        on_epoch: EpochReport | None,
    ) -> None:
        self.cfg, self.trainer, self.train_env, self.test_engine = cfg, trainer, train_env, test_engine
        self.val_engine = val_engine
        self.engine = train_env.engine
        self.n_tasks, self.n_classes = bench.n_tasks, bench.n_classes
        self.metrics, self.on_epoch = metrics, on_epoch
        self.checkpoint = Checkpoint(cfg.out)
        self.n_pairs = len(self.engine.data)
        self.batches_per_epoch = math.ceil(self.n_pairs / self.engine.batch_size)  # the most an epoch has
        self.guard = DivergenceGuard(trainer, self.engine)
        self.estimate = TimeEstimate(self.engine.device, self.engine.batch_size)
        self.stop = StopRequests(enabled=cfg.checkpoint)
        self.position = Position()
        self.epoch_started = 0.0  # perf_counter of the epoch's start, less its earlier part
        self.last_checkpoint = time.monotonic()

    def batches_before(self, epoch: int) -> int:
        return batches_before(epoch, self.n_pairs, self.engine.batch_size)

    def epoch_batches(self, epoch: int) -> int:
        return self.batches_before(epoch + 1) - self.batches_before(epoch)

    def run(self, start: Position) -> list[dict[str, Any]]:
        self.position = start
        b = self.engine.batch_size
        self.progress = ProgressBar(
            self.batches_before(self.cfg.epochs) * b, (self.batches_before(start.epoch) + start.batch) * b,
            self.cfg.progress,
        )  # fmt: skip
        records = []
        try:
            with self.stop:
                while self.position.epoch < self.cfg.epochs:
                    records.append(self.run_epoch())
                    self.position = Position(self.position.epoch + 1, 0, self.position.wall)
                    if self.stop.requested and self.position.epoch < self.cfg.epochs:
                        raise self.interrupted()
        finally:
            self.progress.close()
        return records

    # ----------------------------------------------------------------- one epoch
    def run_epoch(self) -> dict[str, Any]:
        epoch, first = self.position.epoch, self.position.batch
        self.epoch_started = time.perf_counter() - self.position.partial
        self.trainer.set_epoch(epoch)
        if first == 0:
            self.engine.reset_stats()
        self.estimate.epoch_started()
        module_lr = self.engine.optimizer.lr_of_pass(epoch)  # an epoch is the batches beginning in its pass
        if first < self.epoch_batches(epoch):
            self.train_batches(self.epoch_batches(epoch) - first)
        train_seconds = time.perf_counter() - self.epoch_started
        result = evaluate(self.trainer.act, self.test_engine, self.n_tasks, self.n_classes)
        if self.val_engine is not None:
            val = evaluate(self.trainer.act, self.val_engine, self.n_tasks, self.n_classes, prefix="val")
            result.update({k: v for k, v in val.items() if k.startswith("val_")})
        epoch_seconds = time.perf_counter() - self.epoch_started
        self.position.wall += epoch_seconds
        record = {
            "epoch": epoch,
            "episodes": self.batches_before(epoch + 1) * self.engine.batch_size,
            "wall_clock_s": round(self.position.wall, 3),
            "epoch_seconds": round(epoch_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(epoch_seconds - train_seconds, 3),
            "router_lr": self.trainer.router_lr(epoch),
            "module_lr": module_lr,
            **self.engine.stats(),
            **result,
        }
        self.refuse_divergence(self.guard.record_problem(record))
        self.metrics.append(record)
        if self.cfg.checkpoint:
            self.save_checkpoint(next_batch=0, complete=epoch)
        plot_run(self.cfg.out, self.train_env.action_names)
        self.report(epoch, record, epoch_seconds)
        return record

    def train_batches(self, n_batches: int) -> None:
        try:
            self.trainer.learn_epoch(n_batches, self.after_batch)
        except RuntimeError as e:
            problem = self.guard.error_problem(e)
            if problem is None:
                raise
            raise TrainingDiverged(self.diverged_message(problem, in_batch=True)) from e
        if self.position.batch < self.epoch_batches(self.position.epoch):  # stopped at a signal, checkpointed
            raise self.interrupted()

    def after_batch(self, episodes: int) -> bool:
        """Between two batches: progress, the divergence check, the time estimate, and a checkpoint when
        one is due or a stop was asked for; True stops the epoch here."""
        self.progress(episodes)
        self.position.batch += 1
        self.refuse_divergence(self.guard.problem())
        left = (
            self.batches_before(self.cfg.epochs)
            - self.batches_before(self.position.epoch)
            - self.position.batch
        )
        line = self.estimate.batch_done(left)
        if line:
            tqdm.write(line)
        if self.position.batch == self.epoch_batches(self.position.epoch) or not self.cfg.checkpoint:
            return False  # the epoch's end checkpoints (and stops) after evaluating
        interval = self.cfg.checkpoint_every_minutes * 60
        if self.stop.requested or time.monotonic() - self.last_checkpoint >= interval:
            self.position.partial = time.perf_counter() - self.epoch_started
            self.save_checkpoint(next_batch=self.position.batch, complete=self.position.epoch - 1)
        return self.stop.requested

    # ----------------------------------------------------------------- writing
    def save_checkpoint(self, next_batch: int, complete: int) -> None:
        self.refuse_divergence(self.guard.pool_problem())
        state = {
            "next_batch": next_batch,
            "batches_per_epoch": self.batches_per_epoch,
            "wall_clock_s": self.position.wall,
            "partial_epoch_s": self.position.partial if next_batch else 0.0,
        }
        self.checkpoint.save(complete, self.trainer, self.train_env.state_dict(), state)
        self.last_checkpoint = time.monotonic()

    def report(self, epoch: int, record: dict[str, Any], epoch_seconds: float) -> None:
        summary = (
            f"test acc {100 * record['test_accuracy']:.2f}% "
            f"(balanced {100 * record['test_balanced_accuracy']:.2f}%), unused {record['unused_modules']}"
        )
        self.progress.describe(f"epoch {epoch}: {summary}")
        tqdm.write(
            f"epoch {epoch}: test accuracy {100 * record['test_accuracy']:.2f}% balanced "
            f"{100 * record['test_balanced_accuracy']:.2f}% loss {record['test_loss']:.4f} "
            f"unused modules {record['unused_modules']} | train acc {100 * record['train_accuracy']:.2f}% "
            f"| {epoch_seconds:.1f}s"
        )
        if self.on_epoch is not None:
            self.on_epoch(record)

    # ----------------------------------------------------------------- stopping
    def where(self, in_batch: bool = False) -> str:
        """The epoch and the batch just done (``in_batch``: the batch in progress)."""
        batch = self.position.batch + int(in_batch)
        return f"epoch {self.position.epoch}, batch {batch} of {self.epoch_batches(self.position.epoch)}"

    def kept(self) -> str:
        if not self.checkpoint.resumable():
            return "no checkpoint"
        return f"a checkpoint {checkpoint_position(checkpoint_state(self.cfg.out), self.batches_per_epoch)}"

    def refuse_divergence(self, problem: str | None) -> None:
        if problem is not None:
            raise TrainingDiverged(self.diverged_message(problem))

    def diverged_message(self, problem: str, in_batch: bool = False) -> str:
        router_lr = self.trainer.router_lr(self.position.epoch)
        lrs = f"module lr {self.engine.optimizer.lr:g}"
        if router_lr is not None:
            lrs = f"router lr {router_lr:g}, {lrs}"
        flags = "--lr" if router_lr is None else "--lr or --router-lr"
        return (
            f"training diverged in {self.where(in_batch)}: {problem} ({lrs}); nothing of this epoch was "
            f"written and {self.cfg.out} has {self.kept()}; a lower {flags} may help"
        )

    def interrupted(self) -> TrainingInterrupted:
        signum = self.stop.signum or signal.SIGINT
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        out = self.cfg.out
        return TrainingInterrupted(
            f"stopped by {name}: {out} has {self.kept()}; continue with: {resume_command(out)}", signum
        )


def checkpoint_position(state: dict[str, Any], batches_per_epoch: int) -> str:
    """``"after epoch 2"``, or ``"at epoch 3, batch 40 of 782"`` (40 batches of epoch 3 trained)."""
    epoch, batch = int(state["epoch"]), int(state.get("next_batch", 0))
    if batch:
        return f"at epoch {epoch + 1}, batch {batch} of {batches_per_epoch}"
    return f"after epoch {epoch}"


def announce(cfg: RunConfig, device: torch.device) -> None:
    """The run's three facts a user needs first; everything else goes to config.json."""
    print(f"device: {device_name(device)}")
    print(f"data: {get_benchmark(cfg.env).data_folder}")  # where the loader read it (loaded once, cached)
    print(f"run folder: {cfg.out} (its {CONFIG_FILE} holds every setting)")


def restore(
    cfg: RunConfig, trainer: Trainer, train_env: RoutingSB3VecEnv, batches_per_epoch: int
) -> tuple[Position, dict[str, Any]]:
    """Load the checkpoint of ``cfg.out`` into the trainer and the env; return where it stands and
    ``state.json``."""
    try:
        state, env_state, rng = Checkpoint(cfg.out).load(trainer)
        saved_batches = int(state.get("batches_per_epoch", batches_per_epoch))
        if saved_batches == batches_per_epoch:
            train_env.load_state_dict(env_state)
    except Exception as e:  # a damaged file: one line naming it, not the unpickler's traceback
        raise ValueError(
            f"--resume: the checkpoint in {cfg.out} cannot be loaded ({type(e).__name__}: {e})"
        ) from e
    if saved_batches != batches_per_epoch:
        raise ValueError(
            f"--resume: the checkpoint has {saved_batches} batches per epoch, this data {batches_per_epoch}: "
            "is --data-root another data set?"
        )
    set_rng_state(rng)
    position = Position(
        epoch=int(state["epoch"]) + 1,
        batch=int(state.get("next_batch", 0)),
        wall=float(state["wall_clock_s"]),
        partial=float(state.get("partial_epoch_s", 0.0)),
    )
    print(f"resumed {cfg.out} {checkpoint_position(state, batches_per_epoch)}")
    return position, state


def train(cfg: RunConfig, resume: bool = False, on_epoch: EpochReport | None = None) -> list[dict[str, Any]]:
    """Run (or, with ``resume``, continue) the training ``cfg`` describes in the folder ``cfg.out``.

    Args:
        cfg: the run's configuration.
        resume: continue from the checkpoint in ``cfg.out`` (only the settings
            :data:`agents.run_plan.ALLOWED_ON_RESUME` lists may differ from its ``config.json``); else
            start the run, removing what an earlier run left in ``cfg.out``.
        on_epoch: called with every epoch's metrics record after it is written (e.g. Ray Tune's report).

    Returns:
        the metrics records of the epochs this call ran.

    Raises:
        TrainingDiverged: a loss, reward or parameter became non-finite.
        TrainingInterrupted: Ctrl-C or SIGTERM stopped the run (after a checkpoint).
    """
    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, on_epoch)
    finally:
        torch.set_num_threads(threads)  # a caller's process keeps its own setting


def _train(cfg: RunConfig, resume: bool, on_epoch: EpochReport | None) -> list[dict[str, Any]]:
    out = cfg.out
    set_threads(cfg.threads)
    device = resolve_device(cfg.env.device)  # resolved once; everything below gets the concrete device
    cfg.env = cfg.env.replace(device=str(device))
    saved = read_config(out) if resume else {}
    changes = resume_changes(saved, cfg) if resume else {}  # before any data loads
    if device.type == "cuda" and cfg.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls and convs: ~2x on Hopper
        torch.backends.cudnn.allow_tf32 = True
    announce(cfg, device)
    train_env = RoutingSB3VecEnv.from_config(cfg.env)
    engine = train_env.engine
    test_engine, bench = make_engine(
        cfg.test_env,
        batch_size=min(cfg.eval_batch_size, cfg.limit_test or cfg.eval_batch_size),
        pool=engine.pool,
    )
    val_engine = None
    if cfg.env.val_fraction > 0:
        val_config = cfg.env.replace(split="val", max_pairs=cfg.limit_test)
        val_engine, _ = make_engine(val_config, cfg.eval_batch_size, engine.pool)
    trainer = ALGORITHMS[cfg.algo].build(train_env, cfg)
    batches_per_epoch = math.ceil(len(engine.data) / engine.batch_size)
    config = {
        **cfg.to_dict(),
        "device_name": device_name(device),
        "train_pairs": len(engine.data),
        "test_pairs": len(test_engine.data),
        "val_pairs": len(val_engine.data) if val_engine is not None else 0,
        "batches_per_epoch": batches_per_epoch,
        "torch": torch.__version__,
    }
    start = Position()
    if resume:
        start, state = restore(cfg, trainer, train_env, batches_per_epoch)
        config["resumed"] = [
            *saved.get("resumed", []),
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "from": checkpoint_position(state, batches_per_epoch),
                "changed": changes,
            },
        ]
    else:
        clear_run(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG_FILE, json.dumps(config, indent=2, default=str))  # after a successful load
    metrics = MetricsLog(out, purge_step=start.epoch if resume else None)
    try:
        if resume:
            metrics.truncate(start.epoch - 1)
        loop = EpochLoop(cfg, trainer, train_env, test_engine, val_engine, bench, metrics, on_epoch)
        return loop.run(start)
    finally:
        metrics.close()
