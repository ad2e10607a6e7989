"""README's picture: routes through a fresh module pool, one per task, as
``RoutingEnv(render_mode="rgb_array")`` draws them (the instance's image, then one cell per step: the
module kind's colour, a bar as long as the duplicate's index, PASS grey, and a green or red strip for a
right or wrong answer), with each route's modules written under it and the kinds' colours in a legend.

    python scripts/route_picture.py                                   # MIN-MTL -> results/route.png
    python scripts/route_picture.py --env RoutingMNIST-v0 --out /tmp/route.png

The routes are random valid actions (the env's own action masks, seeded): the picture shows the MDP, not a
trained router's choices (``python -m training_run.evaluate RUN --render N`` draws those, with the same
:func:`training_run.report.plots.plot_routes`). Needs the benchmark's data (``--data-root``, else
``$ROUTING_ENV_DATA``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the packages of this checkout
    sys.path.insert(0, str(ROOT))

import routing_env  # noqa: E402,F401  (registers the env ids)
from training_run.report.plots import plot_routes  # noqa: E402


def routes(
    env_id: str, n_tasks: int, seed: int, data_root: str | None
) -> tuple[list[dict], list[str], list[str]]:
    """One finished episode for each of the first ``n_tasks`` tasks met on the test pairs (a random one of
    each task's first pairs): its rendered frame, title and route names; the tasks' names; the actions'."""
    kwargs = {"data_root": data_root} if data_root else {}
    env = gym.make(env_id, render_mode="rgb_array", device="cpu", split="test", seed=seed, **kwargs)
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    episodes: dict[int, dict] = {}
    obs, _ = env.reset(seed=seed)
    while len(episodes) < n_tasks:
        done = False
        while not done:
            action = int(rng.choice(np.flatnonzero(base.action_masks())))
            _, _, done, _, info = env.step(action)
        task = int(obs["task"])
        if task not in episodes and rng.random() < 0.2:  # the test pairs come in label order: vary them
            names = [base.action_names[a] for a in info["route"]]
            episodes[task] = {"frame": env.render(), "title": f"label {info['label']}", "route": names}
        obs, _ = env.reset()
    env.close()
    task_names = base.benchmark.task_names or [str(t) for t in range(base.benchmark.n_tasks)]
    return [episodes[t] for t in sorted(episodes)], task_names, list(base.action_names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="RoutingMIN-v0", help="a routing env id")
    p.add_argument("--tasks", type=int, default=5, help="routes to draw, one per task")
    p.add_argument("--seed", type=int, default=0, help="seeds the pool and the routes")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "route.png")
    args = p.parse_args()
    episodes, task_names, action_names = routes(args.env, args.tasks, args.seed, args.data_root)
    title = f"{args.env}: random valid routes through a fresh pool (seed {args.seed})"
    print(f"wrote {plot_routes([[e] for e in episodes], task_names, action_names, args.out, title)}")


if __name__ == "__main__":
    main()
