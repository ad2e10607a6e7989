"""Train and evaluate a Limitless Routing Network (or a baseline) on a multi-task benchmark.

    python train.py --env RoutingMNIST-v0                   # the paper's setting, 100 epochs
    python train.py --env RoutingMIN-v0 --algo static       # the static-network baseline
    python train.py --algo routing_network                  # the original routing network (WPL)
    python train.py --out runs/x --resume                   # continue a killed run

Every epoch: one pass over the training pairs (batches of --batch-size episodes; one PPO update per
batch), then an exact test pass with deterministic routing. A run folder (--out) gets config.json,
metrics.jsonl, TensorBoard scalars (tb/), plots and checkpoint/. Every flag sets one field of the
configuration dataclasses in agents/config.py and routing_env/config.py, which hold the defaults.
"""

from __future__ import annotations

import sys

from agents.cli import parse_run_config
from agents.config import RunConfig


def check_run_folder(cfg: RunConfig, resume: bool) -> None:
    """Refuse to mix runs: a folder that holds a run needs --resume, --resume needs a checkpoint."""
    out = cfg.out
    if not resume and (out / "metrics.jsonl").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (out / "checkpoint" / "state.json").exists() and not (out / "checkpoint.old").exists():
        raise ValueError(f"--resume: no checkpoint in {out}")


def main(argv: list[str] | None = None) -> int:
    cfg, args, _ = parse_run_config(argv, __doc__)
    try:
        check_run_folder(cfg, args.resume)
        from agents.training import train
        from routing_env.benchmarks import DataError

        try:
            train(cfg, resume=args.resume)
        except DataError as e:
            raise ValueError(str(e)) from e
    except ValueError as e:
        sys.exit(f"error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
