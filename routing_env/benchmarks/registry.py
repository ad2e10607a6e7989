"""Which benchmarks exist, by name: the three of the paper and any a user registers.

A loader is a function ``loader(data_root: Path, seed: int = 0, download: bool = True, **kwargs) ->
MTLBenchmark``, given as the function itself or as a ``"module:function"`` string. A string is imported
only when the benchmark is first loaded, so registering costs nothing.

A benchmark is named by its registered name, or as ``"module:name"``: ``module`` is imported first (it
registers ``name`` when imported), like Gymnasium's ``"module:Id"`` env ids. That form lets a worker
process that never imported the user's module (Gymnasium's async vector env, SB3's SubprocVecEnv with
``spawn``/``forkserver``) find the benchmark.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

BenchmarkLoader = Callable[..., Any]  # (data_root, seed=0, download=True, **kwargs) -> MTLBenchmark

_BUILT_IN = {
    "mnist": "routing_env.benchmarks.mnist:load",
    "cifar": "routing_env.benchmarks.cifar:load",
    "min": "routing_env.benchmarks.mini_imagenet:load",
    # Probes with a known best routing, built from MNIST (routing_env/benchmarks/probes.py).
    "probe_router": "routing_env.benchmarks.probes:load_router",
    "probe_share": "routing_env.benchmarks.probes:load_share",
    "probe_kinds": "routing_env.benchmarks.probes:load_kinds",
}
_LOADERS: dict[str, BenchmarkLoader | str] = dict(_BUILT_IN)


def register_benchmark(name: str, loader: BenchmarkLoader | str, *, overwrite: bool = False) -> None:
    """Make benchmark ``name`` loadable by ``RoutingConfig(benchmark=name)`` and the envs (users call
    :func:`routing_env.register_benchmark`, which also registers an env id and documents the loader).

    Args:
        name: the benchmark's name (the env kwarg ``benchmark``); no ``":"``.
        loader: ``loader(data_root: Path, seed: int = 0, download: bool = True, **benchmark_kwargs) ->
            MTLBenchmark``, or its ``"module:function"`` path.
        overwrite: replace an existing registration (else registering a taken name for another loader
            is an error; the same loader again, e.g. from a re-imported module, is fine).
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a benchmark name must be a non-empty string without ':', got {name!r}")
    if isinstance(loader, str):
        if loader.count(":") != 1:
            raise ValueError(f"a loader path must read 'module:function', got {loader!r}")
    elif not callable(loader):
        raise TypeError(f"loader must be a function or a 'module:function' string, got {loader!r}")
    if name in _LOADERS and not overwrite and loader_path(_LOADERS[name]) != loader_path(loader):
        raise ValueError(f"benchmark {name!r} is already registered; pass overwrite=True to replace it")
    _LOADERS[name] = loader


def loader_path(loader: BenchmarkLoader | str) -> str:
    """``"module:function"`` of a loader (its identity: a re-imported module's function is the same)."""
    if isinstance(loader, str):
        return loader
    return f"{getattr(loader, '__module__', '?')}:{getattr(loader, '__qualname__', repr(loader))}"


def loader_module(name: str) -> str | None:
    """The module a worker process must import to find benchmark ``name`` (where its loader lives), or
    None where there is none to import (built in, or defined in ``__main__``)."""
    module = loader_path(_LOADERS[resolve(name)]).partition(":")[0]
    return None if module in ("__main__", "?") or name in _BUILT_IN else module


def resolve(name: str) -> str:
    """The registered name ``name`` stands for: itself, or for ``"module:name"`` the name after
    importing ``module``. One clear error otherwise."""
    if name in _LOADERS:
        return name
    module, _, bare = str(name).rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"benchmark {name!r}: cannot import {module!r} ({e})") from e
        if bare in _LOADERS:
            return bare
        raise ValueError(f"benchmark {name!r}: importing {module!r} did not register {bare!r}")
    raise ValueError(f"unknown benchmark {name!r}; known: {registered_benchmarks()}")


def is_registered(name: str) -> bool:
    try:
        resolve(name)
    except ValueError:
        return False
    return True


def registered_benchmarks() -> list[str]:
    return sorted(_LOADERS)


def get_loader(name: str) -> BenchmarkLoader:
    """The loader function of ``name`` (importing it if it was registered by path)."""
    name = resolve(name)
    loader = _LOADERS[name]
    if isinstance(loader, str):
        module, function = loader.split(":")
        try:
            loader = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"benchmark {name!r}: cannot import its loader {loader!r} ({e})") from e
    return loader
