"""Speed and memory of the env, of LRN training and of the static baseline, in one run on one device.

    python scripts/benchmark.py --device cuda                       # MNIST-MTL, B=128, depth 6, 10 dups
    python scripts/benchmark.py --device cuda --memory min          # + a MIN-MTL LRN run's peak memory
    python scripts/benchmark.py --device cuda --variant eager cuda_graph=false --parallel 1 2 4 8

Prints a table and writes results/bench/<device-name>.json. Per-epoch numbers are measured on --batches
batches (after warm-up) and scaled to one pass over the training pairs (medians of --repeats). Every
measurement uses train.py's own code: ``--algo maskable_ppo``'s trainer for LRN (MaskablePPO, the router, the
pool), the static trainer, the evaluation, with the configuration dataclasses' defaults (the paper's
readings; no ``--preset`` is applied). ``--variant NAME key=value ...`` repeats the LRN, env and static
measurements with env settings changed (e.g. ``cuda_graph=false``, ``dispatch=gathered``,
``precision=bf16``), in the same process, so its numbers compare with the default's. ``--profile`` writes
torch profiler and cProfile tables of LRN training next to the JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from agents.algorithms import ALGORITHMS
from agents.evaluation import evaluate
from agents.trainers.static import StaticTrainer
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine
from routing_env.config import resolve_device
from training_run.folder import RunFolder
from training_run.loop import rng_state
from training_run.machine import device_name


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


def env_config(args: argparse.Namespace, benchmark: str, **overrides: Any) -> RoutingConfig:
    settings = dict(
        benchmark=benchmark,
        duplicates=args.duplicates,
        max_depth=args.max_depth,
        batch_size=args.batch_size,
        device=args.device,
        seed=0,
        data_root=args.data_root,
    )
    return RoutingConfig(**{**settings, **overrides})


def lrn_trainer(config: RoutingConfig):
    """train.py's default trainer (MaskablePPO + router) on a fresh training env of ``config``."""
    env = RoutingSB3VecEnv.from_config(config)
    return ALGORITHMS["maskable_ppo"].build(env), env


def env_only(engine, n_batches: int) -> None:
    """Random valid actions (module training on): the env's own cost."""
    for _ in range(n_batches):
        engine.begin_batch()
        for _ in range(engine.max_depth):
            engine.step(torch.multinomial(engine.action_mask().float(), 1).squeeze(1))


def measure(args: argparse.Namespace, overrides: dict[str, Any], device: torch.device) -> dict[str, float]:
    """The env, LRN training, evaluation and the static network under ``overrides``."""
    rows: dict[str, float] = {}
    cfg = env_config(args, args.benchmark, **overrides)
    engine, bench = make_engine(cfg)
    batches_per_epoch = math.ceil(len(engine.data) / args.batch_size)
    per_epoch = batches_per_epoch / args.batches
    env_only(engine, args.warmup)
    s = timed(lambda: env_only(engine, args.batches), device, args.repeats)
    rows["env_episodes_per_second"] = args.batches * args.batch_size / s
    rows["env_epoch_seconds"] = s * per_epoch
    engine = None

    trainer, env = lrn_trainer(cfg)
    trainer.learn_epoch(args.warmup, lambda n: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    s = timed(lambda: trainer.learn_epoch(args.batches, lambda n: None), device, args.repeats)
    rows["lrn_episodes_per_second"] = args.batches * args.batch_size / s
    rows["lrn_epoch_seconds"] = s * per_epoch
    if device.type == "cuda":
        rows["lrn_peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        rows["lrn_reserved_gpu_memory_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    test_engine, _ = make_engine(cfg.replace(split="test"), batch_size=512, pool=env.engine.pool)
    rows["eval_seconds"] = timed(
        lambda: evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes), device, args.repeats
    )
    with tempfile.TemporaryDirectory() as tmp:
        RunFolder(tmp).checkpoint.save(0, trainer, env.state_dict(), rng_state(), {})
        rows["checkpoint_mb"] = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 1e6
    trainer = env = test_engine = None

    static_engine, _ = make_engine(cfg.replace(pool="static", max_depth=5))
    static = StaticTrainer(SimpleNamespace(engine=static_engine))
    static.learn_epoch(args.warmup, lambda n: None)
    s = timed(lambda: static.learn_epoch(args.batches, lambda n: None), device, args.repeats)
    rows["static_epoch_seconds"] = s * per_epoch
    rows["lrn_over_static"] = rows["lrn_epoch_seconds"] / rows["static_epoch_seconds"]
    return rows


def profile(args: argparse.Namespace, device: torch.device, stem: Path) -> None:
    """Where an LRN batch's time goes: torch profiler (per op, device and host time) and cProfile (Python)."""
    trainer, _ = lrn_trainer(env_config(args, args.benchmark))
    trainer.learn_epoch(args.warmup, lambda n: None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        trainer.learn_epoch(10, lambda n: None)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    stem.with_name(stem.name + "_torch_profile.txt").write_text(table)
    cprof = cProfile.Profile()
    cprof.enable()
    trainer.learn_epoch(10, lambda n: None)
    sync(device)
    cprof.disable()
    text = io.StringIO()
    pstats.Stats(cprof, stream=text).sort_stats("cumulative").print_stats(50)
    stem.with_name(stem.name + "_cprofile.txt").write_text(text.getvalue())


def worker(args: argparse.Namespace) -> None:
    """One LRN training for --batches batches (the --parallel and --memory measurements); prints a line."""
    device = torch.device(args.device)
    trainer, env = lrn_trainer(env_config(args, args.benchmark, **parse_variant(["worker", *args.set])[1]))
    trainer.learn_epoch(args.warmup, lambda n: None)
    sync(device)
    t = time.perf_counter()
    trainer.learn_epoch(args.batches, lambda n: None)
    sync(device)
    seconds = time.perf_counter() - t
    result = {"episodes": args.batches * args.batch_size, "seconds": seconds}
    result["epoch_seconds"] = seconds / args.batches * math.ceil(len(env.engine.data) / args.batch_size)
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        result["reserved_gpu_memory_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    print("RESULT " + json.dumps(result), flush=True)


def run_workers(
    args: argparse.Namespace, n: int, benchmark: str, batches: int, settings: list[str] = ()
) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--benchmark", benchmark, "--device", args.device]
    cmd += ["--set", *settings] if settings else []
    cmd += ["--batches", str(batches), "--warmup", str(args.warmup), "--duplicates", str(args.duplicates)]
    cmd += ["--max-depth", str(args.max_depth), "--batch-size", str(args.batch_size)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        match = re.search(r"RESULT (.*)", stdout)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"a benchmark worker failed (exit {proc.returncode})")
        results.append(json.loads(match.group(1)))
    return results


def parse_variant(words: list[str]) -> tuple[str, dict[str, Any]]:
    name, settings = words[0], {}
    for word in words[1:]:
        key, _, value = word.partition("=")
        settings[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(settings[key], str) and re.fullmatch(r"-?[0-9.e-]+", value):
            settings[key] = float(value) if any(c in value for c in ".e") else int(value)
    return name, settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="mnist", choices=("cifar", "min", "mnist"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-depth", type=int, default=6)
    p.add_argument("--duplicates", type=int, default=10)
    p.add_argument("--batches", type=int, default=100, help="batches per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE")
    p.add_argument("--parallel", type=int, nargs="*", default=[], help="numbers of parallel LRN trainings")
    p.add_argument(
        "--memory",
        nargs="*",
        default=[],
        metavar="BENCH[:KEY=VALUE,...]",
        help="also a LRN run's time and peak memory on these benchmarks (with these env settings)",
    )
    p.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)  # a worker's env settings
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-tf32", action="store_true")
    p.add_argument("--profile", action="store_true", help="write profiles of LRN training next to the JSON")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/bench/<device>.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.no_tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    device = resolve_device(args.device)
    args.device = str(device)
    if args.worker:
        worker(args)
        return
    name = device_name(device)
    out = args.out or Path("results/bench") / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {"device": name, "settings": {k: str(v) for k, v in vars(args).items()}}
    rows = measure(args, {}, device)
    report.update(rows)
    report["dispatch"] = "auto"
    report["variants"] = {}
    for words in args.variant:
        variant, settings = parse_variant(words)
        report["variants"][variant] = {"settings": settings, **measure(args, settings, device)}
    report["memory"] = {}
    for spec in args.memory:
        bench, _, settings = spec.partition(":")
        settings = [kv for kv in settings.split(",") if kv]
        report["memory"][spec] = run_workers(args, 1, bench, max(args.batches // 2, 10), settings)[0]
    report["parallel"] = {}
    for n in args.parallel:
        results = run_workers(args, n, args.benchmark, args.batches)
        total = sum(r["episodes"] / r["seconds"] for r in results)  # workers overlap in their timed parts
        report["parallel"][str(n)] = {"total_episodes_per_second": total, "per_run": total / n}
    if args.profile:
        profile(args, device, out.with_suffix(""))
    report["torch"] = torch.__version__
    out.write_text(json.dumps(report, indent=2, default=str))

    print(f"\n{args.benchmark} B={args.batch_size} depth={args.max_depth} dup={args.duplicates} on {name}")
    columns = {"default": rows, **report["variants"]}
    print(f"{'measure':28s}" + "".join(f"{c:>14s}" for c in columns))
    for key in rows:
        print(f"{key:28s}" + "".join(f"{v.get(key, float('nan')):14.3f}" for v in columns.values()))
    for bench, r in report["memory"].items():
        peak, reserved = r.get("peak_gpu_memory_gb", 0), r.get("reserved_gpu_memory_gb", 0)
        epoch = r["epoch_seconds"]
        print(f"{bench}: LRN {epoch:.1f} s/epoch, peak memory {peak:.2f} GB (reserved {reserved:.2f})")
    for n, r in report["parallel"].items():
        print(f"{n} LRN trainings at once: {r['total_episodes_per_second']:.0f} episodes/s in total")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
