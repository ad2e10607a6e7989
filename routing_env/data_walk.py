"""The order in which episodes take the pairs of a split, and the batches of pairs they take."""

from __future__ import annotations

from typing import Any

import torch

from routing_env.augment import random_crop_flip
from routing_env.benchmarks.base import MTLSplit


class DataWalk:
    """Passes over ``n_pairs`` pairs: each pass a fresh seeded permutation (training) or the split's own
    order (``sequential``, evaluation). A batch that runs past the end of a pass continues into the next.

    Args:
        n_pairs: pairs in the split.
        sequential: walk in order instead of shuffling.
        device: where the drawn indices live.
    """

    def __init__(self, n_pairs: int, sequential: bool, device: torch.device) -> None:
        if n_pairs < 1:
            raise ValueError("the data split is empty")
        self.n_pairs, self.sequential, self.device = int(n_pairs), bool(sequential), device
        self.generator = torch.Generator()
        self.epoch = 0  # completed passes
        self.first_pass = 0  # the pass of the first pair of the last draw
        self.cursor = 0
        self.order = torch.arange(0)

    def seed(self, seed: int | None) -> None:
        """Restart at the first pair of a fresh pass; ``None`` draws a seed from torch's global generator."""
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.initial_seed = int(seed)
        self.generator.manual_seed(int(seed))
        self.epoch, self.cursor, self.first_pass = 0, 0, 0
        self.order = self._new_order()

    def _new_order(self) -> torch.Tensor:
        n = self.n_pairs
        order = torch.arange(n) if self.sequential else torch.randperm(n, generator=self.generator)
        return order.to(self.device)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` pair indices ``(n,)`` and the pass each belongs to ``(n,)``."""
        self.first_pass = self.epoch + int(self.cursor >= self.order.shape[0])
        parts, passes = [], []
        while n > 0:
            if self.cursor >= self.order.shape[0]:
                self.epoch += 1
                self.order = self._new_order()
                self.cursor = 0
            take = self.order[self.cursor : self.cursor + n]
            parts.append(take)
            passes.append(torch.full_like(take, self.epoch))
            self.cursor += take.shape[0]
            n -= take.shape[0]
        if len(parts) == 1:  # within one pass: a view of the order, which is replaced, never written
            return parts[0], passes[0]
        return torch.cat(parts), torch.cat(passes)

    def state_dict(self) -> dict[str, Any]:
        # ``order`` is replaced, never written in place, so keeping the reference is a true snapshot.
        return {
            "order": self.order,
            "cursor": self.cursor,
            "epoch": self.epoch,
            "first_pass": self.first_pass,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = state["order"].to(self.device)
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])
        self.first_pass = int(state.get("first_pass", self.epoch))
        self.generator.set_state(state["generator"])


class PairDraws:
    """The batches of pairs an engine's episodes take: a :class:`DataWalk` over ``data``, each batch's
    images, tasks, labels and kinds of instance gathered at once, its images randomly cropped (and
    flipped) with ``augment``. Keeps the walk's and the augmentation's state before the last draw, so that
    a checkpoint taken before that batch ran draws it again.

    Args:
        data: the split (on the engine's device).
        sequential: walk in order (evaluation) instead of seeded shuffled passes.
        augment: random crops of the images, and horizontal flips with ``hflip``.
        hflip: mirrored images keep their labels (the benchmark says).
    """

    def __init__(self, data: MTLSplit, sequential: bool, augment: bool, hflip: bool) -> None:
        self.data, self.augment, self.hflip = data, augment, hflip
        device = data.images.device
        # (4, N): each pair's image row, task, label and kind of instance (0 without kinds), so that a batch
        # takes them in one gather.
        kinds = data.kinds if data.kinds is not None else torch.zeros_like(data.tasks)
        self.columns = torch.stack([data.image_index, data.tasks, data.labels, kinds])
        self.walk = DataWalk(len(data), sequential, device)
        self.augment_generator = torch.Generator(device=device)
        self.before_draw: dict[str, Any] | None = None

    def seed(self, seed: int | None) -> None:
        """Restart the walk from a fresh (seeded) order, and the augmentation with it."""
        self.walk.seed(seed)
        self.augment_generator.manual_seed(self.walk.initial_seed)
        self.before_draw = None

    def draw(self, n: int) -> tuple[torch.Tensor, ...]:
        """The next ``n`` pairs: images ``(n, C, H, W)`` uint8, tasks, labels, kinds, each pair's index and
        the pass it was drawn in, ``(n,)`` each."""
        self.before_draw = self.state_dict()
        pair_index, pair_epoch = self.walk.draw(n)  # (n,), (n,)
        image_index, tasks, labels, kinds = self.columns[:, pair_index]  # (n,) each
        images = self.data.images[image_index]  # (n, C, H, W) uint8
        if self.augment:
            images = random_crop_flip(images, self.augment_generator, flip=self.hflip)
        return images, tasks, labels, kinds, pair_index, pair_epoch

    def state_dict(self, before_last_draw: bool = False) -> dict[str, Any]:
        """The walk and the augmentation's generator; ``before_last_draw``: as they were before the last
        :meth:`draw` (its batch is drawn again after :meth:`load_state_dict`)."""
        if before_last_draw and self.before_draw is not None:
            return self.before_draw
        return {"walk": self.walk.state_dict(), "augment_generator": self.augment_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.walk.load_state_dict(state["walk"])
        self.augment_generator.set_state(state["augment_generator"])
