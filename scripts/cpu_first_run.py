"""Measure the quick first run train.py suggests on a CPU (training_run.settings.FIRST_RUN) and keep its
record.

    python scripts/cpu_first_run.py                      # on an idle 2-core machine, ~15 min
    python scripts/cpu_first_run.py --out /tmp/first-run  # elsewhere, to compare

Both runs go through train.py as a user starts it (a new process, train.py's default threads, MNIST-MTL
from $ROUTING_ENV_DATA or --data-root):

1. ``python train.py``'s own settings (MNIST-MTL, d10 L6, the paper's router) for ``--reference-batches``
   batches: their time per batch, the time train.py measures before it prints its advice;
2. the first run itself, ``python train.py <FIRST_RUN's flags>``.

``--out`` then holds the first run's ``config.json`` and ``metrics.jsonl`` (README quotes them) and
``measurement.json``: both times per batch, their ratio (``FirstRun.batch_cost`` is set from it), the
process's wall time, the CPU, and the load average before and after each run, since a busy machine
slows both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from training_run.machine import cpu_name, load_average
from training_run.settings import FIRST_RUN

ROOT = Path(__file__).resolve().parents[1]
KEPT_FILES = ("config.json", "metrics.jsonl")


def run_train(argv: list[str], out: Path) -> dict[str, Any]:
    """``python train.py ARGV --out OUT`` on the CPU: its records, wall time and the load around it."""
    before = load_average()
    started = time.perf_counter()
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *argv,
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    batches = -(
        -records[-1]["episodes"] // json.loads((out / "config.json").read_text())["env"]["batch_size"]
    )
    train_seconds = sum(r["train_seconds"] for r in records)
    return {
        "command": " ".join(["python", "train.py", *argv]),
        "batches": batches,
        "seconds_per_batch": round(train_seconds / batches, 3),
        "train_seconds": round(train_seconds, 1),
        "process_seconds": round(wall, 1),
        "load_average_before": before,
        "load_average_after": load_average(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "cpu_first_run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-batches", type=int, default=8)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    data = ["--data-root", args.data_root] if args.data_root else []
    with tempfile.TemporaryDirectory() as scratch:
        reference_argv = [
            "--limit-train", str(128 * args.reference_batches), "--limit-test", "128", "--epochs", "1",
            "--no-checkpoint", "--seed", str(args.seed), *data,
        ]  # fmt: skip
        reference = run_train(reference_argv, Path(scratch) / "reference")
        first_run = run_train(
            [*FIRST_RUN.argv(), "--seed", str(args.seed), *data], Path(scratch) / "first_run"
        )
        args.out.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            shutil.copyfile(Path(scratch) / "first_run" / name, args.out / name)
    ratio = first_run["seconds_per_batch"] / reference["seconds_per_batch"]
    measurement = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "reference": reference,
        "first_run": first_run,
        "batch_cost": round(ratio, 3),
    }
    (args.out / "measurement.json").write_text(json.dumps(measurement, indent=2) + "\n")
    last = json.loads((args.out / "metrics.jsonl").read_text().splitlines()[-1])
    print(
        f"first run: balanced accuracy {100 * last['test_balanced_accuracy']:.1f} % after "
        f"{first_run['batches']} batches, {first_run['process_seconds'] / 60:.1f} min in all; "
        f"{first_run['seconds_per_batch']:.2f} s per batch against {reference['seconds_per_batch']:.2f} for "
        f"train.py's settings: batch_cost {ratio:.3f} (FIRST_RUN has {FIRST_RUN.batch_cost}); load "
        f"{reference['load_average_before'][0]} .. {first_run['load_average_after'][0]}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
