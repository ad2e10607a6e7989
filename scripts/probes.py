"""Measure the probe benchmarks on a CPU: for each probe, the static network's route and the oracle routing
through the same LRN pool, and LRN with the settings below, each for a few seeds; write
results/probes/<probe>.json and print a table (docs/results.md, "Probes", is generated from the JSONs).

    python scripts/probes.py                 # 3 seeds of every run (about 30 min on an idle 2-core CPU)
    python scripts/probes.py --quick         # 1 seed, fewer epochs
    python scripts/probes.py --probes share  # some probes only

Every run is ``python train.py`` in a new process with one torch thread (``--jobs`` of them at once), MNIST
from $ROUTING_ENV_DATA or --data-root, a validation split of 10 % of the training pairs. Per run the JSON
keeps: the command, the last epoch's and the validation-picked epoch's accuracy and route statistics,
the wall time, and the load average before and after (other processes on the machine slow every run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the packages of this checkout
    sys.path.insert(0, str(ROOT))

from training_run.machine import cpu_name, load_average  # noqa: E402
from training_run.report.tables import PROBE_KEYS, probes_table, val_picked  # noqa: E402

# The pool every probe runs with: small modules (where sharing one between conflicting tasks or kinds
# costs), as few duplicates as the oracle needs, the static network's depth.
SMALL_POOL = ["--max-depth", "5", "--pool-conv-channels", "4", "--pool-fc-width", "16", "--lr", "3e-3"]
# Plain LRN (no mechanism of issue 27) on the share and kinds probes: --preset best with a router small
# enough for a CPU.
LRN = ["--preset", "best", "--d-model", "64", "--d-ff", "128", "--conv-channels", "8", "16"]
# probe -> (env id, the probe's own flags, epochs of a full / --quick run, {method: flags})
PROBES: dict[str, tuple[str, list[str], tuple[int, int], dict[str, list[str]]]] = {
    "router": (
        "RoutingProbeRouter-v0",
        ["--preset", "probe_router"],
        (6, 3),
        {
            "static": ["--algo", "static_route"],
            "oracle": ["--algo", "oracle_route"],
            "lrn": [],  # the preset's router
        },
    ),
    "share": (
        "RoutingProbeShare-v0",
        [*SMALL_POOL, "--duplicates", "4"],
        (15, 8),
        {"static": ["--algo", "static_route"], "oracle": ["--algo", "oracle_route"], "lrn": LRN},
    ),
    "kinds": (
        "RoutingProbeKinds-v0",
        [*SMALL_POOL, "--duplicates", "3"],
        (15, 8),
        {"static": ["--algo", "static_route"], "oracle": ["--algo", "oracle_route"], "lrn": LRN},
    ),
}


def run(argv: list[str], out: Path) -> dict[str, Any]:
    """``python train.py ARGV`` on the CPU with one thread: its last and validation-picked records."""
    before, started = load_average(), time.perf_counter()
    command = [sys.executable, str(ROOT / "train.py"), *argv, "--device", "cpu", "--threads", "1"]
    command += ["--no-progress", "--no-checkpoint", "--out", str(out)]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]

    def keep(record: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if record is None else {k: record[k] for k in ("epoch", *PROBE_KEYS) if k in record}

    return {
        "command": " ".join(["python", "train.py", *argv]),
        "last": keep(records[-1]),
        "val_picked": keep(val_picked(records)),
        "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
        "process_seconds": round(wall, 1),
        "load_average_before": before,
        "load_average_after": load_average(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES))
    p.add_argument("--seeds", type=int, default=None, help="seeds per run (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="1 seed and fewer epochs")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "probes")
    p.add_argument("--data-root", default=None)
    args = p.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    data = ["--data-root", args.data_root] if args.data_root else []
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for probe in args.probes:
            env_id, flags, (full, quick), methods = PROBES[probe]
            epochs = quick if args.quick else full
            jobs = [
                (
                    method,
                    seed,
                    ["--env", env_id, *flags, *extra, "--epochs", str(epochs), "--seed", str(seed)],
                )
                for method, extra in methods.items()
                for seed in range(seeds)
            ]
            common = ["--val-fraction", "0.1", *data]
            outs = [Path(scratch) / f"{probe}-{method}-s{seed}" for method, seed, _ in jobs]
            with ThreadPoolExecutor(args.jobs) as pool:
                measured = pool.map(run, [[*argv, *common] for _, _, argv in jobs], outs)
                results = [{"method": m, "seed": s, **r} for (m, s, _), r in zip(jobs, measured)]
                record = {
                    "probe": probe,
                    "env_id": env_id,
                    "epochs": epochs,
                    "cpu": cpu_name(),
                    "cores": os.cpu_count(),
                    "jobs": args.jobs,
                    "torch": torch.__version__,
                    "runs": results,
                }
            (args.out / f"{probe}.json").write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {args.out / f'{probe}.json'}")
    print(probes_table(args.out.parent))


if __name__ == "__main__":
    main()
