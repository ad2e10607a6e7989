"""Speed and memory of the env, of LRN training and of the static baseline, in one run on one device.

    python scripts/benchmark.py --device cuda                       # MNIST-MTL, B=128, depth 6, 10 dups
    python scripts/benchmark.py --device cuda --memory min          # + a MIN-MTL LRN run's peak memory
    python scripts/benchmark.py --device cuda --variant eager cuda_graph=false
    python scripts/benchmark.py --device cuda --skip-default --banks             # the pool step per mode
    python scripts/benchmark.py --device cuda --skip-default --parallel 1 2 4 8  # N runs on one card

Prints a table and writes results/bench/<device-name>.json (with ``--skip-default``:
results/bench/<sections>/<device-name>.json, so that it is not taken for a full measurement). Per-epoch
numbers are measured on --batches batches (after warm-up) and scaled to one pass over the training pairs
(medians of --repeats). Every measurement uses train.py's own code: ``--algo maskable_ppo``'s trainer for LRN
(MaskablePPO, the router, the pool), the static trainer, the evaluation, with the configuration
dataclasses' defaults (the paper's readings; no ``--preset`` is applied). ``--variant NAME key=value ...``
repeats the LRN, env and static measurements with env settings changed (e.g. ``cuda_graph=false``,
``dispatch=gathered``, ``precision=bf16``), in the same process, so its numbers compare with the
default's. The default measurement also counts what the env alone launches per batch (``env_ops``: CUDA
kernel launches, graph launches and host syncs on a GPU; aten ops on a CPU), in the pool step and outside
it. ``--profile`` writes torch profiler and cProfile tables of LRN training next to the JSON.

``--banks`` times the pool's training step alone (as the engine runs it: a CUDA graph where the dispatch
mode allows one) for MNIST-MTL and MIN-MTL shapes, random valid routes, per dispatch mode and precision,
each in a process of its own: milliseconds per step, the step's share of an epoch, and peak memory (torch's
allocated and reserved, and the process's memory as ``nvidia-smi`` sees it). No data is needed.

``--parallel N ...`` starts N LRN trainings at once for each of ``--parallel-benchmarks`` (each its own
process, timed together after all have warmed up): total episodes/s, each run's time per epoch and memory
(torch's reserved, and the card's view from ``nvidia-smi`` while they run), and how many runs of that size
the card's memory holds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import re
import shutil
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
from agents.config import AgentConfig, RouterConfig
from agents.evaluation import evaluate
from agents.trainers.static import StaticTrainer
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine
from routing_env.benchmarks import MTLBenchmark, MTLSplit, mini_imagenet, mnist
from routing_env.build import build_pool
from routing_env.config import DISPATCH_MODES, PRECISIONS, resolve_device
from routing_env.engine import RoutingEngine
from routing_env.network import SYNC_FREE_MODES
from training_run.folder import RunFolder
from training_run.loop import rng_state
from training_run.machine import device_name
from training_run.mps import cuda_mps
from training_run.report.speed import PROFILE_BATCHES


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


def lrn_trainer(
    config: RoutingConfig, agent: dict[str, Any] | None = None, router: dict[str, Any] | None = None
):
    """train.py's default trainer (MaskablePPO + router) on a fresh training env of ``config``, with
    ``agent`` and ``router`` settings over the dataclasses' defaults."""
    env = RoutingSB3VecEnv.from_config(config)
    agent_config, router_config = AgentConfig(**(agent or {})), RouterConfig(**(router or {}))
    return ALGORITHMS["maskable_ppo"].build(env, agent=agent_config, router=router_config), env


# The sections a variant's ``section.field=value`` may set; a bare ``field=value`` is the env's.
VARIANT_SECTIONS = ("env", "agent", "router")


def split_settings(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A variant's settings by section: ``router.precision=bf16`` is the router's, ``dispatch=dense`` (or
    ``env.dispatch=dense``) the env's; another section is one error."""
    sections: dict[str, dict[str, Any]] = {section: {} for section in VARIANT_SECTIONS}
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        if (section or "env") not in sections:
            raise SystemExit(
                f"error: {key}: a variant sets env, agent or router settings (e.g. router.precision)"
            )
        sections[section or "env"][name] = value
    return sections


def trainer_of(args: argparse.Namespace, benchmark: str, settings: dict[str, Any]):
    """:func:`lrn_trainer` of a variant's ``settings`` (:func:`split_settings`)."""
    sections = split_settings(settings)
    return lrn_trainer(env_config(args, benchmark, **sections["env"]), sections["agent"], sections["router"])


def env_only(engine, n_batches: int, labelled: bool = False) -> None:
    """Random valid actions (module training on): the env's own cost. ``labelled``: the action draws in a
    profiler range of their own ("actions")."""
    draw = torch.profiler.record_function("actions") if labelled else contextlib.nullcontext()
    for _ in range(n_batches):
        engine.begin_batch()
        for _ in range(engine.max_depth):
            with draw:
                actions = torch.multinomial(engine.action_mask().float(), 1).squeeze(1)
            engine.step(actions)


def measure(args: argparse.Namespace, overrides: dict[str, Any], device: torch.device) -> dict[str, float]:
    """The env, LRN training, evaluation and the static network under ``overrides`` (env settings, and
    ``agent.``/``router.`` ones for LRN training)."""
    rows: dict[str, float] = {}
    sections = split_settings(overrides)
    cfg = env_config(args, args.benchmark, **sections["env"])
    engine, bench = make_engine(cfg)
    batches_per_epoch = math.ceil(len(engine.data) / args.batch_size)
    per_epoch = batches_per_epoch / args.batches
    env_only(engine, args.warmup)
    s = timed(lambda: env_only(engine, args.batches), device, args.repeats)
    rows["env_episodes_per_second"] = args.batches * args.batch_size / s
    rows["env_epoch_seconds"] = s * per_epoch
    engine = None

    trainer, env = lrn_trainer(cfg, sections["agent"], sections["router"])
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
    """Where an LRN batch's time goes: torch profiler (per op, device and host time) and cProfile (Python),
    of the dataclasses' defaults or of ``--profile-set``'s settings."""
    trainer, _ = trainer_of(args, args.benchmark, parse_variant(["profile", *args.profile_set])[1])
    trainer.learn_epoch(args.warmup, lambda n: None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        trainer.learn_epoch(PROFILE_BATCHES, lambda n: None)
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    stem.with_name(stem.name + "_torch_profile.txt").write_text(table)
    cprof = cProfile.Profile()
    cprof.enable()
    trainer.learn_epoch(PROFILE_BATCHES, lambda n: None)
    sync(device)
    cprof.disable()
    text = io.StringIO()
    pstats.Stats(cprof, stream=text).sort_stats("cumulative").print_stats(50)
    stem.with_name(stem.name + "_cprofile.txt").write_text(text.getvalue())


# Ops with no kernel of their own (views, metadata, allocations) and CUDA runtime calls that wait for the
# device, for counting what a batch launches.
NO_KERNEL_OPS = {
    "aten::" + op
    for op in (
        "select slice unsqueeze squeeze expand view reshape _reshape_alias flatten as_strided permute "
        "transpose t lift_fresh detach detach_ alias _unsafe_view empty empty_strided empty_like resize_ "
        "result_type split unbind narrow chunk view_as expand_as contiguous new_empty new_empty_strided "
        "to is_nonzero"
    ).split()
}
DEVICE_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


class _ProfilerRange:
    """Calls ``fn`` inside a profiler range ``name``, so that a count can tell its ops apart."""

    def __init__(self, fn, name: str) -> None:
        self.fn, self.name = fn, name

    def __call__(self, *args: Any) -> Any:
        with torch.profiler.record_function(self.name):
            return self.fn(*args)


def count_env_ops(args: argparse.Namespace, device: torch.device, n_batches: int = 5) -> dict[str, float]:
    """Per batch of the env alone (random valid actions, module training), in the pool step, in the draws
    of the random actions and in the rest of the env: on a GPU the kernel launches, CUDA-graph launches,
    host-device copies and host syncs (CUDA runtime calls); on a CPU the aten ops that compute (views and
    allocations left out) and scalar reads."""
    engine, _ = make_engine(env_config(args, args.benchmark))
    engine.pool_step = _ProfilerRange(engine.pool_step, "pool_step")
    env_only(engine, args.warmup)
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        env_only(engine, n_batches, labelled=True)
        sync(device)
    events = prof.events()
    ranges = {n: [e.time_range for e in events if e.name == n] for n in ("pool_step", "actions")}
    counts: collections.Counter = collections.Counter()
    for e in events:
        start = e.time_range.start
        part = next((n for n, rs in ranges.items() if any(r.start <= start <= r.end for r in rs)), "env")
        if device.type == "cuda":
            if e.name.startswith(("cudaLaunchKernel", "cuLaunchKernel")):
                counts[f"{part}_kernel_launches"] += 1
            elif e.name == "cudaGraphLaunch":
                counts[f"{part}_graph_launches"] += 1
            elif e.name.startswith(DEVICE_WAITS):
                counts[f"{part}_host_syncs" if "Synchronize" in e.name else f"{part}_copies"] += 1
        elif e.name == "aten::_local_scalar_dense":
            counts[f"{part}_scalar_reads"] += 1
        elif e.name.startswith("aten::") and e.name not in NO_KERNEL_OPS:
            parent = e.cpu_parent
            if parent is None or not parent.name.startswith("aten::"):  # top level: one kernel or a few
                counts[f"{part}_ops"] += 1
    return {k: v / n_batches for k, v in sorted(counts.items())}


def nvidia_smi(query: str, fields: str) -> list[list[str]]:
    """The rows of ``nvidia-smi --query-<query>=<fields>``, or none where nvidia-smi is not available."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    cmd = [exe, f"--query-{query}={fields}", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


MIB_GB = 2**20 / 1e9  # nvidia-smi reports MiB


def process_memory_gb(pid: int) -> float | None:
    """The process's memory on the GPU as nvidia-smi sees it (its CUDA context included), or None where
    nvidia-smi cannot see it (not installed, or another PID namespace)."""
    for row in nvidia_smi("compute-apps", "pid,used_memory"):
        if row[0] == str(pid) and row[1].isdigit():
            return int(row[1]) * MIB_GB
    return None


def card_index(device: torch.device) -> int:
    """nvidia-smi's index of ``device`` (through CUDA_VISIBLE_DEVICES where it lists indices)."""
    index = device.index or 0
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return int(visible[index]) if index < len(visible) and visible[index].strip().isdigit() else index


class CardMemoryPoller:
    """Samples nvidia-smi in a thread: the card's used memory and each process's, their maxima in GB."""

    def __init__(self, device: torch.device, interval: float = 0.5) -> None:
        import threading

        self.index, self.interval = card_index(device), interval
        self.card_used = self.card_total = 0.0
        self.processes: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        rows = nvidia_smi("gpu", "index,memory.used,memory.total")
        for index, used, total in (r for r in rows if len(r) == 3 and r[1].isdigit()):
            if int(index) == self.index:
                self.card_used = max(self.card_used, int(used) * MIB_GB)
                self.card_total = int(total) * MIB_GB
        for pid, used in (r for r in nvidia_smi("compute-apps", "pid,used_memory") if len(r) == 2):
            if used.isdigit():
                self.processes[pid] = max(self.processes.get(pid, 0.0), int(used) * MIB_GB)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> CardMemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def worker(args: argparse.Namespace) -> None:
    """One LRN training for --batches batches (the --parallel and --memory measurements): warms up, prints
    READY, waits for a line on stdin (so that parallel workers time the same span), prints a RESULT line."""
    device = torch.device(args.device)
    trainer, env = trainer_of(args, args.benchmark, parse_variant(["worker", *args.set])[1])
    trainer.learn_epoch(args.warmup, lambda n: None)
    sync(device)
    print("READY", flush=True)
    sys.stdin.readline()
    t = time.perf_counter()
    trainer.learn_epoch(args.batches, lambda n: None)
    sync(device)
    seconds = time.perf_counter() - t
    result = {"episodes": args.batches * args.batch_size, "seconds": seconds, "pid": os.getpid()}
    result["epoch_seconds"] = seconds / args.batches * math.ceil(len(env.engine.data) / args.batch_size)
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        result["reserved_gpu_memory_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
        result["process_gpu_memory_gb"] = process_memory_gb(os.getpid())
    print("RESULT " + json.dumps(result), flush=True)


def worker_command(
    args: argparse.Namespace, role: str, benchmark: str, batches: int, settings: list[str] = ()
) -> list[str]:
    """The command line of a worker process (``role``: ``--worker`` or ``--bank-worker``)."""
    cmd = [sys.executable, __file__, role, "--benchmark", benchmark, "--device", args.device]
    cmd += ["--set", *settings] if settings else []
    cmd += ["--batches", str(batches), "--warmup", str(args.warmup), "--duplicates", str(args.duplicates)]
    cmd += ["--max-depth", str(args.max_depth), "--batch-size", str(args.batch_size)]
    cmd += ["--repeats", str(args.repeats)] + (["--no-tf32"] if args.no_tf32 else [])
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    return cmd


def _result_line(stdout: str) -> dict | None:
    match = re.search(r"^RESULT (.*)$", stdout, re.MULTILINE)
    return json.loads(match.group(1)) if match else None


def run_workers(
    args: argparse.Namespace, n: int, benchmark: str, batches: int, settings: list[str] = ()
) -> dict[str, Any]:
    """``n`` LRN trainings at once, each its own process, timed over the same span once all have warmed
    up; nvidia-smi is sampled throughout. A failed group (e.g. out of memory) gives ``{"error": ...}``."""
    device = torch.device(args.device)
    cmd = worker_command(args, "--worker", benchmark, batches, settings)
    with CardMemoryPoller(device) as poller:
        poller.sample()
        card_before = poller.card_used
        procs = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)
        ]
        ready = []
        for proc in procs:
            line = proc.stdout.readline()
            while line and not line.startswith("READY"):
                line = proc.stdout.readline()
            ready.append(bool(line))
        for proc in procs:
            if all(ready):
                proc.stdin.write("GO\n")
                proc.stdin.flush()
            elif proc.poll() is None:
                proc.kill()  # a worker of this group failed: the group's numbers would mean nothing
        outputs = [proc.communicate()[0] for proc in procs]
    if not all(ready):
        return {"error": f"{ready.count(False)} of {n} workers failed before timing (out of memory?)"}
    runs = [_result_line(out) for out in outputs]
    if any(r is None for r in runs) or any(p.returncode for p in procs):
        return {"error": f"a worker failed while timed (exit codes {[p.returncode for p in procs]})"}
    total = sum(r["episodes"] / r["seconds"] for r in runs)  # the timed spans coincide
    out: dict[str, Any] = {
        "total_episodes_per_second": total,
        "per_run_episodes_per_second": total / n,
        "epoch_seconds_per_run": statistics.mean(r["epoch_seconds"] for r in runs),
        "runs": runs,
    }
    if device.type == "cuda":
        seen = [poller.processes.get(str(r["pid"])) for r in runs]
        # nvidia-smi's per-process figure where it sees the workers, else their share of the card's growth.
        per_run = max(seen) if all(seen) else max(poller.card_used - card_before, 0.0) / n
        out |= {
            "card_gb_per_run": per_run,
            "card_memory_used_gb": poller.card_used,
            "card_memory_total_gb": poller.card_total,
            "nvidia_smi_processes_gb": sorted(poller.processes.values()),
        }
        if per_run > 0 and poller.card_total > 0:
            out["runs_per_card_by_memory"] = int(poller.card_total // per_run)
    return out


def run_parallel(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, Any]]:
    """--parallel: N LRN trainings at once per benchmark (with the ``--parallel-set`` settings), on a GPU
    under CUDA MPS where it is available (``--mps auto``), without (``off``) or each way (``both``: the
    groups under MPS are keyed ``N+mps``). Each group's result says whether it ran under MPS."""
    runs: dict[str, dict[str, Any]] = {bench: {} for bench in args.parallel_benchmarks}
    ways = {"auto": (True,), "off": (False,), "both": (False, True)}[args.mps]
    for use_mps in ways if device.type == "cuda" else (False,):
        with cuda_mps(use_mps) if device.type == "cuda" else contextlib.nullcontext() as state:
            for bench in args.parallel_benchmarks:
                for n in args.parallel:
                    key = f"{n}+mps" if args.mps == "both" and use_mps else str(n)
                    result = run_workers(args, n, bench, args.batches, args.parallel_set)
                    runs[bench][key] = {**result, "mps": bool(state and state.active)}
    return runs


# The shapes of the pool step measured by --banks: image (C, H, W), classes per task, training pairs.
BANK_SHAPES = {
    "mnist": ((1, 28, 28), 2, mnist.N_DIGITS * mnist.N_DIGITS * mnist.TRAIN_PER_DIGIT),
    "min": (
        (3, mini_imagenet.SIZE, mini_imagenet.SIZE),
        mini_imagenet.CLASSES_PER_TASK,
        mini_imagenet.N_CLASSES * mini_imagenet.PER_CLASS["train"],
    ),
}


def bank_engine(args: argparse.Namespace, benchmark: str, settings: dict[str, Any]) -> RoutingEngine:
    """An engine as train.py builds one for ``benchmark`` (its pool, optimizer and pool step), over one
    batch of random images: no data needed."""
    image_shape, n_classes, _ = BANK_SHAPES[benchmark]
    b = args.batch_size
    gen = torch.Generator().manual_seed(0)
    split = MTLSplit(
        images=torch.randint(0, 256, (b, *image_shape), dtype=torch.uint8, generator=gen),
        image_index=torch.arange(b),
        tasks=torch.zeros(b, dtype=torch.long),
        labels=torch.randint(0, n_classes, (b,), generator=gen),
        source_index=torch.arange(b),
    )
    config = env_config(args, benchmark, **settings)
    pool = build_pool(config, MTLBenchmark(benchmark, 1, n_classes, image_shape, split, split))
    return RoutingEngine(pool, split, config)


def bank_worker(args: argparse.Namespace) -> None:
    """The pool's training step alone, as the engine runs it, on random valid routes: prints a RESULT."""
    device = torch.device(args.device)
    engine = bank_engine(args, args.benchmark, parse_variant(["bank", *args.set])[1])
    setup = torch.cuda.memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
    gen = torch.Generator(device=device).manual_seed(0)
    _, n_classes, n_pairs = BANK_SHAPES[args.benchmark]
    b = args.batch_size
    batches = [
        (
            engine.data.images[torch.randperm(b, device=device)],
            engine.rules.random_routes(b, gen),
            torch.randint(0, n_classes, (b,), device=device, generator=gen),
        )
        for _ in range(4)
    ]

    def steps(n: int) -> None:
        for i in range(n):
            engine.pool_step(*batches[i % len(batches)], b)

    steps(args.warmup)  # the eager warm-up and the capture of a CUDA graph
    seconds = timed(lambda: steps(args.batches), device, args.repeats) / args.batches
    result = {
        "dispatch": engine.dispatch,
        "cuda_graph": engine.pool_step.cuda_graph,
        "ms_per_step": seconds * 1e3,
        "epoch_seconds": seconds * math.ceil(n_pairs / b),
    }
    if device.type == "cuda":
        result |= {
            "setup_gpu_memory_gb": setup,
            "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
            "reserved_gpu_memory_gb": torch.cuda.max_memory_reserved(device) / 1e9,
            "process_gpu_memory_gb": process_memory_gb(os.getpid()),
            "top_kernels": top_kernels(lambda: forward_backward(engine, *batches[0])),
        }
    print("RESULT " + json.dumps(result), flush=True)


def forward_backward(
    engine: RoutingEngine, images: torch.Tensor, route: torch.Tensor, labels: torch.Tensor
) -> None:
    """The pool step's forward and backward, eagerly (the kernels its graph replays), gradients dropped."""
    with torch.enable_grad():
        logits = engine.pool_step.logits(images, route, training=True)
        torch.nn.functional.cross_entropy(logits, labels).backward()
    engine.pool.zero_grad(set_to_none=True)


def top_kernels(fn, n: int = 8) -> list[list[Any]]:
    """The CUDA kernels that take most of ``fn``'s device time: ``[name, share of the time, launches]``.
    Their names tell whether a convolution runs on tensor cores (cuDNN/CUTLASS ``tensorop``, ``xmma``,
    ``16816``, ``s1688`` kernels) or as an fp32 implicit GEMM."""
    fn()  # cuDNN picks its algorithms outside the profile
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in kernels) or 1.0
    kernels.sort(key=lambda e: -e.self_device_time_total)
    return [[e.key[:160], round(e.self_device_time_total / total, 3), e.count] for e in kernels[:n]]


def run_banks(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """--banks: the pool step per benchmark, dispatch mode and precision, each in a process of its own."""
    cpu_modes = ("grouped", "compact") if device.type == "cpu" else ()
    modes = args.bank_modes or (*SYNC_FREE_MODES, *cpu_modes)
    precisions = args.bank_precisions or (("fp32", "bf16") if device.type == "cuda" else ("fp32",))
    rows = []
    for benchmark in args.bank_benchmarks:
        for mode in modes:
            for precision in precisions:
                settings = [f"dispatch={mode}", f"precision={precision}", *args.bank_set]
                cmd = worker_command(args, "--bank-worker", benchmark, args.bank_steps, settings)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                result = _result_line(proc.stdout)
                if proc.returncode or result is None:
                    lines = proc.stderr.strip().splitlines() or ["no output"]
                    result = {"error": f"exit {proc.returncode}: {lines[-1][:300]}"}
                row = {
                    "benchmark": benchmark,
                    "mode": mode,
                    "precision": precision,
                    "settings": args.bank_set,
                }
                rows.append({**row, **result})
                print(_bank_line(rows[-1]), flush=True)
    return rows


def _bank_line(row: dict[str, Any]) -> str:
    head = f"{row['benchmark']:6s} {row['mode']:14s} {row['precision']:5s}"
    if "error" in row:
        return f"{head} failed: {row['error']}"
    memory = "".join(
        f"{row[k]:9.2f}" if row.get(k) is not None else f"{'-':>9s}"
        for k in ("peak_gpu_memory_gb", "reserved_gpu_memory_gb", "process_gpu_memory_gb")
    )
    graph = "graph" if row["cuda_graph"] else "eager"
    return f"{head} {graph:6s}{row['ms_per_step']:9.2f}{row['epoch_seconds']:9.2f}{memory}"


def parse_variant(words: list[str]) -> tuple[str, dict[str, Any]]:
    name, settings = words[0], {}
    for word in words[1:]:
        key, _, value = word.partition("=")
        settings[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(settings[key], str) and re.fullmatch(r"-?[0-9.e-]+", value):
            settings[key] = float(value) if any(c in value for c in ".e") else int(value)
    return name, settings


def code_commit() -> str | None:
    """The checkout's commit (``-dirty`` with uncommitted changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=root, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None


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
    p.add_argument(
        "--skip-default", action="store_true", help="measure only --variant, --memory, --banks, --parallel"
    )
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE")
    p.add_argument("--parallel", type=int, nargs="*", default=[], help="numbers of LRN trainings at once")
    p.add_argument(
        "--parallel-benchmarks", nargs="+", default=["mnist", "min"], choices=("cifar", "min", "mnist")
    )
    p.add_argument(
        "--parallel-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings of every --parallel training (as --variant's: compile=true router.precision=bf16)",
    )
    p.add_argument(
        "--mps",
        default="auto",
        choices=("auto", "off", "both"),
        help="--parallel under CUDA MPS where available (auto), never (off), or each way (both)",
    )
    p.add_argument(
        "--memory",
        nargs="*",
        default=[],
        metavar="BENCH[:KEY=VALUE,...]",
        help="also a LRN run's time and peak memory on these benchmarks (with these env settings)",
    )
    p.add_argument(
        "--banks", action="store_true", help="time the pool's training step per mode and precision"
    )
    p.add_argument("--bank-benchmarks", nargs="+", default=list(BANK_SHAPES), choices=tuple(BANK_SHAPES))
    p.add_argument("--bank-modes", nargs="+", default=None, choices=DISPATCH_MODES[1:])
    p.add_argument("--bank-precisions", nargs="+", default=None, choices=PRECISIONS)
    p.add_argument("--bank-steps", type=int, default=30, help="pool steps per --banks measurement")
    p.add_argument(
        "--bank-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="env settings of every --banks step (compile=true)",
    )
    p.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)  # a worker's env settings
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-tf32", action="store_true")
    p.add_argument("--profile", action="store_true", help="write profiles of LRN training next to the JSON")
    p.add_argument(
        "--profile-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="settings of the profiled training (as --variant's), e.g. compile=true",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/bench/<device>.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bank-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.no_tf32:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    device = resolve_device(args.device)
    args.device = str(device)
    if args.worker or args.bank_worker:
        (worker if args.worker else bank_worker)(args)
        return
    name = device_name(device)
    sections = [s for s, on in (("banks", args.banks), ("parallel", args.parallel)) if on]
    folder = Path("results/bench") / ("_".join(sections or ["partial"]) if args.skip_default else "")
    out = args.out or folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {"device": name, "settings": {k: str(v) for k, v in vars(args).items()}}
    rows: dict[str, float] = {}
    if not args.skip_default:
        rows = measure(args, {}, device)
        report.update(rows)
        report["dispatch"] = "auto"
        report["env_ops"] = count_env_ops(args, device)
    report["variants"] = {}
    for words in args.variant:
        variant, settings = parse_variant(words)
        report["variants"][variant] = {"settings": settings, **measure(args, settings, device)}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the workers below need the card
    report["memory"] = {}
    for spec in args.memory:
        bench, _, settings = spec.partition(":")
        settings = [kv for kv in settings.split(",") if kv]
        result = run_workers(args, 1, bench, max(args.batches // 2, 10), settings)
        report["memory"][spec] = {**result.pop("runs", [{}])[0], **result}
    report["banks"] = run_banks(args, device) if args.banks else []
    report["parallel"] = run_parallel(args, device) if args.parallel else {}
    report["parallel_settings"] = args.parallel_set
    if args.profile:
        profile(args, device, out.with_suffix(""))
    report["torch"] = torch.__version__
    report["commit"] = code_commit()
    out.write_text(json.dumps(report, indent=2, default=str))
    print_report(args, report, rows)
    print(f"wrote {out}")


def print_report(args: argparse.Namespace, report: dict[str, Any], rows: dict[str, float]) -> None:
    name = report["device"]
    columns = {**({"default": rows} if rows else {}), **report["variants"]}
    if columns:
        print(
            f"\n{args.benchmark} B={args.batch_size} depth={args.max_depth} dup={args.duplicates} on {name}"
        )
        print(f"{'measure':28s}" + "".join(f"{c:>14s}" for c in columns))
        for key in next(iter(columns.values())):
            if key != "settings":
                print(f"{key:28s}" + "".join(f"{v.get(key, float('nan')):14.3f}" for v in columns.values()))
    if report.get("env_ops"):
        print("env alone, per batch: " + ", ".join(f"{k} {v:.1f}" for k, v in report["env_ops"].items()))
    for bench, r in report["memory"].items():
        if "error" in r:
            print(f"{bench}: {r['error']}")
            continue
        peak, reserved = r.get("peak_gpu_memory_gb", 0), r.get("reserved_gpu_memory_gb", 0)
        epoch = r["epoch_seconds"]
        print(f"{bench}: LRN {epoch:.1f} s/epoch, peak memory {peak:.2f} GB (reserved {reserved:.2f})")
    if report["banks"]:
        print(f"\npool step alone (B={args.batch_size}, d{args.duplicates}, depth {args.max_depth}), {name}")
        print(f"{'bench':6s} {'mode':14s} {'prec':5s} {'':6s}{'ms/step':>9s}{'s/epoch':>9s}", end="")
        print(f"{'peak GB':>9s}{'resv GB':>9s}{'card GB':>9s}")
        for row in report["banks"]:
            print(_bank_line(row))
    for bench, by_n in report["parallel"].items():
        print(f"\n{bench}: N LRN trainings at once on {name}")
        heads = ("total ep/s", 12), ("per run", 10), ("s/epoch", 9), ("GB/run", 8), ("card GB", 9), ("fit", 5)
        print(f"{'N':>6s}" + "".join(f"{h:>{w}s}" for h, w in heads))
        for n, r in by_n.items():
            if "error" in r:
                print(f"{n:>6s}  {r['error']}")
                continue
            gb = r.get("card_gb_per_run", float("nan"))
            print(
                f"{n:>6s}{r['total_episodes_per_second']:12.0f}{r['per_run_episodes_per_second']:10.0f}"
                f"{r['epoch_seconds_per_run']:9.1f}{gb:8.2f}{r.get('card_memory_used_gb', float('nan')):9.1f}"
                f"{r.get('runs_per_card_by_memory', '-'):>5}"
            )


if __name__ == "__main__":
    main()
