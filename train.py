"""Train and evaluate a Limitless Routing Network (or a baseline) on a multi-task benchmark.

    python train.py --env RoutingMNIST-v0                   # our best LRN (--preset best), 100 epochs
    python train.py --env RoutingMIN-v0 --algo static       # the static-network baseline
    python train.py --algo routing_network                  # the original routing network (WPL)
    python train.py --out runs/x --resume                   # continue a stopped run

Every epoch: one pass over the training pairs (batches of --batch-size episodes; one PPO update per
batch), then an exact test pass with deterministic routing. A run folder (--out) gets config.json,
metrics.jsonl, TensorBoard scalars (tb/), plots and checkpoint/. Every flag sets one field of the
configuration dataclasses (training_run/settings.py, agents/config.py, routing_env/config.py), which
hold the defaults; training_run/ holds everything behind this entry.
Ctrl-C stops after the current batch with a checkpoint; --resume continues with the run's saved
settings (flags may change only --epochs and how it runs: see docs/training.md, "Stopping and resuming").
"""

from __future__ import annotations

import sys

from training_run.cli import parse_command_line
from training_run.folder import RunFolder
from training_run.resume import plan_run


def main(argv: list[str] | None = None) -> int:
    cfg, resume, given = parse_command_line(argv, __doc__)
    folder = RunFolder(cfg.out)
    try:
        try:
            plan = plan_run(cfg, given, resume)  # before torch loads: fails in a second
        except ValueError as e:
            sys.exit(f"error: {e}")
        if plan.note:
            print(plan.note)
        from training_run.report.describe import run_summary

        if plan.finished:
            print(run_summary(folder))
            return 0
        from routing_env.benchmarks import DataError
        from training_run.loop import TrainingDiverged, TrainingInterrupted, train

        try:
            train(plan)
        except (ValueError, DataError, TrainingDiverged) as e:
            sys.exit(f"error: {e}")
        except TrainingInterrupted as e:
            print(e, file=sys.stderr)
            return e.exit_code
        print(run_summary(folder))
    except KeyboardInterrupt:  # before the loop, a second Ctrl-C, or a run without checkpoints
        if folder.has_checkpoint():
            then = f"continue from its last checkpoint with: {folder.resume_command()}"
        else:
            then = f"it has no checkpoint yet: {folder.resume_command()} starts it over"
        print(f"\ninterrupted; {then}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
