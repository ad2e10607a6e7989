"""Train and evaluate a Limitless Routing Network (or a baseline) on a multi-task benchmark.

    python train.py --env RoutingMNIST-v0                   # the paper's setting, 100 epochs
    python train.py --env RoutingMIN-v0 --algo static       # the static-network baseline
    python train.py --algo routing_network                  # the original routing network (WPL)
    python train.py --out runs/x --resume                   # continue a killed run

Every epoch: one pass over the training pairs (batches of --batch-size episodes; one PPO update per
batch), then an exact test pass with deterministic routing. A run folder (--out) gets config.json,
metrics.jsonl, TensorBoard scalars (tb/), plots and checkpoint/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch

import routing_env
from agents.algorithms import ALGORITHMS, ROUTER_POLICY_ALGORITHMS, AlgoConfig, SB3Trainer, StaticTrainer
from agents.callbacks import Checkpoint, MetricsLog, Progress, set_rng_state
from agents.evaluation import evaluate
from agents.plot import plot_run
from agents.routing_network import RoutingNetworkTrainer
from routing_env import DataError, RoutingConfig, RoutingVecEnv, make_engine
from routing_env.engine import resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="RoutingMNIST-v0", help="RoutingMNIST-v0, RoutingCIFAR-v0, RoutingMIN-v0")
    p.add_argument("--algo", default="maskable_ppo", choices=ALGORITHMS)
    p.add_argument("--epochs", type=int, default=100, help="passes over the training pairs")
    p.add_argument("--duplicates", type=int, default=10, help="copies of each kind of module")
    p.add_argument("--max-depth", type=int, default=6, help="steps per episode (modules + PASS)")
    p.add_argument("--no-bonus", action="store_true", help="no collapse bonus (bonus_weight 0)")
    p.add_argument("--bonus-weight", type=float, default=1.0)
    p.add_argument(
        "--bonus-warmup", type=int, default=0, help="epochs without the bonus before it switches on"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0, help="seeds the benchmark's pairs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data-root", default=None, help="default $ROUTING_ENV_DATA, else ~/.cache/routing_env")
    p.add_argument(
        "--no-download",
        action="store_true",
        help="fail at once when data is missing (no torchvision download)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<env>-<algo>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--limit-train", type=int, default=None, help="use only N training pairs per pass")
    p.add_argument("--limit-test", type=int, default=None, help="use only N test pairs")
    p.add_argument("--batch-size", type=int, default=128, help="episodes per batch (PPO rollout, pool step)")
    p.add_argument("--minibatch", type=int, default=64, help="PPO minibatch, in --minibatch-unit")
    p.add_argument("--minibatch-unit", choices=("episodes", "transitions"), default="episodes")
    p.add_argument("--ppo-epochs", type=int, default=1, help="PPO passes over each batch")
    p.add_argument("--lr", type=float, default=1e-4, help="module (and default router) learning rate")
    p.add_argument("--router-lr", type=float, default=None, help="router learning rate (default --lr)")
    p.add_argument("--lr-decay", type=float, default=0.97, help="lr factor after each epoch")
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--gae-lambda", type=float, default=0.95)
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument(
        "--task-prior",
        type=float,
        default=0.0,
        help="std of the router's initial per-task logit bias (not in the paper; 0 = none)",
    )
    p.add_argument("--rn-learner", choices=("wpl", "reinforce"), default="wpl", help="routing_network's")
    p.add_argument("--rn-lr", type=float, default=None, help="routing_network's lr (wpl 0.01, reinforce 0.1)")
    p.add_argument("--rn-rho", type=float, default=0.0, help="routing_network's collaboration reward")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-checkpoint", action="store_true", help="write no checkpoint (a MIN-MTL one is ~7 GB)"
    )
    p.add_argument("--no-tf32", action="store_true", help="full-precision float32 matmuls on CUDA")
    args = p.parse_args(argv)
    for name in ("epochs", "duplicates", "batch_size", "minibatch", "ppo_epochs", "eval_batch_size"):
        if getattr(args, name) < (0 if name == "epochs" else 1):
            p.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'epochs' else '>= 1'}")
    for name in ("limit_train", "limit_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_depth < 2:
        p.error("--max-depth must be >= 2")
    if args.task_prior < 0:
        p.error("--task-prior must be >= 0")
    if args.task_prior > 0 and args.algo not in ROUTER_POLICY_ALGORITHMS:
        p.error(
            f"--task-prior is a RouterPolicy option: use --algo maskable_ppo, ppo or a2c (not {args.algo})"
        )
    try:
        benchmark = gym.spec(args.env).kwargs.get("benchmark")
    except gym.error.Error as e:
        p.error(
            f"unknown --env {args.env!r} ({e}); routing envs: RoutingMNIST-v0, RoutingCIFAR-v0, RoutingMIN-v0"
        )
    if benchmark is None:
        p.error(f"--env {args.env!r} is not a routing env (RoutingMNIST-v0, RoutingCIFAR-v0, RoutingMIN-v0)")
    args.benchmark = benchmark
    if args.no_bonus:
        args.bonus_weight = 0.0
    if args.algo == "static":
        args.max_depth = 5  # the fixed network: input conv, hidden conv, two FC layers, task head
    if args.algo == "routing_network":
        args.max_depth, args.bonus_weight = 5, 0.0  # conv trunk + 3 routed FC depths; +-1 reward only
        if (args.rn_lr is not None and args.rn_lr <= 0) or args.rn_rho < 0:
            p.error("--rn-lr must be > 0 and --rn-rho >= 0")
    if args.out is None:
        args.out = Path("runs") / f"{args.env}-{args.algo}-s{args.seed}"
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if not args.resume and (out / "metrics.jsonl").exists():
        sys.exit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out")
    if args.resume and not Checkpoint(out).exists() and not (out / "checkpoint.old").exists():
        sys.exit(f"error: --resume: no checkpoint in {out}")
    env_kwargs = dict(
        data_root=args.data_root,
        download=not args.no_download,
        data_seed=args.data_seed,
        duplicates=args.duplicates,
        max_depth=args.max_depth,
        bonus_weight=args.bonus_weight,
        lr=args.lr,
        lr_decay=args.lr_decay,
        device=args.device,
        seed=args.seed,
        pool=args.algo if args.algo in ("static", "routing_network") else "lrn",
    )
    try:
        resolve_device(args.device)
        train_env = RoutingVecEnv(
            args.env, num_envs=args.batch_size, max_pairs=args.limit_train, **env_kwargs
        )
        test_config = RoutingConfig(
            benchmark=args.benchmark, split="test", max_pairs=args.limit_test, **env_kwargs
        )
        test_engine, bench = make_engine(
            test_config,
            batch_size=min(args.eval_batch_size, args.limit_test or args.eval_batch_size),
            pool=train_env.engine.pool,
        )
    except (DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    device = train_env.engine.device
    if device.type == "cuda" and not args.no_tf32:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls and convs: ~2x on Hopper
        torch.backends.cudnn.allow_tf32 = True
    algo_cfg = AlgoConfig(
        lr=args.router_lr or args.lr,
        lr_decay=args.lr_decay,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        minibatch=args.minibatch,
        minibatch_unit=args.minibatch_unit,
        ppo_epochs=args.ppo_epochs,
        ent_coef=args.ent_coef,
        task_prior_std=args.task_prior,
    )
    if args.algo == "static":
        trainer = StaticTrainer(train_env.engine)
    elif args.algo == "routing_network":
        trainer = RoutingNetworkTrainer(
            train_env.engine, bench.n_tasks, args.rn_learner, args.rn_lr, args.rn_rho, seed=args.seed
        )
        algo_cfg = dataclasses.replace(algo_cfg, lr=trainer.lr, lr_decay=1.0)  # constant router lr
    else:
        trainer = SB3Trainer(args.algo, train_env, algo_cfg, args.seed, str(device))
    n_train = len(train_env.engine.data)
    batches_per_epoch = math.ceil(n_train / args.batch_size)
    config = {
        "env": args.env,
        "algo": args.algo,
        "seed": args.seed,
        "device": str(device),
        "device_name": device_name(device),
        "epochs": args.epochs,
        "train_pairs": n_train,
        "test_pairs": len(test_engine.data),
        "batches_per_epoch": batches_per_epoch,
        "env_config": dataclasses.asdict(train_env.config),
        "algo_config": dataclasses.asdict(algo_cfg),
        **{k: v for k, v in vars(args).items() if k not in ("out", "resume")},
        "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    print(json.dumps(config, indent=2, default=str))

    metrics = MetricsLog(out)
    checkpoint = Checkpoint(out)
    start_epoch, wall = 0, 0.0
    if args.resume:
        state, env_state, rng = checkpoint.load(trainer)
        train_env.load_state_dict(env_state)
        set_rng_state(rng)
        start_epoch, wall = state["epoch"] + 1, state["wall_clock_s"]
        metrics.truncate(state["epoch"])
        print(f"resumed {out} after epoch {state['epoch']}")

    episodes_per_epoch = batches_per_epoch * args.batch_size
    progress = Progress(
        args.epochs * episodes_per_epoch, start_epoch * episodes_per_epoch, not args.no_progress
    )
    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        trainer.set_epoch(epoch)
        # Modules must specialise before balancing their use pays: no bonus in the warm-up epochs.
        train_env.engine.config.bonus_weight = 0.0 if epoch < args.bonus_warmup else args.bonus_weight
        train_env.engine.reset_stats()
        trainer.learn_epoch(batches_per_epoch, progress)
        train_seconds = time.perf_counter() - t0
        result = evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes)
        epoch_seconds = time.perf_counter() - t0
        wall += epoch_seconds
        record = {
            "epoch": epoch,
            "episodes": (epoch + 1) * episodes_per_epoch,
            "wall_clock_s": round(wall, 3),
            "epoch_seconds": round(epoch_seconds, 3),
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(epoch_seconds - train_seconds, 3),
            "router_lr": algo_cfg.lr * algo_cfg.lr_decay**epoch,
            "module_lr": train_env.engine.optimizer.param_groups[0]["lr"],
            **train_env.engine.stats(),
            **result,
        }
        metrics.append(record)
        if not args.no_checkpoint:
            checkpoint.save(epoch, trainer, train_env.state_dict(), {"wall_clock_s": wall})
        plot_run(out, train_env.action_names)
        progress.describe(
            f"epoch {epoch}: test acc {100 * result['test_accuracy']:.2f}% "
            f"(balanced {100 * result['test_balanced_accuracy']:.2f}%), unused {result['unused_modules']}"
        )
        tqdm_write(
            f"epoch {epoch}: test accuracy {100 * result['test_accuracy']:.2f}% balanced "
            f"{100 * result['test_balanced_accuracy']:.2f}% loss {result['test_loss']:.4f} "
            f"unused modules {result['unused_modules']} | train acc {100 * record['train_accuracy']:.2f}% "
            f"| {epoch_seconds:.1f}s"
        )
    progress.close()
    metrics.close()
    return 0


def tqdm_write(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text)


if __name__ == "__main__":
    assert routing_env  # registers the env ids
    sys.exit(main())
