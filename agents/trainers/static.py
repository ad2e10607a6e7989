"""The static baseline: every instance takes the same network, with the head of its task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agents.trainers.base import BatchCallback


class StaticTrainer:
    """Drives the engine with the one route of the static pool (no agent to learn).

    Runs through the engine like any agent (same data walk, optimizer, batch size and metrics); the pool
    must be :func:`routing_env.modules.static_pool_specs` (one input conv, hidden conv and FC of each
    kind, and ``n_tasks`` heads), so the route is ``[0, 1, 2, 3, 4 + task]``.

    Args:
        env: the training env (its engine is driven directly).
    """

    def __init__(self, env: Any) -> None:
        self.engine = env.engine
        if self.engine.max_depth != 5:
            raise ValueError("the static network has 5 layers: build its engine with max_depth=5")

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._actions(int(obs["step"][0]), obs["task"])

    @staticmethod
    def _actions(step: int, task: torch.Tensor) -> torch.Tensor:
        """``(B,)`` actions at ``step``: shared module ``step`` in the 4 hidden layers, then the task head."""
        if step < 4:
            return torch.full_like(task, step)
        return 4 + task

    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        for done in range(1, n_batches + 1):
            self.engine.begin_batch()
            for k in range(self.engine.max_depth):  # the step is known here: no observation, no host sync
                self.engine.step(self._actions(k, self.engine.tasks))
            if after_batch(self.engine.batch_size):
                return done
        return n_batches

    def set_epoch(self, epoch: int) -> None:
        pass  # the pool's lr decays with the engine's passes

    def router_lr(self, epoch: int) -> None:
        return None  # no router

    def health(self) -> dict[str, float]:
        return {}  # nothing learns here but the pool, which the loop checks through the engine

    def save(self, folder: Path) -> None:
        pass  # everything lives in the engine, which the training loop checkpoints

    def load(self, folder: Path) -> None:
        pass

    def weights(self) -> dict[str, Any]:
        return {}  # the route is fixed; the pool's weights travel with the env

    def load_weights(self, weights: dict[str, Any]) -> None:
        pass


def build(env: Any) -> StaticTrainer:
    """The trainer of ``--algo static`` (the static network has no settings of its own)."""
    return StaticTrainer(env)


class StaticRouteTrainer:
    """Drives the engine with one fixed route per task through any pool (no agent to learn): the first
    phase of upcycling (``--upcycle-epochs``), which trains the static network's route through the LRN pool
    (:func:`routing_env.static_route.static_network_route`) before the router takes over.

    Args:
        engine: the training engine.
        routes: ``(n_tasks, max_depth)`` action ids: each task's route.
    """

    def __init__(self, engine: Any, routes: torch.Tensor) -> None:
        self.engine = engine
        if routes.shape[1] != engine.max_depth:
            raise ValueError(f"routes of {routes.shape[1]} steps for an engine of {engine.max_depth}")
        self.routes = routes.to(engine.device)

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.routes[obs["task"], obs["step"]]

    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        for done in range(1, n_batches + 1):
            self.engine.begin_batch()
            route = self.routes[self.engine.tasks]  # (B, D)
            for k in range(self.engine.max_depth):
                self.engine.step(route[:, k])
            if after_batch(self.engine.batch_size):
                return done
        return n_batches
