"""The training loop of a run: what ``python train.py`` (and a sweep trial) executes.

Every epoch trains on one pass over the training pairs (batches of ``batch_size`` episodes: one rollout
and update of the agent, one step of the pool), then evaluates every test pair once with deterministic
routing and a frozen pool, writes a line of ``metrics.jsonl`` and a checkpoint.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from agents.algorithms import ALGORITHMS
from agents.config import RunConfig
from agents.evaluation import evaluate
from agents.plot import plot_run
from agents.run_folder import Checkpoint, MetricsLog, set_rng_state
from routing_env.build import make_engine
from routing_env.config import resolve_device
from routing_env.sb3_vec_env import RoutingSB3VecEnv

EpochReport = Callable[[dict[str, Any]], None]  # called with each epoch's metrics record


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
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def train(cfg: RunConfig, resume: bool = False, on_epoch: EpochReport | None = None) -> list[dict[str, Any]]:
    """Run (or, with ``resume``, continue) the training ``cfg`` describes in the folder ``cfg.out``.

    Args:
        cfg: the run's configuration.
        resume: continue from the checkpoint in ``cfg.out``.
        on_epoch: called with every epoch's metrics record after it is written (e.g. Ray Tune's report).

    Returns:
        the metrics records of the epochs this call ran.
    """
    device = resolve_device(cfg.env.device)  # resolved once; everything below gets the concrete device
    cfg.env = cfg.env.replace(device=str(device))
    if device.type == "cuda" and cfg.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls and convs: ~2x on Hopper
        torch.backends.cudnn.allow_tf32 = True
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
    out = cfg.out
    n_pairs, batch_size = len(engine.data), engine.batch_size
    batches_per_epoch = math.ceil(n_pairs / batch_size)  # 1 more in the epochs where a batch spans two passes
    config = {
        **cfg.to_dict(),
        "device_name": device_name(device),
        "train_pairs": len(engine.data),
        "test_pairs": len(test_engine.data),
        "val_pairs": len(val_engine.data) if val_engine is not None else 0,
        "batches_per_epoch": batches_per_epoch,
        "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    print(json.dumps(config, indent=2, default=str))

    metrics = MetricsLog(out)
    checkpoint = Checkpoint(out)
    start_epoch, wall = 0, 0.0
    if resume:
        state, env_state, rng = checkpoint.load(trainer)
        train_env.load_state_dict(env_state)
        set_rng_state(rng)
        start_epoch, wall = state["epoch"] + 1, state["wall_clock_s"]
        metrics.truncate(state["epoch"])
        print(f"resumed {out} after epoch {state['epoch']}")

    progress = ProgressBar(
        batches_before(cfg.epochs, n_pairs, batch_size) * batch_size,
        batches_before(start_epoch, n_pairs, batch_size) * batch_size,
        cfg.progress,
    )
    records = []
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        trainer.set_epoch(epoch)
        engine.reset_stats()
        module_lr = engine.optimizer.lr  # the first batch of the epoch is drawn already: its pass's lr
        first_batch = batches_before(epoch, n_pairs, batch_size)
        trainer.learn_epoch(batches_before(epoch + 1, n_pairs, batch_size) - first_batch, progress)
        train_seconds = time.perf_counter() - t0
        result = evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes)
        if val_engine is not None:
            val = evaluate(trainer.act, val_engine, bench.n_tasks, bench.n_classes, prefix="val")
            result.update({k: v for k, v in val.items() if k.startswith("val_")})
        epoch_seconds = time.perf_counter() - t0
        wall += epoch_seconds
        record = {
            "epoch": epoch,
            "episodes": batches_before(epoch + 1, n_pairs, batch_size) * batch_size,
            "wall_clock_s": round(wall, 3),
            "epoch_seconds": round(epoch_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(epoch_seconds - train_seconds, 3),
            "router_lr": trainer.router_lr(epoch),
            "module_lr": module_lr,
            **engine.stats(),
            **result,
        }
        metrics.append(record)
        records.append(record)
        if cfg.checkpoint:
            checkpoint.save(epoch, trainer, train_env.state_dict(), {"wall_clock_s": wall})
        plot_run(out, train_env.action_names)
        summary = (
            f"test acc {100 * result['test_accuracy']:.2f}% "
            f"(balanced {100 * result['test_balanced_accuracy']:.2f}%), unused {result['unused_modules']}"
        )
        progress.describe(f"epoch {epoch}: {summary}")
        tqdm.write(
            f"epoch {epoch}: test accuracy {100 * result['test_accuracy']:.2f}% balanced "
            f"{100 * result['test_balanced_accuracy']:.2f}% loss {result['test_loss']:.4f} "
            f"unused modules {result['unused_modules']} | train acc {100 * record['train_accuracy']:.2f}% "
            f"| {epoch_seconds:.1f}s"
        )
        if on_epoch is not None:
            on_epoch(record)
    progress.close()
    metrics.close()
    return records
