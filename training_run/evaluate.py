"""A trained run as an object: load a run folder (or a weights file), evaluate it, draw the routes its
router builds, and save its weights alone to share them.

    python -m training_run.evaluate runs/mnist                         # the test split, as the run scored it
    python -m training_run.evaluate runs/mnist --split val --render 3  # + 3 routes per task, drawn
    python -m training_run.evaluate runs/mnist --save-weights mnist.pt # pool + router, no optimizer state
    python -m training_run.evaluate mnist.pt                           # a weights file evaluates the same

In Python, :func:`load_run` returns the trained env (a :class:`routing_env.RoutingSB3VecEnv` over the
split, its pool holding the run's trained weights, frozen) and the agent (``.model``: the SB3 model of an
SB3 algorithm; ``.trainer.act`` for every algorithm):

    from training_run.evaluate import load_run

    run = load_run("runs/mnist")              # device="auto": a GPU where there is one
    print(run.evaluate()["test_accuracy"])    # what the run's metrics.jsonl says at the checkpoint's epoch
    actions, _ = run.model.predict(run.env.reset(), action_masks=run.env.action_masks(), deterministic=True)

The evaluation is the run's own (:func:`agents.evaluation.evaluate`: every pair once, deterministic
routing, a frozen pool, the batches the run used), so a finished run's test accuracy is the one its last
metrics line holds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agents.algorithms import ALGORITHMS
from agents.evaluation import route_pairs, scores
from agents.route_stats import routes_by_group
from agents.trainers.base import Trainer
from routing_env.benchmarks import DataError, MTLBenchmark
from routing_env.build import get_benchmark
from routing_env.render import RouteView, route_image
from routing_env.sb3_vec_env import RoutingSB3VecEnv
from training_run.folder import RunFolder, read_weights, save_weights
from training_run.machine import run_device
from training_run.settings import RunConfig

Split = Literal["test", "val"]


@dataclass
class TrainedRun:
    """A trained model, loaded for evaluation (:func:`load_run`).

    Attributes:
        config: the run's configuration (its ``config.json``; ``env.device`` where it is loaded).
        saved: the ``config.json`` itself.
        env: the split's env, ``eval_batch(split)`` episodes per batch, with the trained pool (frozen).
        trainer: the agent (``act`` gives deterministic actions).
        state: where the run stood when its weights were written (the checkpoint's ``state.json``:
            ``epoch``, the last complete epoch, and ``next_batch``, the batches of the next one trained).
        split: ``"test"`` or ``"val"``.
        source: the run folder or weights file it was loaded from.
    """

    config: RunConfig
    saved: dict[str, Any]
    env: RoutingSB3VecEnv
    trainer: Trainer
    state: dict[str, Any]
    split: Split
    source: Path

    @property
    def model(self) -> Any:
        """The SB3 model (``MaskablePPO``, ``PPO``, ...) of an SB3 algorithm; None for the static network
        and the routing network (use :attr:`trainer`)."""
        return getattr(self.trainer, "model", None)

    @property
    def benchmark(self) -> MTLBenchmark:
        return get_benchmark(self.config.env)

    @property
    def epoch(self) -> int:
        """The last complete epoch the weights hold."""
        return int(self.state["epoch"])

    @property
    def mid_epoch(self) -> bool:
        """The weights were written within an epoch: they trained past the last metrics line."""
        return int(self.state.get("next_batch", 0)) > 0

    def route_pairs(self) -> dict[str, torch.Tensor]:
        """Every pair of the split routed once (:func:`agents.evaluation.route_pairs`)."""
        return route_pairs(self.trainer.act, self.env.engine)

    def evaluate(self, pairs: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The run's evaluation of the split (the keys of a metrics line's evaluation, ``test_...`` or
        ``val_...``), from ``pairs`` (:meth:`route_pairs`) where given."""
        bench = self.benchmark
        pairs = self.route_pairs() if pairs is None else pairs
        engine = self.env.engine
        kinds_known = engine.data.kinds is not None
        n_modules = engine.pool.n_modules
        return scores(
            pairs, bench.n_tasks, bench.n_classes, n_modules, self.split, engine.oracle_routes, kinds_known
        )

    def routes_by_kind(self, pairs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Per (task, kind of instance) (:func:`agents.route_stats.routes_by_group`): the pairs, their
        accuracy, the distinct routes, the most common route (module names) and its share, and on a probe
        the oracle routing's route for the group. Empty where the split has no kinds."""
        engine, bench = self.env.engine, self.benchmark
        if engine.data.kinds is None:
            return []
        names = engine.pool.action_names
        groups = routes_by_group(
            pairs["route"], pairs["task"], pairs["kind"], pairs["correct"], bench.n_tasks, bench.n_kinds
        )
        oracle = None if engine.oracle_routes is None else engine.oracle_routes.cpu().tolist()

        def named(route: list[int]) -> list[str]:
            return [names[a] for a in route if a < len(names)]  # past the head: padding

        for group in groups:
            group["route"] = named(group["route"])
            if oracle is not None:
                group["oracle_route"] = named(oracle[group["task"]][group["kind"]])
            if bench.kind_names:
                group["kind_name"] = bench.kind_names[group["kind"]]
        return groups

    def route_views(self, pairs: dict[str, torch.Tensor], per_task: int) -> list[list[RouteView]]:
        """The first ``per_task`` routed pairs of each task (in the split's order), as
        ``RoutingEnv(render_mode="rgb_array")`` draws an episode: one list per task."""
        engine, bench = self.env.engine, self.benchmark
        pool = engine.pool
        banks, dups = pool.action_bank.cpu().numpy(), pool.action_dup.cpu().numpy()
        views: list[list[RouteView]] = []
        for task in range(bench.n_tasks):
            rows = (pairs["task"] == task).nonzero().flatten()[:per_task].tolist()
            views.append([])
            for row in rows:
                pair = int(pairs["pair_index"][row])
                image = engine.data.images[engine.data.image_index[pair]].cpu().numpy()  # (C, H, W)
                route = pairs["route"][row].cpu().numpy()
                final = {
                    "correct": bool(pairs["correct"][row]),
                    "prediction": int(pairs["prediction"][row]),
                    "loss": float(pairs["loss"][row]),
                }
                views[-1].append(
                    RouteView(
                        image=image,
                        task=task,
                        task_name=bench.task_names[task] if bench.task_names else str(task),
                        label=int(pairs["label"][row]),
                        route=route,
                        step=len(route),
                        action_names=pool.action_names,
                        action_bank=banks,
                        action_dup=dups,
                        valid=np.zeros(pool.n_actions, dtype=bool),
                        final=final,
                    )
                )
        return views

    def draw_routes(self, pairs: dict[str, torch.Tensor], per_task: int, out: Path) -> Path:
        """A picture of the routes of the first ``per_task`` pairs of each task (a column per task)."""
        from training_run.report.plots import plot_routes

        names = self.env.engine.pool.action_names
        frames = [
            [
                {
                    "frame": route_image(view),
                    "title": f"label {view.label}, answer {view.final['prediction']}",
                    "route": [names[a] for a in view.route.tolist()],
                }
                for view in row
            ]
            for row in self.route_views(pairs, per_task)
        ]
        bench = self.benchmark
        task_names = bench.task_names or [str(t) for t in range(bench.n_tasks)]
        title = f"{self.source}: {self.split} routes after epoch {self.epoch}"
        return plot_routes(frames, task_names, names, out, title)

    def save_weights(self, path: Path) -> Path:
        """One file with the run's config, the pool's and the agent's weights (no optimizer state, data
        walk or RNG): what :func:`load_run` needs to evaluate it (see
        :func:`training_run.folder.save_weights`)."""
        pool = {k: v.detach().cpu() for k, v in self.env.engine.pool.state_dict().items()}
        return save_weights(Path(path), self.saved, self.state, pool, self.trainer.weights())


def load_run(
    path: str | Path, split: Split = "test", device: str = "auto", data_root: str | None = None
) -> TrainedRun:
    """A run folder's last checkpoint, or a weights file, loaded for evaluation.

    Args:
        path: a run folder (``--out`` of train.py) or a weights file (:meth:`TrainedRun.save_weights`).
        split: the pairs the env walks: ``"test"`` (``--limit-test`` of them, as the run) or ``"val"``
            (the held-out ``--val-fraction`` of the training pairs; a run without one has none).
        device: where to load it (``"auto"``: a GPU where there is one), whatever device trained it.
        data_root: where the benchmark's data lies, if not where the run read it.

    Raises:
        ValueError: one line: no run there, no checkpoint, no validation split, a damaged file.
    """
    path = Path(path)
    if path.is_dir() and not RunFolder(path).has_checkpoint() and RunFolder(path).weights_path.exists():
        path = RunFolder(path).weights_path  # a run made with --no-checkpoint --save-weights
    if path.is_file():
        content = read_weights(path)
        saved, state = content["config"], content["state"]
    else:
        folder = RunFolder(path)
        if not folder.has_config():
            raise ValueError(f"{path} holds no run (no config.json)")
        if not folder.has_checkpoint():
            raise ValueError(
                f"{path} has no checkpoint and no {folder.weights_path.name} (a run made with "
                "--no-checkpoint, or stopped before its first checkpoint)"
            )
        saved, content = folder.read_config(), None
    config = RunConfig.from_dict(saved)
    if split == "val" and not config.env.val_fraction > 0:
        raise ValueError(f"{path}: the run has no validation split (it was made without --val-fraction)")
    env_config = (config.test_env if split == "test" else config.val_env).replace(
        batch_size=config.eval_batch(split), device=str(run_device(device))
    )
    if data_root is not None:
        env_config = env_config.replace(data_root=data_root)
    config.env = config.env.replace(device=env_config.device, data_root=env_config.data_root)
    env = RoutingSB3VecEnv.from_config(env_config)
    trainer = ALGORITHMS[config.algo].build(
        env,
        seed=config.seed,
        agent=config.agent,
        router=config.router,
        routing_network=config.routing_network,
    )
    try:
        if content is None:
            state, pool = RunFolder(path).checkpoint.load_for_evaluation(trainer)
        else:
            pool = content["pool"]
            trainer.load_weights(content["agent"])
        env.engine.pool.load_state_dict(pool)
    except Exception as e:  # a damaged file or other settings: one line, not the unpickler's traceback
        raise ValueError(f"{path} cannot be loaded ({type(e).__name__}: {e})") from e
    return TrainedRun(config, saved, env, trainer, state, split, path)


def summary(
    run: TrainedRun, result: dict[str, Any], folder: RunFolder | None, groups: Sequence[dict[str, Any]] = ()
) -> str:
    """What an evaluation found, in lines: accuracy, per task, the route statistics, the most common route
    per (task, kind of instance) (``groups``: :meth:`TrainedRun.routes_by_kind`), and the run's own
    metrics line of the same epoch beside it."""
    s, r = run.split, result
    where = f"epoch {run.epoch}" + (
        f" and {run.state['next_batch']} batches of the next" if run.mid_epoch else ""
    )
    lines = [
        f"{run.source}: {run.config.algo} on {run.config.env_id}, weights after {where}",
        f"{s}: accuracy {100 * r[f'{s}_accuracy']:.2f}%, balanced {100 * r[f'{s}_balanced_accuracy']:.2f}%, "
        f"loss {r[f'{s}_loss']:.4f} over {r[f'{s}_pairs']} pairs",
        "per task accuracy %: " + " ".join(f"{100 * a:.1f}" for a in r["per_task_accuracy"]),
        f"routes: {r['routes_per_task']:.2f} per task (entropy {r['route_entropy_bits']:.2f} bits), "
        f"overlap {_number(r['route_overlap'])} (weighted {_number(r['route_overlap_weighted'])}), "
        f"{r['shared_modules']} shared modules, {r['unused_modules']} unused, "
        f"{r['mean_route_modules']:.2f} modules per route",
    ]
    for group in groups:
        kind = group.get("kind_name", str(group["kind"]))
        route = " > ".join(group["route"])
        oracle = f"; the oracle's: {' > '.join(group['oracle_route'])}" if "oracle_route" in group else ""
        lines.append(
            f"task {group['task']}, kind {kind}: {group['pairs']} pairs, {100 * group['accuracy']:.1f}% "
            f"right, {group['routes']} routes, {100 * group['route_share']:.0f}% on {route}{oracle}"
        )
    records = folder.read_metrics() if folder is not None else []
    logged = next((r for r in records if r["epoch"] == run.epoch), None)
    if logged is not None and logged.get(f"{s}_accuracy") is not None:
        note = " (the weights trained on since)" if run.mid_epoch else ""
        lines.append(
            f"the run's metrics.jsonl, epoch {run.epoch}: {s} accuracy {100 * logged[f'{s}_accuracy']:.2f}%, "
            f"balanced {100 * logged[f'{s}_balanced_accuracy']:.2f}%{note}"
        )
    return "\n".join(lines)


def _number(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training_run.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="a run folder (train.py's --out) or a weights file")
    p.add_argument("--split", choices=("test", "val"), default="test", help="the pairs to evaluate")
    p.add_argument("--render", type=int, default=0, metavar="N", help="draw the routes of N pairs per task")
    p.add_argument(
        "--picture", type=Path, help="where --render draws (default: the run folder's routes-SPLIT.png)"
    )
    p.add_argument("--save-weights", type=Path, metavar="FILE", help="write the weights alone to FILE")
    p.add_argument("--device", default="auto", help="where to evaluate (default: a GPU where there is one)")
    p.add_argument("--data-root", help="where the benchmark's data lies, if not where the run read it")
    args = p.parse_args(argv)
    if args.render < 0:
        sys.exit(f"error: --render takes a number of pairs per task >= 0, got {args.render}")
    try:
        run = load_run(args.run, args.split, args.device, args.data_root)
    except (ValueError, DataError) as e:
        sys.exit(f"error: {e}")
    folder = None if args.run.is_file() else RunFolder(args.run)
    pairs = run.route_pairs()
    result = run.evaluate(pairs)
    groups = run.routes_by_kind(pairs)
    print(summary(run, result, folder, groups))
    if folder is not None:
        by_kind = {"routes_by_kind": groups} if groups else {}
        folder.evaluation_path(args.split).write_text(
            json.dumps({"epoch": run.epoch, **result, **by_kind}, indent=1) + "\n"
        )
        print(f"wrote {folder.evaluation_path(args.split)}")
    if args.render:
        default = (
            folder.routes_path(args.split)
            if folder
            else args.run.with_name(f"{args.run.stem}-routes-{args.split}.png")
        )
        print(f"wrote {run.draw_routes(pairs, args.render, args.picture or default)}")
    if args.save_weights:
        written = run.save_weights(args.save_weights)
        print(f"wrote {written} ({written.stat().st_size / 1e6:,.0f} MB: the weights alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
