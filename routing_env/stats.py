"""Running sums of what the training episodes did, kept on the device (no host sync per step)."""

from __future__ import annotations

import torch

# What the sums hold, in order: finished episodes, their summed loss, correct predictions, reward and
# bonus, and invalid actions taken.
FIELDS = ("episodes", "loss", "correct", "reward", "bonus", "invalid_actions")


class EpisodeStats:
    """Named running sums (:data:`FIELDS`) over the episodes since :meth:`reset`, read as means."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)

    def reset(self) -> None:
        self.sums.zero_()

    def add_episodes(
        self, loss: torch.Tensor, correct: torch.Tensor, reward: torch.Tensor, bonus: torch.Tensor
    ) -> None:
        """Add a batch of finished episodes (each argument ``(B,)``)."""
        self.sums[0] += loss.numel()
        self.sums[1:5] += torch.stack([loss, correct.float(), reward, bonus]).sum(dim=1)

    def add_invalid(self, invalid: torch.Tensor) -> None:
        """Add the invalid actions of one step (``(B,)`` bool)."""
        self.sums[5] += invalid.sum()

    def means(self) -> dict[str, float]:
        """Per-episode means (one device read)."""
        sums = dict(zip(FIELDS, self.sums.tolist(), strict=True))
        n = max(sums["episodes"], 1.0)
        return {
            "train_episodes": int(sums["episodes"]),
            "train_loss": sums["loss"] / n,
            "train_accuracy": sums["correct"] / n,
            "train_reward": sums["reward"] / n,
            "train_bonus": sums["bonus"] / n,
            "train_invalid_actions": sums["invalid_actions"] / n,
        }
