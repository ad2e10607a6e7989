"""The env ids, and the lookups from an id (``"RoutingMIN-v0"`` or ``"module:Id"``) to its benchmark."""

from __future__ import annotations

import importlib

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

from routing_env.benchmarks import registry

ENTRY_POINT = "routing_env.env:RoutingEnv"
VECTOR_ENTRY_POINT = "routing_env.vector_env:RoutingVectorEnv"


def register_env(env_id: str, benchmark: str) -> None:
    """Register Gymnasium id ``env_id`` for benchmark ``benchmark`` (single and vector entry points)."""
    gym.register(
        id=env_id,
        entry_point=ENTRY_POINT,
        vector_entry_point=VECTOR_ENTRY_POINT,
        kwargs={"benchmark": benchmark},
    )


def register_benchmark(
    name: str, loader: registry.BenchmarkLoader | str, *, env_id: str | None = None, overwrite: bool = False
) -> None:
    """Add a benchmark, and optionally a Gymnasium id for it (see ``docs/benchmarks.md``).

    The loader is called as ``loader(data_root, seed=data_seed, download=download, **benchmark_kwargs)``
    and returns a :class:`routing_env.benchmarks.MTLBenchmark`:

    * ``data_root`` is a :class:`pathlib.Path`: the env kwarg ``data_root``, else ``$ROUTING_ENV_DATA``,
      else ``~/.cache/routing_env``. It may not exist yet. Data kept elsewhere may be read from
      elsewhere: set the benchmark's ``data_folder`` to where it was read, so ``train.py`` shows it.
    * ``seed`` (an int, the env kwarg ``data_seed``) seeds every draw of pairs (use
      ``seeded_generator(seed)``), so a seed gives the same pairs on every machine.
    * ``download`` (a bool): whether the loader may fetch missing data. A loader that cannot download
      accepts it and ignores it; when data is missing it raises ``DataError`` saying where to put which
      files (as MIN-MTL does).
    * ``benchmark_kwargs``: the env kwarg ``benchmark_kwargs`` (``train.py --benchmark-kwargs JSON``),
      as keyword arguments; the loader's signature says which it takes.

    Call ``register_benchmark`` in the module that defines the loader, and name env ids with that
    module (``"module:Id"``): the benchmark is then known as ``"module:name"``, and ``train.py``, sweeps
    and worker processes (async vector envs, ``SubprocVecEnv``) import ``module`` to find it. So
    ``module`` must be importable in each of those processes: an installed package, or a module on
    their ``sys.path`` (e.g. ``examples/shapes_benchmark.py`` beside ``train.py``); a loader defined in a
    script run as ``__main__`` is found only in that process.

    Args:
        name: the benchmark's name (the env kwarg ``benchmark``); no ``":"``.
        loader: the loader function, or its ``"module:function"`` path (imported when first loaded).
        env_id: also register this Gymnasium id (e.g. ``"MyBench-v0"``) for the benchmark.
        overwrite: replace an existing benchmark of that name (and the env id).
    """
    registry.register_benchmark(name, loader, overwrite=overwrite)
    if env_id is not None:
        if env_id in gym.registry and not overwrite:
            if gym.registry[env_id].kwargs.get("benchmark") != _qualified(name):
                raise ValueError(
                    f"env id {env_id!r} is already registered; pass overwrite=True to replace it"
                )
            return
        gym.registry.pop(env_id, None)
        register_env(env_id, _qualified(name))


def _qualified(name: str) -> str:
    module = registry.loader_module(name)
    return f"{module}:{name}" if module else name


def env_spec(env_id: str) -> EnvSpec:
    """The spec of ``env_id``; the ``"module:Id"`` form imports ``module`` first (as ``gymnasium.make``)."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise gym.error.Error(f"cannot import {module!r} for env id {env_id!r}: {e}") from e
    return gym.spec(name)


def benchmark_of(env_id: str) -> str:
    """The benchmark an env id (or a benchmark name) stands for; one clear error otherwise."""
    if registry.is_registered(env_id):
        return env_id
    known = f"registered routing env ids: {', '.join(routing_env_ids())} (or 'module:Id' of your own)"
    try:
        spec = env_spec(env_id)
    except gym.error.UnregisteredEnv as e:
        raise ValueError(f"unknown env id {env_id!r}; {known}") from e  # not Gymnasium's guess at a name
    except gym.error.Error as e:
        raise ValueError(f"unknown env id {env_id!r} ({e}); {known}") from e
    benchmark = spec.kwargs.get("benchmark")
    if spec.entry_point != ENTRY_POINT or benchmark is None:
        raise ValueError(f"{env_id!r} is not a routing env id; {known}")
    return benchmark


def routing_env_ids() -> list[str]:
    """Every registered id whose entry point is the routing env."""
    return sorted(i for i, s in gym.registry.items() if s.entry_point == ENTRY_POINT)


register_env("RoutingMNIST-v0", "mnist")
register_env("RoutingCIFAR-v0", "cifar")
register_env("RoutingMIN-v0", "min")
register_env("RoutingProbeRouter-v0", "probe_router")
register_env("RoutingProbeShare-v0", "probe_share")
register_env("RoutingProbeKinds-v0", "probe_kinds")
