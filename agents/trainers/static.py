"""The static baseline: every instance takes the same network, with the head of its task."""

from __future__ import annotations

from typing import Any

import torch

from agents.trainers.fixed_route import FixedRouteTrainer


class StaticTrainer(FixedRouteTrainer):
    """Drives the engine with the one route of the static pool (no agent to learn).

    The pool must be :func:`routing_env.modules.static_pool_specs` (one input conv, hidden conv and FC of
    each kind, and ``n_tasks`` heads), so task ``t``'s route is ``[0, 1, 2, 3, 4 + t]``.

    Args:
        env: the training env (its engine is driven directly).
    """

    def __init__(self, env: Any) -> None:
        engine = env.engine
        if engine.max_depth != 5:
            raise ValueError("the static network has 5 layers: build its engine with max_depth=5")
        n_tasks = engine.pool.n_modules - 4  # the heads follow the four shared layers
        trunk = torch.arange(4).expand(n_tasks, 4)  # (T, 4)
        super().__init__(engine, torch.cat([trunk, 4 + torch.arange(n_tasks)[:, None]], dim=1))  # (T, 5)


def build(env: Any) -> StaticTrainer:
    """The trainer of ``--algo static`` (the static network has no settings of its own)."""
    return StaticTrainer(env)
