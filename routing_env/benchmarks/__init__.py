"""Multi-task benchmarks built from real image data sets: MNIST-MTL, CIFAR-MTL and MIN-MTL."""

from __future__ import annotations

import os

from . import cifar, mini_imagenet, mnist
from .base import (
    DATA_ENV_VAR,
    BenchmarkLoader,
    DataError,
    MTLBenchmark,
    MTLSplit,
    atomic_download_dir,
    resolve_data_root,
    seeded_generator,
)

BENCHMARKS: dict[str, BenchmarkLoader] = {
    "mnist": mnist.load,
    "cifar": cifar.load,
    "min": mini_imagenet.load,
}


def load_benchmark(
    name: str, data_root: str | os.PathLike | None = None, seed: int = 0, download: bool = True
) -> MTLBenchmark:
    """Load benchmark ``name`` from ``data_root`` (default: ``$ROUTING_ENV_DATA``, else a cache folder)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name](resolve_data_root(data_root), seed=seed, download=download)


__all__ = [
    "BENCHMARKS",
    "DATA_ENV_VAR",
    "BenchmarkLoader",
    "DataError",
    "MTLBenchmark",
    "MTLSplit",
    "atomic_download_dir",
    "load_benchmark",
    "resolve_data_root",
    "seeded_generator",
]
