"""MNIST-MTL: ten one-vs-all binary tasks built from MNIST, as in the LRN paper.

Task ``t`` asks "is this digit ``t``?" (label 1 = yes, 0 = no). Its training set holds 1,000 images of
digit ``t`` (positives) and 1,000 images of each of the nine other digits (negatives): 10,000 pairs per
task, 100,000 in all. The images are drawn without replacement for each (task, digit) from MNIST's
60,000-image training file with a seeded generator; the draws of different tasks are independent, so one
image may appear in several tasks (it is stored once).

The test set holds 200 pairs per task drawn the same way from MNIST's 10,000-image test file (never used
for training): 20 images of each digit, i.e. 20 positives and 180 negatives. That is the training set's
1:9 ratio, so a model that always answers "no" already scores 90 % accuracy on every task: that is why
balanced accuracy (the mean of the per-label recalls) is reported next to plain accuracy.

Data layout (torchvision's): ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import (
    DataError,
    MTLBenchmark,
    atomic_download_dir,
    download_failure,
    import_torchvision,
    seeded_generator,
)
from .tasks import one_vs_all

NAME = "mnist"
N_DIGITS = 10
TRAIN_PER_DIGIT = 1000  # per task and digit: 1,000 positives, 9 x 1,000 negatives
TEST_PER_DIGIT = 20  # per task and digit: 20 positives, 9 x 20 negatives

FOLDER = "MNIST"
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
LAYOUT = "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (torchvision's MNIST layout)"


def _error(root: Path, cause: str) -> DataError:
    return DataError(f"MNIST data in {root / FOLDER} is unusable: {cause}. Expected layout: {LAYOUT}.")


def _ensure_files(root: Path, download: bool) -> None:
    """Download MNIST into ``root`` when it is absent (and allowed); raise DataError if files are missing."""
    raw = root / FOLDER / "raw"
    missing = [name for name in RAW_FILES if not (raw / name).is_file()]
    if not missing:
        return
    if not download:
        raise _error(root, f"missing {', '.join(missing)} (download=False)")
    if (root / FOLDER).exists():
        # Never write into a folder the user made: the atomic move below only creates a new one.
        raise _error(root, f"missing {', '.join(missing)}; delete {root / FOLDER} to download it again")
    datasets = import_torchvision("torchvision.datasets")
    try:
        with atomic_download_dir(root, FOLDER) as scratch:
            for train in (True, False):
                datasets.MNIST(str(scratch), train=train, download=True)
    except Exception as exc:  # network, disk and format errors all mean the same thing to the caller
        raise _error(root, download_failure(exc)) from exc


def _read(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one MNIST file pair, validated."""
    datasets = import_torchvision("torchvision.datasets")
    try:
        ds = datasets.MNIST(str(root), train=train, download=False)
        images, labels = ds.data, ds.targets
    except Exception as exc:  # torchvision reports truncation as AssertionError, RuntimeError, ...
        split = "train" if train else "t10k"
        raise _error(root, f"cannot read the {split} files ({type(exc).__name__}: {exc})") from exc
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (28, 28):
        raise _error(root, f"images have shape {tuple(images.shape)} and dtype {images.dtype}")
    if labels.shape != images.shape[:1]:
        raise _error(root, f"{images.shape[0]} images but {labels.shape[0]} labels")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= N_DIGITS):
        raise _error(root, "labels outside 0..9")
    return images, labels


def load(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
    """Build MNIST-MTL from ``data_root`` (downloading MNIST there if it is absent and ``download``)."""
    root = Path(data_root)
    _ensure_files(root, download)
    generator = seeded_generator(seed)
    splits = []
    for train, per_digit in ((True, TRAIN_PER_DIGIT), (False, TEST_PER_DIGIT)):
        images, digit_labels = _read(root, train)
        what = "the training file" if train else "the test file"
        try:
            pairs = one_vs_all(digit_labels, per_digit, generator, N_DIGITS, what=what, unit="digit")
        except DataError as e:
            raise _error(root, str(e)) from e
        splits.append(pairs.split(images.unsqueeze(1)))
    return MTLBenchmark(
        name=NAME,
        n_tasks=N_DIGITS,
        n_classes=2,
        image_shape=(1, 28, 28),
        train=splits[0],
        test=splits[1],
        task_names=tuple(f"digit {d}" for d in range(N_DIGITS)),
        hflip=False,
        data_folder=root / FOLDER,
    )
