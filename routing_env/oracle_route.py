"""The best routing a probe benchmark knows by construction: a route per (task, kind of instance).

A probe (``routing_env/benchmarks/probes.py``) writes its oracle routing in the pool's terms, as kinds of
module and duplicate indices per step (``("input_conv", 1)``) or :data:`PASS`, as
:func:`routing_env.static_route.static_network_route` builds the static network from the pool's bank
offsets. :meth:`OracleRouting.resolve` turns it into action ids of a given pool and checks that every
route is valid under the env's action mask, so it holds for the duplicates and depth a run uses, or fails
with one line that says what the probe needs. With ``loss_source="oracle"`` (the router-alone probe)
the engine scores routes against the resolved routing instead of running them (:func:`oracle_losses`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from routing_env.modules import ModulePool
from routing_env.rules import RouteRules

PASS = "PASS"
# One step of a route: a module as (kind of module, duplicate index), or PASS.
Step = tuple[str, int] | str


@dataclass(frozen=True)
class OracleRouting:
    """A route per task and kind of instance, written in the pool's kinds of module.

    Attributes:
        routes: ``routes[task][kind]`` is the route of that task's instances of that kind: one
            :data:`Step` per step of the episode (``max_depth`` of them).
        note: one line on why this routing is the best one (docs and messages).
    """

    routes: tuple[tuple[tuple[Step, ...], ...], ...]
    note: str = ""

    def __post_init__(self) -> None:
        depths = {len(route) for per_kind in self.routes for route in per_kind}
        kinds = {len(per_kind) for per_kind in self.routes}
        if len(depths) != 1 or len(kinds) != 1 or not self.routes:
            raise ValueError("an oracle routing needs one route per (task, kind), all of one length")

    @property
    def n_tasks(self) -> int:
        return len(self.routes)

    @property
    def n_kinds(self) -> int:
        return len(self.routes[0])

    @property
    def max_depth(self) -> int:
        return len(self.routes[0][0])

    @property
    def duplicates(self) -> int:
        """The fewest duplicates per kind of module a pool needs for it."""
        return 1 + max(
            step[1] for per_kind in self.routes for route in per_kind for step in route if step != PASS
        )

    def resolve(self, pool: ModulePool, max_depth: int) -> torch.Tensor:
        """The routes as action ids of ``pool``, ``(n_tasks, n_kinds, max_depth)`` int64 (CPU); with more
        steps than the routing has, PASS fills the steps before the head (the same networks).

        Raises:
            ValueError: ``max_depth`` is shorter than the routing, the pool lacks a kind of module or
                duplicate, or a route is not valid under the env's action mask (one line each).
        """
        if int(max_depth) < self.max_depth:
            raise ValueError(
                f"the probe's oracle routing has {self.max_depth} steps: run it with max_depth >= "
                f"{self.max_depth} (--max-depth {self.max_depth}), got {max_depth}"
            )
        offsets = {
            spec.name: (offset, spec.duplicates) for spec, offset in zip(pool.specs, pool.bank_offsets)
        }
        # A longer episode holds the same networks: PASS fills the steps before the head.
        depth = int(max_depth)
        actions = torch.full((self.n_tasks, self.n_kinds, depth), pool.pass_action, dtype=torch.long)
        for t, per_kind in enumerate(self.routes):
            for k, route in enumerate(per_kind):
                for d, step in enumerate(route):
                    if step == PASS:
                        continue
                    name, dup = step
                    if name not in offsets:
                        raise ValueError(
                            f"the probe's oracle routing uses {name} modules, which this pool lacks (its "
                            f"kinds: {', '.join(offsets)}): run it with the LRN pool (pool='lrn')"
                        )
                    offset, duplicates = offsets[name]
                    if dup >= duplicates:
                        raise ValueError(
                            f"the probe's oracle routing uses {name}[{dup}]: run it with duplicates >= "
                            f"{self.duplicates} (--duplicates {self.duplicates}), got {duplicates}"
                        )
                    actions[t, k, d if d < self.max_depth - 1 else depth - 1] = offset + dup
        invalid = invalid_routes(pool, actions.flatten(0, 1), depth)
        if invalid:
            t, k = divmod(invalid[0], self.n_kinds)
            names = [pool.action_names[a] for a in actions[t, k].tolist()]
            raise ValueError(f"the oracle route of task {t}, kind {k} is not a valid network: {names}")
        return actions


def invalid_routes(pool: ModulePool, routes: torch.Tensor, max_depth: int) -> list[int]:
    """The rows of ``routes`` ``(N, max_depth)`` (action ids of ``pool``) that the env's action mask
    forbids at some step, walked as the engine walks them (batched over the rows)."""
    rules = RouteRules(pool, max_depth, routes.device)
    cur_type = torch.zeros(routes.shape[0], dtype=torch.long, device=routes.device)
    used = torch.zeros(routes.shape[0], pool.n_actions, dtype=torch.bool, device=routes.device)
    valid = torch.ones(routes.shape[0], dtype=torch.bool, device=routes.device)
    for k in range(max_depth):
        valid &= rules.mask(k, cur_type, used).gather(1, routes[:, k : k + 1]).squeeze(1)
        cur_type = rules.advance(cur_type, used, routes[:, k])
    return (~valid).nonzero().flatten().tolist()


def oracle_losses(
    oracle_routes: torch.Tensor,
    routes: torch.Tensor,
    tasks: torch.Tensor,
    kinds: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``loss_source="oracle"``: the loss of ``routes`` ``(B, D)`` on pairs of ``tasks``, ``kinds`` and
    ``labels`` ``(B,)`` each, against ``oracle_routes`` ``(n_tasks, n_kinds, D)``
    (:meth:`OracleRouting.resolve`).

    Returns:
        Each step's share of the loss ``(B, D)``, ``1 / D`` where it differs from the oracle route of the
        pair's (task, kind); the loss ``(B,)``; and the prediction ``(B,)``: the label where the route is
        the oracle route (loss 0), another of the ``n_classes`` elsewhere, so "correct" is the
        oracle-route rate.
    """
    step_loss = (routes != oracle_routes[tasks, kinds]).float() / routes.shape[1]  # (B, D)
    loss = step_loss.sum(dim=1)  # (B,)
    wrong = (labels + 1) % n_classes
    return step_loss, loss, torch.where(loss == 0, labels, wrong)


def route_of(steps: Sequence[Step]) -> tuple[Step, ...]:
    """``steps`` as an oracle route (a tuple of steps: modules as ``(kind, duplicate)`` tuples)."""
    return tuple(PASS if step == PASS else (str(step[0]), int(step[1])) for step in steps)
