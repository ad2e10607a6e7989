"""README's picture: routes through a fresh module pool, one per task, as
``RoutingEnv(render_mode="rgb_array")`` draws them (the instance's image, then one cell per step: the
module kind's colour, a bar as long as the duplicate's index, PASS grey, and a green or red strip for a
right or wrong answer), with each route's modules written under it and the kinds' colours in a legend.

    python scripts/route_picture.py                                   # MIN-MTL -> results/route.png
    python scripts/route_picture.py --env RoutingMNIST-v0 --out /tmp/route.png

The routes are random valid actions (the env's own action masks, seeded): the picture shows the MDP, not a
trained router's choices. Needs the benchmark's data (``--data-root``, else ``$ROUTING_ENV_DATA``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the packages of this checkout
    sys.path.insert(0, str(ROOT))

import routing_env  # noqa: E402,F401  (registers the env ids)
from routing_env.render import BANK_COLOURS, PASS_COLOUR  # noqa: E402


def routes(env_id: str, n_tasks: int, seed: int, data_root: str | None) -> tuple[list[dict], list[str]]:
    """One finished episode for each of the first ``n_tasks`` tasks met on the test pairs (a random one of
    each task's first pairs): its rendered frame, task, label and route names; and the module kinds' names
    in bank order."""
    kwargs = {"data_root": data_root} if data_root else {}
    env = gym.make(env_id, render_mode="rgb_array", device="cpu", split="test", seed=seed, **kwargs)
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    kinds = list(dict.fromkeys(name.split("[")[0] for name in base.action_names[:-1]))
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
            episodes[task] = {"frame": env.render(), "task": task, "label": info["label"], "route": names}
        obs, _ = env.reset()
    env.close()
    return [episodes[t] for t in sorted(episodes)], kinds


def draw(episodes: list[dict], kinds: list[str], out: Path) -> Path:
    """The frames side by side, each route's modules under it, the module kinds' colours below."""
    fig, axes = plt.subplots(1, len(episodes), figsize=(2.3 * len(episodes), 4.0))
    for ax, ep in zip(np.atleast_1d(axes), episodes, strict=True):
        ax.imshow(ep["frame"], interpolation="nearest")
        ax.set_title(f"task {ep['task']}, label {ep['label']}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("\n".join(ep["route"]), fontsize=7, family="monospace")
    handles = [Patch(color=BANK_COLOURS[i % len(BANK_COLOURS)] / 255, label=k) for i, k in enumerate(kinds)]
    handles.append(Patch(color=PASS_COLOUR / 255, label="PASS"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="RoutingMIN-v0", help="a routing env id")
    p.add_argument("--tasks", type=int, default=5, help="routes to draw, one per task")
    p.add_argument("--seed", type=int, default=0, help="seeds the pool and the routes")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "route.png")
    args = p.parse_args()
    episodes, kinds = routes(args.env, args.tasks, args.seed, args.data_root)
    print(f"wrote {draw(episodes, kinds, args.out)}")


if __name__ == "__main__":
    main()
