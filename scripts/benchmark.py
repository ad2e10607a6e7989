"""Speed and memory of the env, of LRN training and of the static baseline, in one run on one device.

    python scripts/benchmark.py [--device cuda] [--benchmark mnist] [--batches 100]

Prints a table and writes results/bench/<device-name>.json. Per-epoch numbers are measured on
--batches batches (after warm-up) and scaled to one pass over the training pairs (medians of
--repeats measurements). --parallel 1 2 4 8 also starts that many LRN trainings as separate
processes on the same device and reports their total throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from agents.algorithms import ALGORITHMS
from agents.config import AgentConfig, RunConfig
from agents.evaluation import evaluate
from agents.trainers.static import StaticTrainer
from agents.training import device_name
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine

ENV_IDS = {"mnist": "RoutingMNIST-v0", "cifar": "RoutingCIFAR-v0", "min": "RoutingMIN-v0"}


def lrn_trainer(env: RoutingSB3VecEnv, args: argparse.Namespace):
    """train.py's MaskablePPO trainer for ``env``."""
    cfg = RunConfig(
        env_id=ENV_IDS[args.benchmark], env=env.config, agent=AgentConfig(minibatch_unit=args.minibatch_unit)
    )
    return ALGORITHMS["maskable_ppo"].build(env, cfg)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def random_valid_actions(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.multinomial(mask.float(), 1).squeeze(1)


def env_only(engine, n_batches: int) -> None:
    for _ in range(n_batches):
        engine.begin_batch()
        for _ in range(engine.max_depth):
            engine.step(random_valid_actions(engine.action_mask()))


def vec_env_only(env: RoutingSB3VecEnv, n_batches: int) -> None:
    env.reset()
    for _ in range(n_batches * env.engine.max_depth):
        masks = torch.as_tensor(env.action_masks())
        env.step(random_valid_actions(masks).numpy())


def lrn_worker(args: argparse.Namespace) -> dict:
    """One LRN training (MaskablePPO + router + module training) for --batches batches."""
    kwargs = env_kwargs(args)
    env = RoutingSB3VecEnv(ENV_IDS[args.benchmark], num_envs=args.batch_size, **kwargs)
    trainer = lrn_trainer(env, args)
    trainer.learn_epoch(args.warmup, lambda n: None)
    device = env.engine.device
    sync(device)
    t = time.perf_counter()
    trainer.learn_epoch(args.batches, lambda n: None)
    sync(device)
    seconds = time.perf_counter() - t
    return {"episodes": args.batches * args.batch_size, "seconds": seconds}


def env_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        duplicates=args.duplicates,
        max_depth=args.max_depth,
        device=args.device,
        seed=0,
        dispatch=args.dispatch,
        data_root=args.data_root,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="mnist", choices=sorted(ENV_IDS))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-depth", type=int, default=6)
    p.add_argument("--duplicates", type=int, default=10)
    p.add_argument("--dispatch", default="auto")
    p.add_argument("--minibatch-unit", default="episodes", choices=("episodes", "transitions"))
    p.add_argument("--batches", type=int, default=100, help="batches per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parallel", type=int, nargs="*", default=[], help="numbers of parallel LRN trainings")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-tf32", action="store_true")
    p.add_argument("--compare-dispatch", nargs="*", default=[], help="also time the env alone in these modes")
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile of LRN training here")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/bench/<device>.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.no_tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    if args.worker:
        print("RESULT " + json.dumps(lrn_worker(args)), flush=True)
        return

    cfg = RoutingConfig(benchmark=args.benchmark, batch_size=args.batch_size, **env_kwargs(args))
    engine, bench = make_engine(cfg)
    device = engine.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n_train = len(engine.data)
    batches_per_epoch = math.ceil(n_train / args.batch_size)
    rows: dict[str, float] = {}

    # 1. the env alone: random valid actions, module training on
    env_only(engine, args.warmup)
    s = timed(lambda: env_only(engine, args.batches), device, args.repeats)
    rows["env_episodes_per_second"] = args.batches * args.batch_size / s
    rows["env_epoch_seconds"] = s / args.batches * batches_per_epoch
    for mode in args.compare_dispatch:
        cfg_m = RoutingConfig(
            benchmark=args.benchmark, batch_size=args.batch_size, **{**env_kwargs(args), "dispatch": mode}
        )
        engine_m, _ = make_engine(cfg_m)
        env_only(engine_m, args.warmup)
        s = timed(lambda e=engine_m: env_only(e, args.batches), device, args.repeats)
        rows[f"env_episodes_per_second_{mode}"] = args.batches * args.batch_size / s
        engine_m = None
    vec = RoutingSB3VecEnv(ENV_IDS[args.benchmark], num_envs=args.batch_size, **env_kwargs(args))
    vec_env_only(vec, args.warmup)
    s = timed(lambda: vec_env_only(vec, args.batches), device, args.repeats)
    rows["vec_env_episodes_per_second"] = args.batches * args.batch_size / s
    vec = None  # free its pool before the next measurement

    # 2. full LRN training: MaskablePPO + router + module training (what train.py does per epoch)
    env = RoutingSB3VecEnv(ENV_IDS[args.benchmark], num_envs=args.batch_size, **env_kwargs(args))
    trainer = lrn_trainer(env, args)
    trainer.learn_epoch(args.warmup, lambda n: None)
    s = timed(lambda: trainer.learn_epoch(args.batches, lambda n: None), device, args.repeats)
    rows["lrn_episodes_per_second"] = args.batches * args.batch_size / s
    rows["lrn_epoch_seconds"] = s / args.batches * batches_per_epoch
    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        trainer.learn_epoch(args.batches, lambda n: None)
        sync(device)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
        args.profile.write_text(text.getvalue())

    # 3. evaluation: every test pair once, deterministic routing
    test_engine, _ = make_engine(
        RoutingConfig(benchmark=args.benchmark, split="test", **env_kwargs(args)),
        batch_size=512,
        pool=env.engine.pool,
    )
    rows["eval_seconds"] = timed(
        lambda: evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes), device, args.repeats
    )
    rows["eval_pairs"] = len(test_engine.data)
    trainer = env = None

    # 4. the static network through the same engine
    static_cfg = RoutingConfig(
        benchmark=args.benchmark,
        batch_size=args.batch_size,
        pool="static",
        **{**env_kwargs(args), "max_depth": 5},
    )
    static_engine, _ = make_engine(static_cfg)
    static = StaticTrainer(SimpleNamespace(engine=static_engine))
    static.learn_epoch(args.warmup, lambda n: None)
    s = timed(lambda: static.learn_epoch(args.batches, lambda n: None), device, args.repeats)
    rows["static_samples_per_second"] = args.batches * args.batch_size / s
    rows["static_epoch_seconds"] = s / args.batches * batches_per_epoch
    rows["lrn_over_static"] = rows["lrn_epoch_seconds"] / rows["static_epoch_seconds"]
    if device.type == "cuda":
        rows["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9

    # 5. several LRN trainings at once on the device, as separate processes
    parallel = {}
    for n in args.parallel:
        cmd = [sys.executable, __file__, "--worker", "--benchmark", args.benchmark, "--device", str(device)]
        cmd += [
            "--batches",
            str(args.batches),
            "--warmup",
            str(args.warmup),
            "--duplicates",
            str(args.duplicates),
        ]
        cmd += ["--max-depth", str(args.max_depth), "--batch-size", str(args.batch_size)]
        cmd += ["--dispatch", args.dispatch, "--minibatch-unit", args.minibatch_unit]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        results = []
        for proc in procs:
            stdout, _ = proc.communicate()
            match = re.search(r"RESULT (.*)", stdout)
            if proc.returncode != 0 or match is None:
                raise RuntimeError(f"parallel worker failed (exit {proc.returncode})")
            results.append(json.loads(match.group(1)))
        # workers overlap in their timed sections; total rate = sum of per-worker rates
        total = sum(r["episodes"] / r["seconds"] for r in results)
        parallel[str(n)] = {"total_episodes_per_second": total, "per_run": total / n}

    name = device_name(device)
    report = {
        "device": name,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
        "train_pairs": n_train,
        "batches_per_epoch": batches_per_epoch,
        "dispatch": engine.dispatch,
        **rows,
        "parallel": parallel,
        "torch": torch.__version__,
    }
    out = args.out or Path("results/bench") / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{args.benchmark} B={args.batch_size} depth={args.max_depth} dup={args.duplicates} on {name}")
    print(f"{'measure':34s} value")
    for key, value in rows.items():
        print(f"{key:34s} {value:12.3f}")
    for n, r in parallel.items():
        print(f"{'parallel x' + n + ' total episodes/s':34s} {r['total_episodes_per_second']:12.1f}")
    print(f"wrote {out}")
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
