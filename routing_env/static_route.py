"""The static network as a route of the LRN pool: the route a router can start from.

The static baseline (:func:`routing_env.modules.static_pool_specs`) is an input conv, a hidden conv, an
FC layer from conv features, a hidden FC layer and a head per task. The LRN pool holds each of these
kinds, so the same network is one route of it for every task: duplicate 0 of each trunk kind, shared by
all tasks, then the task's own FC head. Routes longer than 5 steps fill the rest with PASS.
"""

from __future__ import annotations

import torch

from routing_env.modules import ModulePool
from routing_env.pool_optimizer import PoolOptimizer

# The static network's shared trunk, in order (the kinds of lrn_pool_specs), and the kind of its heads.
TRUNK_KINDS = ("input_conv", "hidden_conv", "fc_from_conv", "hidden_fc")
HEAD_KIND = "head_from_fc"


def static_network_route(pool: ModulePool, n_tasks: int, max_depth: int) -> torch.Tensor:
    """Each task's route through ``pool`` that computes the static network:
    ``[input_conv[0], hidden_conv[0], fc_from_conv[0], hidden_fc[0], PASS..., head_from_fc[task % d]]``.

    The trunk keeps the steps it has in the static network (0-3) and the PASS steps stand between it and
    the head: there the alternatives to PASS are further hidden FC layers, so a task can leave the static
    network by adding a layer of its own in front of its head while it keeps the shared trunk (where the
    routing network routes, too). With as many duplicates as tasks every task has its own head, as in the
    static network; with fewer, tasks ``t`` and ``t + d`` share one.

    Args:
        pool: an LRN pool (:func:`routing_env.modules.lrn_pool_specs`: it needs the trunk's kinds and
            ``head_from_fc``).
        n_tasks: number of tasks.
        max_depth: steps per route (>= 5: the static network has 5 layers).

    Returns:
        ``(n_tasks, max_depth)`` int64 action ids.
    """
    if max_depth < len(TRUNK_KINDS) + 1:
        raise ValueError(f"the static network has 5 layers: its route needs max_depth >= 5, got {max_depth}")
    offsets = {spec.name: (offset, spec.duplicates) for spec, offset in zip(pool.specs, pool.bank_offsets)}
    missing = [kind for kind in (*TRUNK_KINDS, HEAD_KIND) if kind not in offsets]
    if missing:
        raise ValueError(
            f"the pool has no {', '.join(missing)} module: the static network is a route of the LRN pool "
            f"only (its kinds: {', '.join(offsets)})"
        )
    route = torch.full((n_tasks, max_depth), pool.pass_action, dtype=torch.long)
    for step, kind in enumerate(TRUNK_KINDS):
        route[:, step] = offsets[kind][0]
    head_offset, head_duplicates = offsets[HEAD_KIND]
    route[:, -1] = head_offset + torch.arange(n_tasks) % head_duplicates
    return route


def upcycle(pool: ModulePool, optimizer: PoolOptimizer | None) -> list[str]:
    """Sparse upcycling of the static network (as Komatsuzaki et al. 2023 do for mixtures of experts): copy
    duplicate 0 of each bank of the static network's trunk (:data:`TRUNK_KINDS`) into every duplicate of
    its bank, with its Adam state, so that after training the static route the duplicates start from the
    trained module on equal footing and can specialise. The heads stay as they are (each task trained its
    own). Returns the banks copied.

    Args:
        pool: an LRN pool (:func:`routing_env.modules.lrn_pool_specs`).
        optimizer: the pool's optimizer (its state is copied too); None for a frozen pool.
    """
    names = [spec.name for spec in pool.specs]
    missing = [kind for kind in TRUNK_KINDS if kind not in names]
    if missing:
        raise ValueError(f"upcycling needs the LRN pool: this pool has no {', '.join(missing)} bank")
    for kind in TRUNK_KINDS:
        bank = names.index(kind)
        if optimizer is not None:
            optimizer.copy_duplicate(bank)
        else:
            for p in pool.banks[bank].parameters():
                p.data.copy_(p.data[0].clone().expand_as(p))
    return list(TRUNK_KINDS)
