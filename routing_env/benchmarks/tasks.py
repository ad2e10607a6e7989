"""The common shapes of multi-task benchmarks built from one labelled image set, as seeded draws of pairs.

* :func:`one_vs_all`: one binary task per class ("is this class ``t``?"), as MNIST-MTL;
* :func:`class_groups`: one task per group of classes, a ``len(group)``-way problem whose label is the
  class's position in its group, as MIN-MTL (groups of 5 consecutive classes) and CIFAR-MTL
  (CIFAR-100's superclasses).

Each returns :class:`Pairs` (which source image, task and label each pair has); :meth:`Pairs.split`
turns them into an :class:`MTLSplit` that stores every used image once. Draws use the CPU generator
given (``seeded_generator(seed)``), so a seed gives the same pairs on every machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .base import DataError, MTLSplit


@dataclass
class Pairs:
    """The pairs of one split, before images are attached.

    Attributes:
        source_index: the image of each pair, as an index into the labelled source, ``(N,)`` int64.
        tasks: the task of each pair, ``(N,)`` int64.
        labels: the label of each pair inside its task, ``(N,)`` int64.
    """

    source_index: torch.Tensor
    tasks: torch.Tensor
    labels: torch.Tensor

    def split(self, images: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]) -> MTLSplit:
        """An :class:`MTLSplit` of these pairs.

        Args:
            images: the source's images ``(N_src, C, H, W)`` uint8 (pixel values 0..255, channels
                first; a grey image has ``C = 1``), indexed by ``source_index``; or a function that takes
                the sorted, distinct source indices used ``(n,)`` int64 and returns their images
                ``(n, C, H, W)`` uint8 (e.g. decodes only those files).

        Raises:
            DataError: the images are not ``(n, C, H, W)`` uint8.
        """
        used, image_index = torch.unique(self.source_index, return_inverse=True)
        stored = images(used) if callable(images) else images[used]
        if stored.dtype != torch.uint8 or stored.dim() != 4 or stored.shape[0] != used.numel():
            got = f"{tuple(stored.shape)} {stored.dtype}"
            raise DataError(f"expected {used.numel()} images as (N, C, H, W) uint8, got {got}")
        return MTLSplit(
            images=stored.contiguous(),
            image_index=image_index,
            tasks=self.tasks,
            labels=self.labels,
            source_index=self.source_index,
        )


def _as_labels(labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be a 1-D integer tensor, got {tuple(labels.shape)} {labels.dtype}")
    return labels.long().cpu()


def _pool(labels: torch.Tensor, c: int, need: int, what: str, unit: str) -> torch.Tensor:
    """The source indices of class ``c``, checked to hold ``need`` images."""
    pool = torch.nonzero(labels == c).squeeze(1)
    if pool.numel() < need:
        raise DataError(f"{what} has {pool.numel()} images of {unit} {c}, the protocol needs {need}")
    return pool


def one_vs_all(
    labels: torch.Tensor | Sequence[int],
    per_class: int,
    generator: torch.Generator,
    n_classes: int | None = None,
    what: str = "the source",
    unit: str = "class",
) -> Pairs:
    """One binary task per class ("is this class ``t``?"), as MNIST-MTL.

    Task ``t`` holds ``per_class`` images of every class: label 1 for the images of class ``t``, 0 for
    the others. So a task has ``n_classes * per_class`` pairs, ``per_class`` positives to
    ``(n_classes - 1) * per_class`` negatives (MNIST-MTL: ``per_class=1000``, 10,000 pairs per task).

    Draws are without replacement inside a (task, class) and independent across tasks, so an image may
    serve several tasks. Pairs come ordered by task, then class, then draw.

    Args:
        labels: the class of each source image, ``(N_src,)``, any integer dtype, values in
            ``[0, n_classes)`` (a tensor, NumPy array or list).
        per_class: how many images of each class every task draws (not a total: per task and class).
        generator: the seeded CPU generator of the draws (``seeded_generator(seed)``).
        n_classes: the number of classes, i.e. of tasks; default ``labels.max() + 1``.
        what: names the source in errors (e.g. "the training file"); ``unit`` names a class there.

    Raises:
        DataError: a class has fewer than ``per_class`` images.
    """
    labels = _as_labels(labels)
    n = int(n_classes if n_classes is not None else labels.max() + 1)
    sources = torch.empty(n, n, per_class, dtype=torch.long)  # (task, class, draw)
    for c in range(n):
        pool = _pool(labels, c, per_class, what, unit)
        # One random permutation per task gives independent draws without replacement per (task, class).
        keys = torch.rand(n, pool.numel(), generator=generator)
        sources[:, c] = pool[keys.argsort(dim=1)[:, :per_class]]
    tasks = torch.arange(n).view(-1, 1, 1).expand_as(sources)
    classes = torch.arange(n).view(1, -1, 1).expand_as(sources)
    return Pairs(sources.reshape(-1), tasks.reshape(-1), (classes == tasks).long().reshape(-1))


def class_groups(
    labels: torch.Tensor | Sequence[int],
    groups: Sequence[Sequence[int]],
    per_class: int | None,
    generator: torch.Generator | None = None,
    what: str = "the source",
    unit: str = "class",
) -> Pairs:
    """One task per group of classes, as MIN-MTL and CIFAR-MTL: task ``t`` tells the classes of
    ``groups[t]`` apart, a ``len(groups[t])``-way problem.

    The label is the class's position in its group: the images of class ``groups[t][i]`` get label
    ``i`` in task ``t`` (so ``groups=[[7, 3], [0, 5, 9]]`` makes task 0 label class 7 as 0 and class 3
    as 1, and task 1 label classes 0, 5, 9 as 0, 1, 2). Classes in no group are not used. The
    benchmark's ``n_classes`` is then the largest group's size.

    Args:
        labels: the class of each source image, ``(N_src,)``, any integer dtype (a tensor, NumPy array
            or list).
        groups: one list of source classes per task, in label order; a class may be in one group only.
        per_class: how many images of each class to draw without replacement (pairs ordered by task,
            class, draw); a class's images go to its one task, so a task has ``len(group) *
            per_class`` pairs. None uses every image of the groups' classes once (pairs ordered by
            task, then source order) and draws nothing.
        generator: the seeded CPU generator of the draws (needed when ``per_class`` is given).
        what: names the source in errors; ``unit`` names a class there.

    Raises:
        DataError: a class has fewer than ``per_class`` images (or none, with ``per_class=None``).
        ValueError: a class is in several groups.
    """
    labels = _as_labels(labels)
    flat = [int(c) for group in groups for c in group]
    if len(set(flat)) != len(flat):
        raise ValueError(f"a class appears in several groups: {groups}")
    task_of = torch.full((int(labels.max()) + 1 if labels.numel() else 0,), -1, dtype=torch.long)
    label_of = torch.full_like(task_of, -1)
    for t, group in enumerate(groups):
        for i, c in enumerate(group):
            if 0 <= c < task_of.numel():
                task_of[c], label_of[c] = t, i
    if per_class is None:
        chosen = torch.nonzero(task_of[labels] >= 0).squeeze(1) if labels.numel() else labels
        order = torch.argsort(task_of[labels[chosen]], stable=True)
        sources = chosen[order]
        for c in flat:
            _pool(labels, c, 1, what, unit)
    else:
        if generator is None:
            raise ValueError("class_groups draws per_class images: give it a seeded generator")
        sources = torch.cat(
            [
                pool[torch.randperm(pool.numel(), generator=generator)[:per_class]]
                for pool in (_pool(labels, c, per_class, what, unit) for c in flat)
            ]
        )
    return Pairs(sources, task_of[labels[sources]], label_of[labels[sources]])
