"""The training images' augmentation: each image a shifted crop of its zero-padded copy, mirrored or not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from routing_env.augment import PAD, random_crop_flip


def crops_matching(image: torch.Tensor, out: torch.Tensor) -> set[tuple[int, int, bool]]:
    """The (row shift, column shift, mirrored) crops of ``image`` ``(C, H, W)`` that equal ``out``."""
    _, height, width = image.shape
    padded = F.pad(image, (PAD, PAD, PAD, PAD))
    found = set()
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded[:, dy : dy + height, dx : dx + width]
            for mirrored in (False, True):
                if torch.equal(crop.flip(-1) if mirrored else crop, out):
                    found.add((dy, dx, mirrored))
    return found


@pytest.mark.parametrize("flip", [True, False])
def test_each_image_is_a_shifted_crop_mirrored_only_with_flip(flip: bool) -> None:
    images = torch.randint(1, 256, (32, 2, 7, 9), dtype=torch.uint8)  # no zeros: padding shows
    out = random_crop_flip(images, torch.Generator().manual_seed(0), flip=flip)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
    found = [crops_matching(image, o) for image, o in zip(images, out, strict=True)]
    assert all(len(f) == 1 for f in found)  # random pixels: exactly one crop fits
    shifts = {(dy, dx) for f in found for dy, dx, _ in f}
    mirrored = [m for f in found for _, _, m in f]
    assert len(shifts) > 10  # the shift is drawn per image
    assert any(mirrored) == flip and (not flip or not all(mirrored))
    again = random_crop_flip(images, torch.Generator().manual_seed(0), flip=flip)
    assert torch.equal(out, again)  # seeded
