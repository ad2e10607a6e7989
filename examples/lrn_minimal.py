"""LRN in one file: sb3-contrib's MaskablePPO with the LRN router trains on a batch of routing episodes
(one shared module pool), then routes every test pair once, deterministically, and reports accuracy.

    python examples/lrn_minimal.py                          # MNIST-MTL, a small smoke run for a CPU
    python examples/lrn_minimal.py --epochs 5 --train-pairs 10000 --device cuda

No run harness (train.py adds checkpoints, resume, logs and the paper's full settings). The defaults
are far too small to learn; they show the pieces working together.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from sb3_contrib import MaskablePPO

from agents import RouterPolicy
from routing_env import RoutingSB3VecEnv


@dataclass
class Args:
    env_id: str = "RoutingMNIST-v0"
    data_root: str | None = None  # default: $ROUTING_ENV_DATA, else ~/.cache/routing_env
    device: str = "auto"
    seed: int = 0
    num_envs: int = 64  # episodes per batch: one rollout, one PPO update, one pool update
    train_pairs: int = 1024  # training pairs, walked `epochs` times
    test_pairs: int = 500
    epochs: int = 1
    duplicates: int = 3  # copies of each kind of module in the pool (the paper: 10)
    max_depth: int = 4  # modules per route (the paper: 6)
    lr: float = 1e-3  # the pool's Adam learning rate
    router_lr: float = 1e-4
    d_model: int = 64  # the router's width (the paper: 256)


def parse_args() -> Args:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in dataclasses.fields(Args):
        kind = int if f.type == "int" else float if f.type == "float" else str
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    return Args(**vars(parser.parse_args()))


def evaluate(model: MaskablePPO, env: RoutingSB3VecEnv) -> dict[str, float]:
    """Route every pair of ``env``'s test split once with the greedy policy: accuracy, and balanced
    accuracy (mean over tasks of the mean per-label recall; always answering "no" on MNIST-MTL's
    one-vs-all tasks scores 90 % accuracy but 50 % balanced)."""
    n_pairs = len(env.engine.data)
    env.seed(0)
    obs = env.reset()
    finals = []  # (correct, task, label) of each test pair
    while len(finals) < n_pairs:
        dones = np.zeros(env.num_envs, dtype=bool)
        while not dones.all():  # every episode of a batch ends at the same step
            actions, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
            obs, _, dones, infos = env.step(actions)
        # The last batch wraps around to the split's start: count each pair once.
        finals += [(i["correct"], i["task"], i["label"]) for i in infos if i["epoch"] == 0]
    correct, task, label = np.array(finals, dtype=np.int64).T
    recalls = [
        [correct[(task == t) & (label == c)].mean() for c in np.unique(label[task == t])]
        for t in np.unique(task)
    ]
    return {
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean([np.mean(r) for r in recalls])),
        "pairs": len(correct),
    }


def main(args: Args) -> dict[str, float]:
    env_kwargs = dict(data_root=args.data_root, device=args.device, seed=args.seed)
    env_kwargs.update(duplicates=args.duplicates, max_depth=args.max_depth)
    # One engine runs num_envs episodes in lockstep on one pool, which trains on them (split "train").
    train_env = RoutingSB3VecEnv(
        args.env_id, num_envs=args.num_envs, max_pairs=args.train_pairs, lr=args.lr, **env_kwargs
    )
    model = MaskablePPO(
        RouterPolicy,
        train_env,
        n_steps=args.max_depth,  # one rollout = one batch of whole episodes
        batch_size=args.num_envs * args.max_depth // 2,
        n_epochs=1,
        learning_rate=args.router_lr,
        policy_kwargs=dict(d_model=args.d_model, n_heads=4, d_ff=2 * args.d_model),
        seed=args.seed,
        device=train_env.engine.device,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=args.epochs * args.train_pairs * args.max_depth)
    print(f"trained {model.num_timesteps} steps in {time.perf_counter() - start:.0f} s")

    # The test split, walked in order with a frozen pool: the trained pool's weights, loaded.
    test_env = RoutingSB3VecEnv(
        args.env_id, num_envs=args.num_envs, split="test", max_pairs=args.test_pairs, **env_kwargs
    )
    test_env.engine.pool.load_state_dict(train_env.engine.pool.state_dict())
    result = evaluate(model, test_env)
    print(
        f"test: accuracy {result['accuracy']:.3f}, balanced accuracy {result['balanced_accuracy']:.3f} "
        f"over {result['pairs']} pairs"
    )
    return result


if __name__ == "__main__":
    main(parse_args())
