"""Exact evaluation: every test pair once, deterministic routing, frozen pool."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from agents.route_stats import oracle_statistics, route_statistics, task_module_usage
from routing_env.engine import RoutingEngine

# Maps the engine's observation tensors to one action per episode, (B,) int64.
ActFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def balanced_accuracy(correct: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Mean over the classes present of the recall of each class."""
    hits = torch.bincount(labels, weights=correct.float(), minlength=n_classes)
    totals = torch.bincount(labels, minlength=n_classes).float()
    present = totals > 0
    return float((hits[present] / totals[present]).mean()) if bool(present.any()) else float("nan")


@torch.no_grad()
def evaluate(
    act: ActFn, engine: RoutingEngine, n_tasks: int, n_classes: int, prefix: str = "test"
) -> dict[str, Any]:
    """Route every pair of ``engine``'s split once (a sequential engine with a frozen pool).

    Returns ``{prefix}_accuracy``, ``{prefix}_balanced_accuracy`` (mean over tasks of the mean per-class
    recall: always answering "no" on MNIST-MTL scores 90 % accuracy but 50 % balanced), ``{prefix}_loss``
    and ``{prefix}_pairs``, and the per-task values, the number of pool modules no route uses, the
    task x module usage counts and what the routes say about sharing
    (:func:`agents.route_stats.route_statistics`). An ``act`` with ``act.reads_kind`` true (the fixed
    oracle routing) also gets each pair's kind of instance in the observation, under ``"kind"``. On a
    benchmark with an oracle routing (the probes),
    also how close the routes come to it (:func:`agents.route_stats.oracle_statistics`).
    """
    if engine.training or not engine.config.sequential:
        raise ValueError("evaluate() needs a sequential engine with a frozen pool (split='test')")
    engine.seed(0)  # restart the walk at the first pair
    reads_kind = bool(getattr(act, "reads_kind", False))
    n_pairs = len(engine.data)
    collected: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("correct", "task", "kind", "label", "route", "loss")
    }
    for _ in range(math.ceil(n_pairs / engine.batch_size)):
        engine.begin_batch()
        out = None
        for _ in range(engine.max_depth):
            obs = engine.observation()
            if reads_kind:  # the fixed oracle routing's act; agents never see the kind
                obs["kind"] = engine.kinds
            out = engine.step(act(obs))
        first_pass = out.final["epoch"] == 0  # the last batch wraps around: count each pair once
        for key in collected:
            collected[key].append(out.final[key][first_pass])
    res = {k: torch.cat(v) for k, v in collected.items()}
    n_modules = engine.pool.n_modules
    per_task_acc, per_task_bal = [], []
    for t in range(n_tasks):
        sel = res["task"] == t
        per_task_acc.append(float(res["correct"][sel].float().mean()) if bool(sel.any()) else float("nan"))
        per_task_bal.append(balanced_accuracy(res["correct"][sel], res["label"][sel], n_classes))
    routes = res["route"]  # (N, D)
    usage = task_module_usage(routes, res["task"], n_tasks, n_modules)  # (T, M)
    valid_bal = [b for b in per_task_bal if not math.isnan(b)]
    oracle = {}
    if engine.oracle_routes is not None:
        kinds = res["kind"] if engine.data.kinds is not None else None
        oracle = oracle_statistics(routes, res["task"], kinds, engine.oracle_routes, n_tasks, n_modules)
    return {
        f"{prefix}_pairs": int(routes.shape[0]),
        f"{prefix}_accuracy": float(res["correct"].float().mean()),
        f"{prefix}_balanced_accuracy": sum(valid_bal) / max(len(valid_bal), 1),
        f"{prefix}_loss": float(res["loss"].mean()),
        "per_task_accuracy": per_task_acc,
        "per_task_balanced_accuracy": per_task_bal,
        "unused_modules": int((usage.sum(0) == 0).sum()),
        "mean_route_modules": float((routes < n_modules).sum(1).float().mean()),
        "module_usage": usage.long().tolist(),
        **route_statistics(routes, res["task"], n_tasks, n_modules),
        **oracle,
    }
