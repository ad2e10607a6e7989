"""Training the module pool: Adam, its learning-rate schedule, and the gradient of the episodes not yet
in an optimizer step."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class PoolOptimizer:
    """One Adam step on the pool for every ``update_every`` episodes, on their mean loss.

    Args:
        parameters: the pool's parameters.
        lr: the learning rate of the first pass over the split.
        lr_decay: factor on the learning rate after every pass.
        update_every: episodes per optimizer step (a vector env: its batch; the single env: ``batch_size``
            episodes of one each).
    """

    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], lr: float, lr_decay: float, update_every: int
    ) -> None:
        self.params = list(parameters)
        self.base_lr, self.lr_decay, self.update_every = float(lr), float(lr_decay), int(update_every)
        self.adam = torch.optim.Adam(self.params, lr=self.base_lr)
        self.pending_episodes = 0

    @property
    def lr(self) -> float:
        return self.adam.param_groups[0]["lr"]

    def set_pass(self, passes: int) -> None:
        """The learning rate after ``passes`` completed passes: ``lr * lr_decay ** passes``."""
        for group in self.adam.param_groups:
            group["lr"] = self.base_lr * self.lr_decay**passes

    def accumulate(self, loss_sum: torch.Tensor, n_episodes: int) -> None:
        """Add the gradient of ``n_episodes`` episodes' summed loss; step once ``update_every`` are in."""
        (loss_sum / self.update_every).backward()
        self.pending_episodes += n_episodes
        if self.pending_episodes >= self.update_every:
            self.adam.step()
            self.adam.zero_grad(set_to_none=True)
            self.pending_episodes = 0

    def state_dict(self) -> dict[str, Any]:
        """Adam's state and, between steps, the gradient accumulated so far (else a resumed run's next
        step would differ)."""
        pending = self.pending_episodes > 0
        return {
            "adam": self.adam.state_dict(),
            "pending_episodes": self.pending_episodes,
            "pending_grads": [None if p.grad is None else p.grad.detach().cpu().clone() for p in self.params]
            if pending
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adam.load_state_dict(state["adam"])
        self.pending_episodes = int(state["pending_episodes"])
        grads = state["pending_grads"] or [None] * len(self.params)
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device, param.dtype).clone()
