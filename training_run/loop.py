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

import dataclasses
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.algorithms import ALGORITHMS
from agents.evaluation import evaluate
from agents.trainers.base import Trainer
from agents.trainers.fixed_route import FixedRouteTrainer
from routing_env.benchmarks import MTLBenchmark
from routing_env.build import get_benchmark, make_engine
from routing_env.engine import RoutingEngine
from routing_env.sb3_vec_env import RoutingSB3VecEnv
from routing_env.static_route import static_network_route, upcycle
from training_run.folder import CONFIG_FILE, MetricsLog, RunFolder, save_weights
from training_run.guards import DivergenceGuard, StopRequests, TimeEstimate
from training_run.machine import device_name, run_device, set_threads, use_tf32
from training_run.resume import RunPlan
from training_run.settings import FIRST_RUN, RunConfig

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
        folder: RunFolder,
        trainer: Trainer,
        train_env: RoutingSB3VecEnv,
        test_engine: RoutingEngine,
        val_engine: RoutingEngine | None,
        bench: MTLBenchmark,
        metrics: MetricsLog,
        on_epoch: EpochReport | None,
    ) -> None:
        self.cfg, self.folder, self.trainer = cfg, folder, trainer
        self.train_env, self.test_engine = train_env, test_engine
        self.val_engine = val_engine
        self.engine = train_env.engine
        self.n_tasks, self.n_classes = bench.n_tasks, bench.n_classes
        self.metrics, self.on_epoch = metrics, on_epoch
        self.checkpoint = folder.checkpoint
        self.n_pairs = len(self.engine.data)
        self.batches_per_epoch = math.ceil(self.n_pairs / self.engine.batch_size)  # the most an epoch has
        self.guard = DivergenceGuard(trainer, self.engine)
        self.estimate = TimeEstimate(self.engine.device, FIRST_RUN.timed_by(cfg))
        self.stop = StopRequests(enabled=cfg.checkpoint)
        self.position = Position()
        self.epoch_started = 0.0  # perf_counter of the epoch's start, less its earlier part
        self.last_checkpoint = time.monotonic()
        # Upcycling's first phase: the static route through the pool, trained before the router's epochs.
        self.static_route: FixedRouteTrainer | None = None
        if cfg.upcycle_epochs > 0:
            route = static_network_route(self.engine.pool, self.n_tasks, self.engine.max_depth)
            self.static_route = FixedRouteTrainer(self.engine, route)

    def phase_trainer(self, epoch: int) -> Trainer:
        """Who trains ``epoch``: the static route in upcycling's first phase, else the run's trainer."""
        if self.static_route is not None and epoch < self.cfg.upcycle_epochs:
            return self.static_route
        return self.trainer

    def start_epoch(self, epoch: int, first: int) -> None:
        """At the first batch of the router's first epoch after upcycling's phase: copy the trained trunk
        into every duplicate (once: a checkpoint within that epoch or later holds the copies), and let the
        agent's first rollout begin the next batch of the data walk rather than re-seed it."""
        if self.static_route is None or epoch != self.cfg.upcycle_epochs or first != 0:
            return
        upcycle(self.engine.pool, self.engine.optimizer)
        self.train_env._reset_seeds()

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
        self.start_epoch(epoch, first)
        trainer = self.phase_trainer(epoch)
        self.estimate.epoch_started()
        module_lr = self.engine.optimizer.lr_of_pass(epoch)  # an epoch is the batches beginning in its pass
        if first < self.epoch_batches(epoch):
            self.train_batches(self.epoch_batches(epoch) - first, trainer)
        train_seconds = time.perf_counter() - self.epoch_started
        result = evaluate(trainer.act, self.test_engine, self.n_tasks, self.n_classes)
        if self.val_engine is not None:
            val = evaluate(trainer.act, self.val_engine, self.n_tasks, self.n_classes, prefix="val")
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
            **({"upcycle_phase": trainer is self.static_route} if self.static_route is not None else {}),
            **self.engine.stats(),
            **result,
        }
        self.refuse_divergence(self.guard.record_problem(record))
        self.metrics.append(record)
        if self.cfg.checkpoint:
            self.save_checkpoint(next_batch=0, complete=epoch)
        plot_epoch(self.folder, self.train_env.action_names)
        self.report(epoch, record, epoch_seconds)
        return record

    def train_batches(self, n_batches: int, trainer: Trainer) -> None:
        try:
            trainer.learn_epoch(n_batches, self.after_batch)
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
        self.checkpoint.save(complete, self.trainer, self.train_env.state_dict(), rng_state(), state)
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
        state = self.checkpoint.state()
        if state is None:
            return "no checkpoint"
        return f"a checkpoint {checkpoint_position(state, self.batches_per_epoch)}"

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
            f"written and {self.folder.path} has {self.kept()}; a lower {flags} may help"
        )

    def interrupted(self) -> TrainingInterrupted:
        out, how = self.folder.path, self.folder.resume_command()
        message = f"stopped by {self.stop.name}: {out} has {self.kept()}; continue with: {how}"
        return TrainingInterrupted(message, self.stop.signum or signal.SIGINT)


def plot_epoch(folder: RunFolder, action_names: list[str]) -> None:
    """The run folder's plots, redrawn after every epoch (matplotlib loads on the first)."""
    from training_run.report.plots import plot_run

    plot_run(folder, action_names)


def rng_state() -> dict[str, Any]:
    """Every random generator's state (a checkpoint's ``rng.pt``)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    folder: RunFolder, trainer: Trainer, train_env: RoutingSB3VecEnv, batches_per_epoch: int
) -> tuple[Position, dict[str, Any]]:
    """Load the folder's checkpoint into the trainer and the env; return where it stands and
    ``state.json``."""
    try:
        state, env_state, rng = folder.checkpoint.load(trainer)
        saved_batches = int(state.get("batches_per_epoch", batches_per_epoch))
        if saved_batches == batches_per_epoch:
            train_env.load_state_dict(env_state)
    except Exception as e:  # a damaged file: one line naming it, not the unpickler's traceback
        raise ValueError(
            f"--resume: the checkpoint in {folder.path} cannot be loaded ({type(e).__name__}: {e})"
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
    print(f"resumed {folder.path} {checkpoint_position(state, batches_per_epoch)}")
    return position, state


def train(plan: RunPlan, on_epoch: EpochReport | None = None) -> list[dict[str, Any]]:
    """Train the run ``plan`` settled (:func:`training_run.resume.plan_run`): continue from its folder's
    checkpoint, or start it there (removing what an earlier run left). A plan is trained once.

    Args:
        plan: the run, its folder and whether it continues.
        on_epoch: called with every epoch's metrics record after it is written (e.g. Ray Tune's report).

    Returns:
        the metrics records of the epochs this call ran.

    Raises:
        ValueError: the device is not here, or the checkpoint cannot be loaded.
        TrainingDiverged: a loss, reward or parameter became non-finite.
        TrainingInterrupted: Ctrl-C or SIGTERM stopped the run (after a checkpoint).
    """
    plan.take()
    threads = torch.get_num_threads()
    try:
        return _train(plan, on_epoch)
    finally:
        torch.set_num_threads(threads)  # a caller's process keeps its own setting


def _train(plan: RunPlan, on_epoch: EpochReport | None) -> list[dict[str, Any]]:
    folder = plan.folder
    set_threads(plan.config.threads)
    device = run_device(plan.config.env.device)  # resolved once: everything below gets the concrete device
    cfg = dataclasses.replace(plan.config, env=plan.config.env.replace(device=str(device)))
    use_tf32(device, cfg.tf32)
    announce(cfg, device)
    train_env = RoutingSB3VecEnv.from_config(cfg.env)
    engine = train_env.engine
    test_engine, bench = make_engine(cfg.test_env, batch_size=cfg.eval_batch("test"), pool=engine.pool)
    val_engine = None
    if cfg.env.val_fraction > 0:
        val_engine, _ = make_engine(cfg.val_env, cfg.eval_batch("val"), engine.pool)
    trainer = ALGORITHMS[cfg.algo].build(
        train_env, seed=cfg.seed, agent=cfg.agent, router=cfg.router, routing_network=cfg.routing_network
    )
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
    if plan.resume:
        start, state = restore(folder, trainer, train_env, batches_per_epoch)
        config["resumed"] = [
            *plan.saved.get("resumed", []),
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "from": checkpoint_position(state, batches_per_epoch),
                "changed": plan.changes,
            },
        ]
    else:
        folder.clear()
    folder.write_config(config)  # after a successful load
    metrics = folder.metrics_log(purge_step=start.epoch if plan.resume else None)
    try:
        if plan.resume:
            metrics.truncate(start.epoch - 1)
        loop = EpochLoop(cfg, folder, trainer, train_env, test_engine, val_engine, bench, metrics, on_epoch)
        records = loop.run(start)
    finally:
        metrics.close()
    if cfg.save_weights:
        pool = {k: v.detach().cpu() for k, v in engine.pool.state_dict().items()}
        state = {"epoch": cfg.epochs - 1, "next_batch": 0}
        written = save_weights(folder.weights_path, config, state, pool, trainer.weights())
        print(f"wrote {written} ({written.stat().st_size / 1e6:,.0f} MB: the weights alone, to share)")
    return records
