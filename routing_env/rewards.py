"""The LRN reward, as pure functions of tensors (paper section 4, eq. 6), and the window of recent
routes whose module counts make the collapse bonus.

An episode's reward is 0 before its last step and, at the last step,

    R = -CE(network(x), y) + bonus_weight * sum_{i in modules the network used} r_i

where r_i is the collapse bonus of module i, computed from how often each module was used by the
batch of episodes the episode belongs to: the least used module gets 1, the most used 0.
"""

from __future__ import annotations

from typing import Any

import torch


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


def collapse_bonus(counts: torch.Tensor) -> torch.Tensor:
    """Paper eq. 6: ``r_i = 1 - (c_i - c_min) / (c_max - c_min)`` over every module of the pool.

    When all counts are equal (``c_max == c_min``) no module is used less than another, so there is
    nothing to rebalance and every ``r_i`` is 0; this also keeps the reward from favouring longer
    routes in that case.

    Args:
        counts: ``(M,)`` usage counts (unused modules count 0, so they get the full bonus).

    Returns:
        ``(M,)`` bonuses in ``[0, 1]``.
    """
    counts = counts.float()
    c_min, c_max = torch.aminmax(counts)
    spread = c_max - c_min
    return (1.0 - (counts - c_min) / spread.clamp_min(1e-12)) * (spread > 0)


def route_bonus(routes: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The sum of the bonuses of the modules each route uses.

    Args:
        routes: ``(B, T)`` action ids (PASS and padding ``>= len(bonus)`` add nothing).
        bonus: ``(M,)`` per-module bonus.

    Returns:
        ``(B,)``.
    """
    return step_bonuses(routes, bonus).sum(dim=1)


def step_bonuses(routes: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The bonus of the module each step chose (paper eq. 7: "the corresponding timestep's reward is
    augmented" by it); PASS and padding get 0.

    Args:
        routes: ``(B, T)`` action ids.
        bonus: ``(M,)`` per-module bonus.

    Returns:
        ``(B, T)``; summed over steps it is :func:`route_bonus`.
    """
    padded = torch.cat([bonus, bonus.new_zeros(1)])
    return padded[routes.clamp(max=bonus.shape[0])]


def final_reward(loss: torch.Tensor, bonus: torch.Tensor, bonus_weight: float) -> torch.Tensor:
    """``-loss + bonus_weight * bonus``, per episode (``(B,)`` each)."""
    return -loss + bonus_weight * bonus


class UsageWindow:
    """The routes of the last ``size`` episodes: the batch whose module counts make the collapse bonus.

    Args:
        size: episodes remembered (the env's ``batch_size``).
        depth: steps per route.
        pad: the id of an unfilled route step (counts as no module).
        device: where the routes live.
    """

    def __init__(self, size: int, depth: int, pad: int, device: torch.device) -> None:
        self.pad = int(pad)
        self.routes = torch.full((int(size), int(depth)), self.pad, dtype=torch.long, device=device)
        self.position = 0

    def push(self, routes: torch.Tensor) -> None:
        """Remember ``routes`` ``(B, T)``, forgetting the oldest."""
        size, b = self.routes.shape[0], routes.shape[0]
        if b == size and self.position == 0:  # the whole window (a vector env's batch): one copy
            self.routes.copy_(routes)
            return
        idx = (self.position + torch.arange(b, device=self.routes.device)) % size
        self.routes[idx] = routes
        self.position = (self.position + b) % size

    def counts(self, n_modules: int) -> torch.Tensor:
        """``(n_modules,)`` usage counts over the window."""
        return module_usage_counts(self.routes, n_modules)

    def clear(self) -> None:
        self.routes.fill_(self.pad)
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"routes": self.routes.cpu(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.routes.copy_(state["routes"].to(self.routes.device))
        self.position = int(state["position"])
