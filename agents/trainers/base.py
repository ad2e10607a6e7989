"""What a training run needs of an algorithm."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

# Called after every batch (its updates done, the next batch not begun) with its number of episodes
# (the progress bar); a true return stops the epoch there (a checkpoint, Ctrl-C).
BatchCallback = Callable[[int], "bool | None"]


class Trainer(Protocol):
    """An algorithm as the training loop drives it.

    A trainer owns the agent (a router, a table, or nothing) and trains it on the training env, whose
    engine trains the module pool; the loop checkpoints the env itself.
    """

    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        """Run and learn from up to ``n_batches`` batches of episodes, calling ``after_batch`` after each;
        return how many ran (fewer when ``after_batch`` stopped it)."""

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic actions ``(B,)`` for the engine's observation tensors (evaluation)."""

    def set_epoch(self, epoch: int) -> None:
        """Apply the learning-rate schedule of ``epoch``."""

    def router_lr(self, epoch: int) -> float | None:
        """The agent's learning rate in ``epoch`` (None: it has none)."""

    def health(self) -> dict[str, float]:
        """Numbers that stay finite while the agent learns: the losses of its last update (those it
        read to the host anyway) and the norm of its parameters. The divergence guard checks them
        after every batch."""

    def save(self, folder: Path) -> None:
        """Write the agent into a checkpoint folder."""

    def load(self, folder: Path) -> None:
        """Read the agent from a checkpoint folder."""

    def weights(self) -> dict[str, Any]:
        """What the agent needs to act, without its optimizer's state (a shared model's agent part);
        tensors on the CPU."""

    def load_weights(self, weights: dict[str, Any]) -> None:
        """Take :meth:`weights` of a trainer of the same settings."""


def parameter_norm(tensors: Iterable[torch.Tensor]) -> float:
    """The 2-norm of all of ``tensors`` together (one device read); inf or nan once any is not finite."""
    norms = [torch.linalg.vector_norm(t.detach().float()) for t in tensors]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
