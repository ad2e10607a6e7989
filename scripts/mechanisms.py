"""Measure the router's mechanisms (issue 27; docs/training.md, "Mechanisms") on a benchmark, one row per
mechanism alone and for the chosen combination, each for several seeds, on the CPU.

    python scripts/mechanisms.py --env RoutingProbeRouter-v0 --base "--preset probe_router"
    python scripts/mechanisms.py --env RoutingMNIST-v0 --base "--limit-train 6400" --rows gae,self_critical

Each (row, seed) is one ``python train.py`` process (``--threads 1``, ``--device cpu``, no checkpoints) with
the base flags and the row's flags. ``--out`` (a JSON file) gets, per run, the row, the seed, its flags, the
last epoch's record and the record of the epoch the validation split picks (where the run has one), the
training time and the load average around it (the machine is shared: a busy one slows every row).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training_run.machine import cpu_name, load_average  # noqa: E402
from training_run.report.tables import val_picked  # noqa: E402

# Each mechanism alone, by the flags that turn it on (train.py's; docs/training.md, "Mechanisms").
MECHANISMS: dict[str, list[str]] = {
    "gae": [],
    "self_critical": ["--advantage", "self_critical"],
    "self_critical_static": ["--advantage", "self_critical", "--baseline-route", "static"],
    "self_critical_sampled": ["--advantage", "self_critical", "--baseline-route", "sampled"],
    "entropy_schedule": ["--ent-coef", "0.05", "--ent-coef-end", "0", "--ent-coef-epochs", "4"],
    "epsilon": ["--explore-epsilon", "0.1"],
    "soft_static_start": ["--static-start", "3"],
    "upcycle": ["--upcycle-epochs", "1", "--static-start", "3"],
    "upcycle_plain": ["--upcycle-epochs", "2"],  # the duplicates start as the static network's, no start bias
    "self_imitation": ["--self-imitation", "1.0"],
    "no_task_prior": ["--task-prior-std", "0"],
    "no_bonus": ["--bonus-weight", "0"],  # as docs/training.md's MIN-MTL command runs the combination
    "bonus_task": ["--bonus-scope", "task"],  # the bonus within a task: its instances spread out
    "bonus_until_16": ["--bonus-until", "16"],  # then no bonus: the spread routes consolidate
    "instance_prior": ["--instance-prior-std", "1"],
    "instance_prior_weak": ["--instance-prior-std", "0.3"],
    "instance_prior_strong": ["--instance-prior-std", "3"],
    "instance_prior_grid7": ["--instance-prior-std", "1", "--instance-prior-grid", "7"],
    "instance_prior_first": ["--instance-prior-std", "1", "--instance-prior-steps", "first"],
    "instance_prior_first_strong": ["--instance-prior-std", "3", "--instance-prior-steps", "first"],
    # the task prior on the head alone: the trunk is chosen task-blind (by the instance), the head per task
    "task_prior_head": ["--task-prior-steps", "head"],
    # each task ends only in heads of its own (the static network's rule): no head serves two tasks
    "task_heads": ["--task-heads"],
    "epochs_16": ["--epochs", "16"],  # longer runs than the base's (the last --epochs counts)
    "epochs_32": ["--epochs", "32"],
    "epochs_64": ["--epochs", "64"],
    # The fixed-route baselines under the same base flags, for rows of equal epochs
    "static_route": ["--algo", "static_route"],
    "oracle_route": ["--algo", "oracle_route"],
}
# Records' keys a row keeps (where the run's records have them).
KEPT = (
    "epoch", "test_accuracy", "test_balanced_accuracy", "test_loss", "val_accuracy", "val_balanced_accuracy",
    "route_overlap", "routes_per_task", "route_entropy_bits", "unused_modules", "oracle_route_rate",
    "oracle_overlap", "oracle_route_overlap", "route_kind_information", "train_accuracy", "train_loss",
    "wall_clock_s",
)  # fmt: skip


def kept(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: record[k] for k in KEPT if k in record}


def run_row(env_id: str, base: list[str], flags: list[str], seed: int, scratch: Path) -> dict[str, Any]:
    """One ``python train.py`` run of ``base + flags`` with ``seed``; its kept records and times."""
    out = scratch / f"run-{time.monotonic_ns()}"
    argv = [
        "--env", env_id, *base, *flags, "--seed", str(seed), "--device", "cpu", "--threads", "1",
        "--no-progress", "--no-checkpoint", "--out", str(out),
    ]  # fmt: skip
    before = load_average()
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], check=True, cwd=ROOT)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "command": shlex.join(["python", "train.py", *argv[:-2]]),
        "seed": seed,
        "last": kept(records[-1]),
        "val_picked": kept(val_picked(records)),
        # per epoch: the wall clock (s) at its end and its test accuracy / oracle-route rate
        "curve": [
            [r["epoch"], r["wall_clock_s"], r["test_accuracy"], r.get("oracle_route_rate")] for r in records
        ],
        "process_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
        "load_average_before": before,
        "load_average_after": load_average(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True, help="the benchmark's env id")
    p.add_argument("--base", default="", help="train.py flags of every row (one string)")
    p.add_argument("--rows", default=",".join(MECHANISMS), help="comma-separated names of MECHANISMS")
    p.add_argument("--combined", default="", help="a row of several mechanisms: names joined by '+'")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (each one thread)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write (rows are appended)")
    args = p.parse_args()
    rows = {name: MECHANISMS[name] for name in args.rows.split(",") if name}
    if args.combined:
        rows[args.combined] = [flag for name in args.combined.split("+") for flag in MECHANISMS[name]]
    result = json.loads(args.out.read_text()) if args.out.exists() else {"env": args.env, "runs": []}
    result.update(cpu=cpu_name(), cores=os.cpu_count(), base=args.base)
    jobs = [(name, flags, seed) for name, flags in rows.items() for seed in args.seeds]
    base = shlex.split(args.base)
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.parallel) as pool:
        runs = pool.map(
            lambda job: {"row": job[0], **run_row(args.env, base, job[1], job[2], Path(scratch))}, jobs
        )
        for run in runs:
            result["runs"].append(run)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
            numbers = ", ".join(f"{k} {v:.4g}" for k, v in run["last"].items() if isinstance(v, float))
            print(f"{run['row']} seed {run['seed']}: {numbers}", flush=True)


if __name__ == "__main__":
    main()
