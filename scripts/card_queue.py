"""Run a list of train.py runs on one GPU, each started when the card has room for it.

For a machine without Ray (the sweep runner's path, ``python -m training_run.sweep``, needs it): the runs
of a sweep file (``python -m training_run.sweep FILE --dry-run`` lists their flags) go into a JSON list of
``{"name": ..., "gb": ..., "args": [train.py flags]}``, ``gb`` being the card memory a run holds (a MIN-MTL
d10 L6 LRN run ~20 GB with its CUDA graphs, the routing network ~14, the static network ~5). Runs start in
list order where they fit under the budget (the card's memory less 4 GB by default), a later smaller run
passing a waiting larger one; each run's output goes to ``LOGS/<name>.log``. With CUDA MPS started first
(``nvidia-cuda-mps-control -d``), runs sharing the card overlap their kernels.

    python scripts/card_queue.py jobs.json --logs /tmp/runs/logs             # the card's memory - 4 GB
    python scripts/card_queue.py jobs.json --budget-gb 78                    # an explicit budget

The 100-epoch Table 1 runs in results/min/table1-* ran this way (results/min/table1-queue.log).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def admit(waiting: list[dict], used_gb: float, budget_gb: float) -> list[dict]:
    """The waiting runs to start now, in list order, each where it still fits under the budget."""
    started = []
    for job in waiting:
        if used_gb + job["gb"] <= budget_gb:
            started.append(job)
            used_gb += job["gb"]
    return started


def card_memory_gb() -> float:
    out = subprocess.check_output(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"])
    return float(out.split()[0]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", type=Path, help="JSON list of {name, gb, args}")
    p.add_argument("--budget-gb", type=float, help="default: the card's memory less 4 GB")
    p.add_argument("--logs", type=Path, default=Path("runs/logs"))
    p.add_argument("--poll-s", type=float, default=5.0)
    args = p.parse_args()
    waiting = json.loads(args.jobs.read_text())
    budget = args.budget_gb if args.budget_gb is not None else card_memory_gb() - 4
    if too_big := [j["name"] for j in waiting if j["gb"] > budget]:
        sys.exit(f"card_queue: {', '.join(too_big)} need more than the budget of {budget:.0f} GB")
    args.logs.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    t0 = time.time()
    while waiting or running:
        for name, (proc, _) in list(running.items()):
            if proc.poll() is not None:
                print(f"{time.time() - t0:7.0f}s done {name} rc={proc.returncode}", flush=True)
                del running[name]
        used = sum(gb for _, gb in running.values())
        for job in admit(waiting, used, budget):
            log = (args.logs / f"{job['name']}.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, "train.py", *job["args"]], stdout=log, stderr=subprocess.STDOUT
            )
            running[job["name"]] = (proc, job["gb"])
            waiting.remove(job)
            used += job["gb"]
            print(f"{time.time() - t0:7.0f}s start {job['name']} ({used:.0f} GB)", flush=True)
        time.sleep(args.poll_s)
    print("all done", flush=True)


if __name__ == "__main__":
    main()
