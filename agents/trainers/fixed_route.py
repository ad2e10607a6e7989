"""Trainers that drive the engine with fixed routes, so that nothing but the pool learns: the static
network (``--algo static``), the probes' baselines (``--algo oracle_route``: the probe's oracle routing;
``--algo static_route``: the static network's route through the same LRN pool) and upcycling's first phase
(``--upcycle-epochs``). They run through the same engine as the router (same data walk, optimizer, batch
size, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agents.trainers.base import BatchCallback
from routing_env.static_route import static_network_route


class FixedRouteTrainer:
    """Drives the engine with a fixed route per (task, kind of instance); nothing but the pool learns.

    Evaluation passes each pair's kind under the observation's ``"kind"`` (``act.reads_kind``, see
    :func:`agents.evaluation.route_pairs`); training reads it from the engine.

    Args:
        engine: the training engine (driven directly).
        routes: action ids, ``(n_tasks, n_kinds, max_depth)`` (a route per task and kind of instance) or
            ``(n_tasks, max_depth)`` (a route per task, whatever the kind).
    """

    def __init__(self, engine: Any, routes: torch.Tensor) -> None:
        routes = routes[:, None, :] if routes.dim() == 2 else routes  # (T, K, D)
        if routes.shape[2] != engine.max_depth:
            raise ValueError(f"routes of {routes.shape[2]} steps for an engine of {engine.max_depth}")
        self.engine = engine
        self.routes = routes.to(engine.device)

    def _route(self, task: torch.Tensor, kind: torch.Tensor | None) -> torch.Tensor:
        """``(B, D)``: the route of each pair of ``task`` and ``kind`` ``(B,)``."""
        if kind is None or self.routes.shape[1] == 1:
            kind = torch.zeros_like(task)
        return self.routes[task, kind]

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        route = self._route(obs["task"], obs.get("kind"))  # (B, D)
        return route.gather(1, obs["step"].long().view(-1, 1)).squeeze(1)  # (B,)

    act.reads_kind = True  # evaluation then adds the pairs' kinds to the observation

    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        for done in range(1, n_batches + 1):
            self.engine.begin_batch()
            route = self._route(self.engine.tasks, self.engine.kinds)  # (B, D)
            for k in range(self.engine.max_depth):  # the step is known here: no observation, no host sync
                self.engine.step(route[:, k])
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
        return {}  # the routes are fixed; the pool's weights travel with the env

    def load_weights(self, weights: dict[str, Any]) -> None:
        pass


def oracle_route(env: Any) -> FixedRouteTrainer:
    """The trainer of ``--algo oracle_route``: the benchmark's oracle routing (a probe's,
    :mod:`routing_env.oracle_route`), what the probe's known best routing scores once its modules train."""
    engine = env.engine
    if engine.oracle_routes is None:
        raise ValueError("--algo oracle_route needs a benchmark with an oracle routing (a probe)")
    return FixedRouteTrainer(engine, engine.oracle_routes)


def static_route(env: Any) -> FixedRouteTrainer:
    """The trainer of ``--algo static_route``: the static network as a route of the same LRN pool
    (:func:`routing_env.static_route.static_network_route`: one trunk shared by every task, a head per
    task), the static network of the same modules."""
    engine = env.engine
    n_tasks = int(env.observation_space["task"].n)
    return FixedRouteTrainer(engine, static_network_route(engine.pool, n_tasks, engine.max_depth))
