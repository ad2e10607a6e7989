"""Measure what a run folder's checkpoint and a weights file of ``python train.py``'s settings take on disk
(MNIST-MTL, the paper's pool of 10 duplicates and depth 6, the paper's router) and keep the record.

    python scripts/checkpoint_sizes.py        # ~2 min on a 2-core CPU; -> results/checkpoints/sizes.json

Trains one batch (so that the optimizers hold their moments, as in any checkpoint after the first batch)
and one evaluation of 128 test pairs through train.py's code into a scratch folder, then writes the weights
file of that run (``python -m training_run.evaluate RUN --save-weights``'s writer), loads it back and
evaluates it: its test accuracy must be the run's. docs/training.md and docs/environment.md quote the sizes
(``python scripts/docs_pages.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the packages of this checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training_run.evaluate import load_run  # noqa: E402
from training_run.folder import RunFolder  # noqa: E402
from training_run.loop import train  # noqa: E402
from training_run.machine import cpu_name  # noqa: E402
from training_run.resume import plan_run  # noqa: E402
from training_run.settings import RunConfig  # noqa: E402


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="RoutingMNIST-v0")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "checkpoints" / "sizes.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run_folder = Path(scratch) / "run"
        settings = {
            "run.env_id": args.env, "run.out": str(run_folder), "run.epochs": 1, "run.limit_test": 128,
            "run.progress": False, "env.max_pairs": 128, "env.device": "cpu",
        }  # fmt: skip
        if args.data_root:
            settings["env.data_root"] = args.data_root
        cfg = RunConfig.from_settings(settings)  # python train.py's settings otherwise (--preset best)
        started = time.perf_counter()
        train(plan_run(cfg, settings, resume=False))
        run = load_run(run_folder, device="cpu")
        weights = run.save_weights(Path(scratch) / "weights.pt")
        reloaded = load_run(weights, device="cpu")
        logged = RunFolder(run_folder).read_metrics()[-1]["test_accuracy"]
        record = {
            "env_id": args.env,
            "algo": cfg.algo,
            "duplicates": cfg.env.duplicates,
            "max_depth": cfg.env.max_depth,
            "d_model": cfg.router.d_model,
            "pool_parameters": sum(t.numel() for t in run.env.engine.pool.state_dict().values()),
            "checkpoint_bytes": size_of(run_folder / "checkpoint"),
            "checkpoint_files": {p.name: size_of(p) for p in sorted((run_folder / "checkpoint").iterdir())},
            "weights_file_bytes": size_of(weights),
            "test_accuracy_logged": logged,
            "test_accuracy_of_weights_file": reloaded.evaluate()["test_accuracy"],
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - started, 1),
        }
    if record["test_accuracy_of_weights_file"] != logged:
        raise SystemExit(f"the weights file evaluates to another accuracy: {record}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    mb = 2**20
    print(
        f"{args.env}: checkpoint {record['checkpoint_bytes'] / mb:.0f} MiB, weights file "
        f"{record['weights_file_bytes'] / mb:.0f} MiB ({record['pool_parameters']:,} pool parameters); "
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
