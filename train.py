"""Train and evaluate a Limitless Routing Network (or a baseline) on a multi-task benchmark.

    python train.py --env RoutingMNIST-v0                   # the paper's setting, 100 epochs
    python train.py --env RoutingMIN-v0 --algo static       # the static-network baseline
    python train.py --algo routing_network                  # the original routing network (WPL)
    python train.py --out runs/x --resume                   # continue a stopped run

Every epoch: one pass over the training pairs (batches of --batch-size episodes; one PPO update per
batch), then an exact test pass with deterministic routing. A run folder (--out) gets config.json,
metrics.jsonl, TensorBoard scalars (tb/), plots and checkpoint/. Every flag sets one field of the
configuration dataclasses in agents/config.py and routing_env/config.py, which hold the defaults.
Ctrl-C stops after the current batch with a checkpoint; --resume continues with the run's saved
settings (flags may change only --epochs and how it runs: see README, "Stopping and resuming").
"""

from __future__ import annotations

import sys

from agents.cli import parse_run_config
from agents.run_plan import has_checkpoint, plan_run, resume_command


def main(argv: list[str] | None = None) -> int:
    cfg, args, given = parse_run_config(argv, __doc__)
    try:
        try:
            cfg, resume = plan_run(cfg, given, args.resume)  # before torch loads: fails in a second
        except ValueError as e:
            sys.exit(f"error: {e}")
        from agents.training import TrainingDiverged, TrainingInterrupted, train
        from routing_env.benchmarks import DataError

        try:
            train(cfg, resume=resume)
        except (ValueError, DataError, TrainingDiverged) as e:
            sys.exit(f"error: {e}")
        except TrainingInterrupted as e:
            print(e, file=sys.stderr)
            return e.exit_code
    except KeyboardInterrupt:  # before the loop, a second Ctrl-C, or a run without checkpoints
        if has_checkpoint(cfg.out):
            then = f"continue from its last checkpoint with: {resume_command(cfg.out)}"
        else:
            then = f"it has no checkpoint yet: {resume_command(cfg.out)} starts it over"
        print(f"\ninterrupted; {then}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
