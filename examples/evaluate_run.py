"""A train.py run in your own code: its trained env and SB3 model (``training_run.evaluate.load_run``), SB3's
own ``predict`` over the test pairs, and the run's evaluation beside it (the two agree).

    python examples/evaluate_run.py runs/mnist          # a run folder (train.py --out) or a weights file
"""

from __future__ import annotations

import sys

import numpy as np

from training_run.evaluate import TrainedRun, load_run


def sb3_accuracy(run: TrainedRun) -> float:
    """Route every test pair once with the SB3 model's deterministic ``predict``."""
    env, model = run.env, run.model  # the test pairs with the trained pool (frozen); MaskablePPO
    env.seed(0)  # start at the first test pair
    obs = env.reset()
    correct: list[bool] = []
    while len(correct) < len(env.engine.data):
        dones = np.zeros(env.num_envs, dtype=bool)
        while not dones.all():  # every episode of a batch ends at the same step
            actions, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
            obs, _, dones, infos = env.step(actions)
        correct += [info["correct"] for info in infos if info["epoch"] == 0]  # the last batch wraps around
    return float(np.mean(correct))


def main(path: str, device: str = "auto") -> tuple[float, float]:
    run = load_run(path, device=device)  # split="val" for the validation pairs
    harness = run.evaluate()["test_accuracy"]  # agents.evaluation, as metrics.jsonl has it
    sb3 = sb3_accuracy(run)
    print(f"{path}: after epoch {run.epoch}, test accuracy {100 * harness:.2f}% (SB3: {100 * sb3:.2f}%)")
    return harness, sb3


if __name__ == "__main__":
    main(sys.argv[1])
