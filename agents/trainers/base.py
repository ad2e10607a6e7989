"""What a training run needs of an algorithm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

EpisodeCallback = Callable[[int], None]  # told how many episodes just finished (the progress bar)


class Trainer(Protocol):
    """An algorithm as the training loop drives it.

    A trainer owns the agent (a router, a table, or nothing) and trains it on the training env, whose
    engine trains the module pool; the loop checkpoints the env itself.
    """

    def learn_epoch(self, n_batches: int, on_episodes: EpisodeCallback) -> None:
        """Run and learn from ``n_batches`` batches of episodes."""

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic actions ``(B,)`` for the engine's observation tensors (evaluation)."""

    def set_epoch(self, epoch: int) -> None:
        """Apply the learning-rate schedule of ``epoch``."""

    def router_lr(self, epoch: int) -> float | None:
        """The agent's learning rate in ``epoch`` (None: it has none)."""

    def save(self, folder: Path) -> None:
        """Write the agent into a checkpoint folder."""

    def load(self, folder: Path) -> None:
        """Read the agent from a checkpoint folder."""
