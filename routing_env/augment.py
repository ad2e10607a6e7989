"""Data augmentation of a batch of training images, on the device (not in the paper; ``augment=True``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4  # pixels of zero padding before the random crop


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Each image shifted by up to ``PAD`` pixels in each direction (a crop of its zero-padded copy) and,
    with ``flip``, mirrored left-right with probability 1/2.

    Args:
        images: ``(B, C, H, W)`` uint8.
        generator: the random generator (on the images' device).
        flip: also flip (only where a mirrored image keeps its label).

    Returns:
        ``(B, C, H, W)`` uint8.
    """
    batch, _, height, width = images.shape
    dev = images.device
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy, dx = torch.randint(0, 2 * PAD + 1, (2, batch, 1), device=dev, generator=generator)
    grid = torch.arange(max(height, width), device=dev)
    rows = grid[:height] + dy  # (B, H)
    cols = grid[:width] + dx  # (B, W)
    if flip:  # a mirrored crop reads its columns right to left: the flip costs no pass over the images
        mirror = torch.rand(batch, device=dev, generator=generator) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(-1), cols)
    out = padded[torch.arange(batch, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)
