"""Baselines of the probes: the LRN pool trained on fixed routes, the probe's oracle routing or the static
network's route, through the same engine as the router (same data walk, optimizer, batch size, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from agents.trainers.base import BatchCallback
from routing_env.static_route import static_network_route

FixedRouting = Literal["oracle", "static"]


class FixedRouteTrainer:
    """Drives the engine with a fixed route per (task, kind of instance); nothing but the pool learns.

    * ``"oracle"``: the benchmark's oracle routing (a probe's, :mod:`routing_env.oracle_route`): what the
      probe's known best routing scores once its modules are trained;
    * ``"static"``: the static network as a route of the same LRN pool
      (:func:`routing_env.static_route.static_network_route`: one trunk shared by every task, a head per
      task): the static network of the same modules.

    Evaluation passes each pair's kind under the observation's ``"kind"`` (``act.reads_kind``, see
    :func:`agents.evaluation.evaluate`); training reads it from the engine.

    Args:
        env: the training env (its engine is driven directly).
        routing: which fixed routing.
    """

    def __init__(self, env: Any, routing: FixedRouting) -> None:
        self.engine = env.engine
        self.routing = routing
        if routing == "oracle":
            if self.engine.oracle_routes is None:
                raise ValueError("--algo oracle_route needs a benchmark with an oracle routing (a probe)")
            self.routes = self.engine.oracle_routes  # (T, K, D)
        else:
            n_tasks = int(env.observation_space["task"].n)
            route = static_network_route(self.engine.pool, n_tasks, self.engine.max_depth)  # (T, D)
            self.routes = route[:, None, :].to(self.engine.device)  # (T, 1, D): the same for every kind
        self.n_kinds = self.routes.shape[1]

    def _actions(self, step: int, task: torch.Tensor, kind: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` actions at ``step`` for pairs of ``task`` and ``kind`` ``(B,)``."""
        kind = torch.zeros_like(task) if kind is None or self.n_kinds == 1 else kind
        return self.routes[task, kind, step]

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._actions(int(obs["step"][0]), obs["task"], obs.get("kind"))

    act.reads_kind = True  # evaluate() then adds the pairs' kinds to the observation

    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        for done in range(1, n_batches + 1):
            self.engine.begin_batch()
            for k in range(self.engine.max_depth):  # the step is known here: no observation, no host sync
                self.engine.step(self._actions(k, self.engine.tasks, self.engine.kinds))
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


def oracle_route(env: Any) -> FixedRouteTrainer:
    """The trainer of ``--algo oracle_route``."""
    return FixedRouteTrainer(env, "oracle")


def static_route(env: Any) -> FixedRouteTrainer:
    """The trainer of ``--algo static_route``."""
    return FixedRouteTrainer(env, "static")
