"""The LRN reward, as pure functions of tensors (paper section 4, eq. 6), and the window of recent
routes whose module counts make the collapse bonus.

An episode's reward is 0 before its last step and, at the last step,

    R = -CE(network(x), y) + bonus_weight * sum_{i in modules the network used} r_i

where r_i is the collapse bonus of module i, computed from how often each module was used by the
batch of episodes the episode belongs to: the least used module gets 1, the most used 0.

Not in the paper, the bonus's *scope* (:data:`BONUS_SCOPES`) says whose counts are compared: eq. 6 over
the whole pool (``"pool"``, the paper) is highest when every module is used equally, which with as many
tasks as duplicates means disjoint routes. ``"task"`` counts only the routes of the episode's own task, so
a task is pushed to spread its routes over duplicates, not away from the modules other tasks use;
``"kind"`` takes the minimum and maximum within each kind of module (bank), so a head is compared with
heads, not with the convolutions every route uses once.
"""

from __future__ import annotations

from typing import Any

import torch

from routing_env.config import BONUS_SCOPES


def module_usage_counts(routes: torch.Tensor, n_modules: int) -> torch.Tensor:
    """How many routes use each module.

    Args:
        routes: ``(B, T)`` int64 action ids; ids ``>= n_modules`` (PASS, padding) are not modules.
        n_modules: the pool's module count.

    Returns:
        ``(n_modules,)`` float counts.
    """
    # A comparison with every module id (PASS and padding match none), not bincount: bincount reads its
    # input's maximum back to the host on a GPU.
    modules = torch.arange(n_modules, device=routes.device)
    return (routes.reshape(-1, 1) == modules).sum(0, dtype=torch.float)


def collapse_bonus(counts: torch.Tensor, kinds: torch.Tensor | None = None) -> torch.Tensor:
    """Paper eq. 6: ``r_i = 1 - (c_i - c_min) / (c_max - c_min)`` over every module of the pool, or, with
    ``kinds``, with ``c_min`` and ``c_max`` taken over the modules of module ``i``'s kind.

    When all the counts compared are equal (``c_max == c_min``) no module is used less than another, so
    there is nothing to rebalance and every ``r_i`` is 0; this also keeps the reward from favouring longer
    routes in that case.

    Args:
        counts: ``(..., M)`` usage counts (unused modules count 0, so they get the full bonus); leading
            dimensions are independent sets of counts (e.g. one per episode's task).
        kinds: ``(M,)`` the kind (bank) of each module; None: the whole pool is one kind.

    Returns:
        ``(..., M)`` bonuses in ``[0, 1]``.
    """
    counts = counts.float()
    if kinds is None:
        c_min, c_max = counts.amin(-1, keepdim=True), counts.amax(-1, keepdim=True)
    else:
        same = kinds[:, None] == kinds[None, :]  # (M, M): module j is of module i's kind
        rows = counts[..., None, :]  # (..., 1, M)
        c_min = torch.where(same, rows, torch.inf).amin(-1)  # (..., M)
        c_max = torch.where(same, rows, -torch.inf).amax(-1)
    spread = c_max - c_min
    return (1.0 - (counts - c_min) / spread.clamp_min(1e-12)) * (spread > 0)


def task_usage_counts(
    routes: torch.Tensor, route_tasks: torch.Tensor, tasks: torch.Tensor, n_modules: int
) -> torch.Tensor:
    """For each episode, how many of the remembered routes *of its task* use each module (the counts of
    the ``"task"`` bonus scope).

    Args:
        routes: ``(W, T)`` remembered routes (ids ``>= n_modules`` are no module).
        route_tasks: ``(W,)`` their tasks (-1: an empty slot, no task's).
        tasks: ``(B,)`` the episodes' tasks.
        n_modules: the pool's module count.

    Returns:
        ``(B, n_modules)`` float counts.
    """
    ids = routes.clamp(max=n_modules)
    uses = torch.zeros(routes.shape[0], n_modules + 1, device=routes.device)
    uses.scatter_(1, ids, 1.0)  # (W, M + 1): a route uses a module at most once
    same_task = (tasks[:, None] == route_tasks[None, :]).float()  # (B, W)
    return same_task @ uses[:, :n_modules]


def route_bonus(routes: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The sum of the bonuses of the modules each route uses.

    Args:
        routes: ``(B, T)`` action ids (PASS and padding ``>= len(bonus)`` add nothing).
        bonus: ``(M,)`` per-module bonus, or ``(B, M)``: each episode's own.

    Returns:
        ``(B,)``.
    """
    return step_bonuses(routes, bonus).sum(dim=1)


def step_bonuses(routes: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The bonus of the module each step chose (paper eq. 7: "the corresponding timestep's reward is
    augmented" by it); PASS and padding get 0.

    Args:
        routes: ``(B, T)`` action ids.
        bonus: ``(M,)`` per-module bonus, or ``(B, M)``: each episode's own.

    Returns:
        ``(B, T)``; summed over steps it is :func:`route_bonus`.
    """
    n_modules = bonus.shape[-1]
    padded = torch.cat([bonus, bonus.new_zeros(*bonus.shape[:-1], 1)], dim=-1)  # (..., M + 1)
    ids = routes.clamp(max=n_modules)
    if bonus.dim() == 1:
        return padded[ids]
    return padded.gather(1, ids)


def final_reward(loss: torch.Tensor, bonus: torch.Tensor, bonus_weight: float) -> torch.Tensor:
    """``-loss + bonus_weight * bonus``, per episode (``(B,)`` each)."""
    return -loss + bonus_weight * bonus


def episode_bonus_weights(
    pair_epoch: torch.Tensor, bonus_weight: float, bonus_warmup: int, bonus_until: int | None = None
) -> torch.Tensor:
    """Each episode's weight of the collapse bonus, ``(B,)``: ``bonus_weight``, or 0 for episodes on pairs
    of the first ``bonus_warmup`` passes over the split (the bonus warm-up) and, where ``bonus_until`` is
    set, of that pass and later ones (the routes consolidate once the bonus has spread them), given the
    pass each pair was drawn in, ``pair_epoch`` ``(B,)``."""
    on = pair_epoch >= bonus_warmup  # (B,)
    if bonus_until is not None:
        on = on & (pair_epoch < bonus_until)
    return on * bonus_weight


def batch_rewards(
    loss: torch.Tensor,
    route: torch.Tensor,
    step_bonus: torch.Tensor,
    weight: torch.Tensor,
    step_loss: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The rewards of a batch of finished episodes: ``loss`` ``(B,)``, ``route`` ``(B, T)``, each step's
    collapse bonus ``step_bonus`` ``(B, T)`` (:func:`step_bonuses`) and each episode's weight of the bonus,
    ``weight`` ``(B,)`` (:func:`episode_bonus_weights`). Where
    each step's share of the loss is known (``step_loss`` ``(B, T)``, summing to ``loss``: the router-alone
    probe's oracle table), each step is charged its own share instead of the last step the whole loss.

    Returns ``reward`` ``(B,)`` (eq. 6), ``step_rewards`` ``(B, T)`` (the same reward spread over the steps,
    paper eq. 7: each step's module's bonus, the loss last), ``loss``, ``bonus`` (the route's bonus),
    ``reward_loss`` and ``reward_bonus`` (the reward's two parts), all ``(B,)`` but ``step_rewards``.
    """
    bonus = step_bonus.sum(dim=1)  # (B,): route_bonus
    step_rewards = weight[:, None] * step_bonus  # (B, T)
    if step_loss is None:
        step_rewards[:, -1] -= loss
    else:
        step_rewards -= step_loss
    return {
        "reward": final_reward(loss, bonus, weight),
        "step_rewards": step_rewards,
        "loss": loss,
        "bonus": bonus,
        "reward_loss": -loss,
        "reward_bonus": weight * bonus,
    }


class UsageWindow:
    """The routes (and their tasks) of the last ``size`` episodes: the batch whose module counts make the
    collapse bonus.

    Args:
        size: episodes remembered (the env's ``batch_size``).
        depth: steps per route.
        pad: the id of an unfilled route step (counts as no module).
        device: where the routes live.
    """

    def __init__(self, size: int, depth: int, pad: int, device: torch.device) -> None:
        self.pad = int(pad)
        self.routes = torch.full((int(size), int(depth)), self.pad, dtype=torch.long, device=device)
        self.tasks = torch.full((int(size),), -1, dtype=torch.long, device=device)  # -1: empty slot
        self.position = 0

    def push(self, routes: torch.Tensor, tasks: torch.Tensor) -> None:
        """Remember ``routes`` ``(B, T)`` of tasks ``(B,)``, forgetting the oldest."""
        size, b = self.routes.shape[0], routes.shape[0]
        if b == size and self.position == 0:  # the whole window (a vector env's batch): one copy each
            self.routes.copy_(routes)
            self.tasks.copy_(tasks)
            return
        idx = (self.position + torch.arange(b, device=self.routes.device)) % size
        self.routes[idx] = routes
        self.tasks[idx] = tasks
        self.position = (self.position + b) % size

    def counts(self, n_modules: int) -> torch.Tensor:
        """``(n_modules,)`` usage counts over the window."""
        return module_usage_counts(self.routes, n_modules)

    def bonus(self, scope: str, tasks: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """The collapse bonus of every module (:func:`collapse_bonus`) in ``scope`` (:data:`BONUS_SCOPES`):
        ``(M,)``, or for ``"task"`` ``(B, M)``, each episode's from its task's counts.

        Args:
            scope: ``"pool"``, ``"task"`` or ``"kind"``.
            tasks: ``(B,)`` the tasks of the episodes being rewarded.
            kinds: ``(M,)`` the kind (bank) of each module.
        """
        if scope not in BONUS_SCOPES:
            raise ValueError(f"bonus scope must be one of {BONUS_SCOPES}, got {scope!r}")
        n_modules = kinds.shape[0]
        if scope == "task":
            return collapse_bonus(task_usage_counts(self.routes, self.tasks, tasks, n_modules))
        return collapse_bonus(self.counts(n_modules), kinds if scope == "kind" else None)

    def clear(self) -> None:
        self.routes.fill_(self.pad)
        self.tasks.fill_(-1)
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"routes": self.routes.cpu(), "tasks": self.tasks.cpu(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.routes.copy_(state["routes"].to(self.routes.device))
        if "tasks" in state:
            self.tasks.copy_(state["tasks"].to(self.tasks.device))
        else:  # a checkpoint written before the window kept tasks: its routes count for no task
            self.tasks.fill_(-1)
        self.position = int(state["position"])
