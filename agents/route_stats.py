"""What the routes of an evaluation say about sharing: do tasks share modules, and does the instance
change the route within a task? And, on a probe with a known best routing, did the router find it
(:func:`oracle_statistics`)? Pure functions of the batched routes (no per-route Python).

A task's *module set* is the modules any of its routes uses; its *usage share* of a module is the
fraction of its routes that use it (a route uses a module at most once).
"""

from __future__ import annotations

import math
from typing import Any

import torch

# The keys :func:`route_statistics` returns (evaluation records, metrics.jsonl, TensorBoard).
ROUTE_STAT_KEYS = (
    "route_overlap",
    "route_overlap_weighted",
    "shared_modules",
    "routes_per_task",
    "route_entropy_bits",
)
# The keys :func:`oracle_statistics` returns (evaluations on a benchmark with an oracle routing).
ORACLE_STAT_KEYS = ("oracle_route_rate", "oracle_overlap", "oracle_route_overlap", "route_kind_information")


def task_module_usage(
    routes: torch.Tensor, tasks: torch.Tensor, n_tasks: int, n_modules: int
) -> torch.Tensor:
    """How many routes of each task use each module.

    Args:
        routes: ``(N, D)`` action ids; ids ``>= n_modules`` (PASS, padding) are not modules.
        tasks: ``(N,)`` the task of each route, in ``[0, n_tasks)``.
        n_tasks: number of tasks.
        n_modules: the pool's module count.

    Returns:
        ``(n_tasks, n_modules)`` float counts.
    """
    is_module = routes < n_modules  # (N, D)
    flat_task = tasks[:, None].expand_as(routes)[is_module]
    usage = torch.zeros(n_tasks * n_modules, device=routes.device)
    usage.index_add_(
        0, flat_task * n_modules + routes[is_module], torch.ones_like(flat_task, dtype=torch.float)
    )
    return usage.view(n_tasks, n_modules)


def route_statistics(
    routes: torch.Tensor, tasks: torch.Tensor, n_tasks: int, n_modules: int
) -> dict[str, float]:
    """Sharing between tasks and routing within them, from the routes of an evaluation.

    * ``route_overlap``: the mean over pairs of tasks of the Jaccard index of their module sets,
      ``|A & B| / |A | B|``. The static network (a shared trunk of 4 modules, a head per task) scores
      4/6; tasks on disjoint modules score 0.
    * ``route_overlap_weighted``: the same with usage shares (weighted Jaccard, ``sum_m min(p_am, p_bm)
      / sum_m max(p_am, p_bm)``): a module one stray route of a task uses adds almost nothing, where the
      plain index counts it in full.
    * ``shared_modules``: modules in the module sets of two or more tasks.
    * ``routes_per_task``: distinct routes per task, mean over tasks.
    * ``route_entropy_bits``: the entropy of the distribution of routes within a task, in bits, mean over
      tasks: 0 when the instance never changes the route, ``log2(n)`` for n equally likely routes.

    Tasks without routes are left out of the means; an overlap needs two tasks with routes (else NaN).

    Args:
        routes: ``(N, D)`` action ids (PASS and padding ``>= n_modules``).
        tasks: ``(N,)`` task ids in ``[0, n_tasks)``.
        n_tasks: number of tasks.
        n_modules: the pool's module count.
    """
    usage = task_module_usage(routes, tasks, n_tasks, n_modules)  # (T, M)
    n_routes = torch.bincount(tasks, minlength=n_tasks).float()  # (T,)
    present = n_routes > 0
    share = usage / n_routes.clamp_min(1)[:, None]  # (T, M)
    weighted = torch.minimum(share[:, None], share[None, :]).sum(-1) / torch.maximum(
        share[:, None], share[None, :]
    ).sum(-1).clamp_min(1e-12)  # (T, T)
    pairs = torch.triu(present[:, None] & present[None, :], diagonal=1)

    # Distinct (task, route) rows and how many routes each stands for.
    rows, counts = torch.unique(torch.cat([tasks[:, None], routes], dim=1), dim=0, return_counts=True)
    row_task = rows[:, 0]
    distinct = torch.bincount(row_task, minlength=n_tasks).float()  # (T,)
    p = counts.float() / n_routes[row_task]
    entropy = torch.zeros(n_tasks, device=routes.device).index_add_(0, row_task, -p * torch.log2(p))

    def mean(values: torch.Tensor, where: torch.Tensor) -> float:
        return float(values[where].mean()) if bool(where.any()) else math.nan

    overlap = module_set_overlap(usage)
    return {
        "route_overlap": overlap["route_overlap"],
        "route_overlap_weighted": mean(weighted, pairs),
        "shared_modules": overlap["shared_modules"],
        "routes_per_task": mean(distinct, present),
        "route_entropy_bits": mean(entropy.clamp_min(0.0), present),
    }


def module_set_overlap(usage: torch.Tensor) -> dict[str, float]:
    """``route_overlap`` and ``shared_modules`` (see :func:`route_statistics`) from a task x module usage
    matrix alone, such as an evaluation record's ``module_usage``: every run's metrics hold it, also runs
    logged before the route statistics were.

    Args:
        usage: ``(n_tasks, n_modules)`` counts of the routes of each task that use each module; a task
            without routes (a zero row) is left out of the mean (NaN with fewer than two tasks).
    """
    used = (usage > 0).float()  # (T, M)
    present = used.sum(1) > 0  # a route always uses a module (its input module)
    inter = used @ used.T  # (T, T)
    sizes = used.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    jaccard = inter / union.clamp_min(1)
    pairs = torch.triu(present[:, None] & present[None, :], diagonal=1)
    return {
        "route_overlap": float(jaccard[pairs].mean()) if bool(pairs.any()) else math.nan,
        "shared_modules": int((used.sum(0) >= 2).sum()),
    }


def task_entropy_bits(keys: torch.Tensor, tasks: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """The entropy in bits of the rows of ``keys`` ``(N, C)`` within each task, ``(n_tasks,)`` (0 for a
    task without rows)."""
    rows, counts = torch.unique(torch.cat([tasks[:, None], keys], dim=1), dim=0, return_counts=True)
    row_task = rows[:, 0]
    p = counts.float() / torch.bincount(tasks, minlength=n_tasks).float()[row_task]
    bits = torch.zeros(n_tasks, device=keys.device).index_add_(0, row_task, -p * torch.log2(p))
    return bits.clamp_min(0.0)


def oracle_statistics(
    routes: torch.Tensor,
    tasks: torch.Tensor,
    kinds: torch.Tensor | None,
    oracle_routes: torch.Tensor,
    n_tasks: int,
    n_modules: int,
) -> dict[str, float]:
    """Whether the routes of an evaluation found a probe's known best routing.

    * ``oracle_route_rate``: the fraction of pairs whose route is the oracle route of their (task, kind).
    * ``oracle_overlap``: the mean over tasks of the Jaccard index between the task's module set (the
      modules any of its routes uses) and the module set of its oracle routes: 1 when a task uses exactly
      the oracle's modules.
    * ``oracle_route_overlap``: ``route_overlap`` (:func:`route_statistics`) of the oracle routing itself,
      on the same pairs: what the routes' ``route_overlap`` is to be compared with.
    * ``route_kind_information``: how much of the kind of instance the route carries within a task:
      ``I(route; kind | task) / H(kind | task)`` (both averaged over the pairs' tasks), 1 when the route
      tells the kind, 0 when it does not depend on it. Left out without kinds (``kinds`` None, or one kind
      per task: nothing to carry).

    Args:
        routes: ``(N, D)`` action ids.
        tasks: ``(N,)`` task ids.
        kinds: ``(N,)`` kind of instance of each pair, or None (one kind).
        oracle_routes: ``(n_tasks, n_kinds, D)`` the oracle routing's action ids
            (:meth:`routing_env.oracle_route.OracleRouting.resolve`).
        n_tasks: number of tasks.
        n_modules: the pool's module count (ids ``>= n_modules`` are PASS or padding).
    """
    kind_ids = torch.zeros_like(tasks) if kinds is None else kinds
    oracle = oracle_routes.to(routes.device)[tasks, kind_ids]  # (N, D)
    usage = task_module_usage(routes, tasks, n_tasks, n_modules) > 0  # (T, M)
    oracle_usage = task_module_usage(oracle, tasks, n_tasks, n_modules)  # (T, M)
    oracle_used = oracle_usage > 0
    present = oracle_used.any(1)
    inter = (usage & oracle_used).sum(1).float()
    union = (usage | oracle_used).sum(1).float().clamp_min(1)
    stats = {
        "oracle_route_rate": float((routes == oracle).all(1).float().mean()),
        "oracle_overlap": float((inter / union)[present].mean()) if bool(present.any()) else math.nan,
        "oracle_route_overlap": module_set_overlap(oracle_usage)["route_overlap"],
    }
    if kinds is not None:
        weight = torch.bincount(tasks, minlength=n_tasks).float()  # (T,) pairs per task
        h_kind = task_entropy_bits(kinds[:, None], tasks, n_tasks)  # (T,)
        h_route = task_entropy_bits(routes, tasks, n_tasks)
        h_joint = task_entropy_bits(torch.cat([kinds[:, None], routes], dim=1), tasks, n_tasks)
        information = (h_kind + h_route - h_joint).clamp_min(0.0)  # (T,) I(route; kind | task = t)
        denominator = float((weight * h_kind).sum())
        if denominator > 0:
            stats["route_kind_information"] = min(float((weight * information).sum()) / denominator, 1.0)
    return stats


def routes_by_group(
    routes: torch.Tensor,
    tasks: torch.Tensor,
    kinds: torch.Tensor,
    correct: torch.Tensor,
    n_tasks: int,
    n_kinds: int,
) -> list[dict[str, Any]]:
    """Per (task, kind of instance) that has pairs: how many, their accuracy, how many distinct routes
    they take, the most common route and the share of the group's pairs on it. On a probe this says which
    route the router gives each kind of each task, to set beside the oracle routing's.

    Args:
        routes: ``(N, D)`` action ids.
        tasks, kinds: ``(N,)`` task and kind of instance (all 0 without kinds).
        correct: ``(N,)`` bool, the route's answer was right.
    """
    groups = []
    for task in range(n_tasks):  # a few (task, kind) groups, each one batched over its pairs
        for kind in range(n_kinds):
            member = (tasks == task) & (kinds == kind)
            n = int(member.sum())
            if n == 0:
                continue
            unique, counts = torch.unique(routes[member], dim=0, return_counts=True)
            top = int(counts.argmax())
            groups.append(
                {
                    "task": task,
                    "kind": kind,
                    "pairs": n,
                    "accuracy": float(correct[member].float().mean()),
                    "routes": int(unique.shape[0]),
                    "route": unique[top].tolist(),
                    "route_share": float(counts[top]) / n,
                }
            )
    return groups
