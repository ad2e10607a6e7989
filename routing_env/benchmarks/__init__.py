"""Multi-task benchmarks built from real image data sets: MNIST-MTL, CIFAR-MTL and MIN-MTL, and any
benchmark a user registers (:func:`register_benchmark`; :func:`one_vs_all` and :func:`class_groups` build
the common task shapes from a labelled image set)."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from ..lazy import lazy_attributes
from .registry import BenchmarkLoader, get_loader, is_registered, register_benchmark, registered_benchmarks

_FROM_BASE = (
    "DATA_ENV_VAR",
    "DataError",
    "MTLBenchmark",
    "MTLSplit",
    "TorchvisionError",
    "atomic_download_dir",
    "resolve_data_root",
    "seeded_generator",
)


def load_benchmark(
    name: str, data_root: str | os.PathLike | None = None, seed: int = 0, download: bool = True, **kwargs: Any
) -> Any:
    """Load benchmark ``name`` from ``data_root`` (default: ``$ROUTING_ENV_DATA``, else a cache folder);
    ``kwargs`` go to its loader. The benchmark's ``data_folder`` is the data root where the loader left
    it None."""
    from .base import MTLBenchmark, resolve_data_root

    loader = get_loader(name)
    root = resolve_data_root(data_root)
    try:
        inspect.signature(loader).bind(root, seed=seed, download=download, **kwargs)
    except TypeError as e:
        raise TypeError(f"benchmark {name!r} does not take the benchmark_kwargs {kwargs}: {e}") from e
    benchmark = loader(root, seed=seed, download=download, **kwargs)
    if not isinstance(benchmark, MTLBenchmark):
        raise TypeError(
            f"the loader of benchmark {name!r} returned {type(benchmark).__name__}, not MTLBenchmark"
        )
    if benchmark.data_folder is None:
        benchmark = dataclasses.replace(benchmark, data_folder=root)
    return benchmark


_FROM_TASKS = ("Pairs", "class_groups", "one_vs_all")


# The data classes import torch; load them on first use so that registering stays light.
__getattr__ = lazy_attributes(
    __name__,
    {**dict.fromkeys(_FROM_BASE, f"{__name__}.base"), **dict.fromkeys(_FROM_TASKS, f"{__name__}.tasks")},
)


__all__ = [
    *_FROM_BASE,
    *_FROM_TASKS,
    "BenchmarkLoader",
    "get_loader",
    "is_registered",
    "load_benchmark",
    "register_benchmark",
    "registered_benchmarks",
]
