"""Add a benchmark: Shapes-MTL, one binary "is this shape c?" task per class of a small labelled image set
kept as NumPy arrays (the worked example of docs/benchmarks.md; CI runs it).

    python -m examples.shapes_benchmark /tmp/shapes     # write a small demo data set there
    python train.py --env examples.shapes_benchmark:RoutingShapes-v0 --data-root /tmp/shapes --epochs 1

The data file is ``<data root>/shapes/shapes.npz`` with ``train_images`` / ``test_images`` ``(N, C, H, W)``
uint8 and ``train_labels`` / ``test_labels`` ``(N,)`` integers in ``[0, n_classes)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import routing_env
from routing_env.benchmarks import DataError, MTLBenchmark, one_vs_all, seeded_generator

FILE = Path("shapes") / "shapes.npz"
KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load(
    data_root: Path, seed: int = 0, download: bool = True, per_class: int = 20, test_per_class: int = 5
) -> MTLBenchmark:
    """Shapes-MTL: task ``c`` holds ``per_class`` training images of every class (label 1 for class
    ``c``, 0 otherwise) and ``test_per_class`` test images of every class, drawn with ``seed``.
    ``per_class`` and ``test_per_class`` are benchmark kwargs (``benchmark_kwargs={"per_class": 10}``)."""
    path = Path(data_root) / FILE
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; write a demo one: python -m examples.shapes_benchmark {data_root}"
        )
    with np.load(path) as data:
        if set(KEYS) - set(data.files):
            raise DataError(f"{path} lacks the arrays {sorted(set(KEYS) - set(data.files))}")
        arrays = {key: torch.from_numpy(data[key]) for key in KEYS}
    n_classes = int(arrays["train_labels"].max()) + 1
    generator = seeded_generator(seed)
    train = one_vs_all(arrays["train_labels"], per_class, generator, n_classes, what=f"{path} (train)")
    test = one_vs_all(arrays["test_labels"], test_per_class, generator, n_classes, what=f"{path} (test)")
    return MTLBenchmark(
        name="shapes",
        n_tasks=n_classes,
        n_classes=2,
        image_shape=tuple(arrays["train_images"].shape[1:]),
        train=train.split(arrays["train_images"]),
        test=test.split(arrays["test_images"]),
        task_names=tuple(f"shape {c}" for c in range(n_classes)),
        data_folder=path.parent,  # where the data was read (train.py prints it)
    )


# Registered when this module is imported: the env id names the benchmark "examples.shapes_benchmark:shapes",
# so worker processes (async vector envs, SubprocVecEnv) import this module too.
routing_env.register_benchmark("shapes", load, env_id="RoutingShapes-v0")


def write_demo_data(
    data_root: Path, n_classes: int = 4, train_per_class: int = 30, test_per_class: int = 8, seed: int = 0
) -> Path:
    """A small learnable data set: class ``c`` is a bright 6x6 square in quadrant ``c`` of a noisy 16x16
    grey image."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(n_classes), per_class))
        images = rng.integers(0, 64, size=(len(labels), 1, 16, 16), dtype=np.uint8)
        for i, c in enumerate(labels):
            row, col = 8 * (c // 2 % 2) + 1, 8 * (c % 2) + 1
            images[i, 0, row : row + 6, col : col + 6] = 200 + 10 * (c // 4)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    path = Path(data_root) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


if __name__ == "__main__":
    print(write_demo_data(Path(sys.argv[1])))
