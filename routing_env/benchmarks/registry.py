"""Which benchmarks exist, by name: the three of the paper and any a user registers.

A loader is a function ``loader(data_root: Path, seed: int = 0, download: bool = True, **kwargs) ->
MTLBenchmark``, given as the function itself or as a ``"module:function"`` string. A string is imported
only when the benchmark is first loaded, so registering costs nothing, and worker processes (Gymnasium's
async vector env, SB3's SubprocVecEnv) can import it again by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

BenchmarkLoader = Callable[..., Any]  # (data_root, seed=0, download=True, **kwargs) -> MTLBenchmark

_LOADERS: dict[str, BenchmarkLoader | str] = {
    "mnist": "routing_env.benchmarks.mnist:load",
    "cifar": "routing_env.benchmarks.cifar:load",
    "min": "routing_env.benchmarks.mini_imagenet:load",
}


def register_benchmark(name: str, loader: BenchmarkLoader | str, *, overwrite: bool = False) -> None:
    """Make benchmark ``name`` loadable by ``RoutingConfig(benchmark=name)`` and the envs.

    Args:
        name: the benchmark's name (the env kwarg ``benchmark``).
        loader: ``loader(data_root, seed=0, download=True, **benchmark_kwargs) -> MTLBenchmark``, or its
            ``"module:function"`` path.
        overwrite: replace an existing registration (else registering a taken name is an error).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a benchmark name must be a non-empty string, got {name!r}")
    if isinstance(loader, str):
        if loader.count(":") != 1:
            raise ValueError(f"a loader path must read 'module:function', got {loader!r}")
    elif not callable(loader):
        raise TypeError(f"loader must be a function or a 'module:function' string, got {loader!r}")
    if name in _LOADERS and not overwrite and _LOADERS[name] != loader:
        raise ValueError(f"benchmark {name!r} is already registered; pass overwrite=True to replace it")
    _LOADERS[name] = loader


def is_registered(name: str) -> bool:
    return name in _LOADERS


def registered_benchmarks() -> list[str]:
    return sorted(_LOADERS)


def get_loader(name: str) -> BenchmarkLoader:
    """The loader function of ``name`` (importing it if it was registered by path)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {registered_benchmarks()}")
    loader = _LOADERS[name]
    if isinstance(loader, str):
        module, function = loader.split(":")
        try:
            loader = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"benchmark {name!r}: cannot import its loader {loader!r} ({e})") from e
    return loader
