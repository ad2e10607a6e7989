"""Env configuration (the kwargs every ``Routing*-v0`` id takes), and building an engine from it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from routing_env.benchmarks import BENCHMARKS, MTLBenchmark, load_benchmark, resolve_data_root
from routing_env.benchmarks.base import seeded_generator
from routing_env.engine import EngineConfig, RoutingEngine, resolve_device
from routing_env.modules import (
    ModulePool,
    TensorType,
    lrn_pool_specs,
    routing_network_pool_specs,
    static_pool_specs,
)

SPLITS = ("train", "test")
POOLS = ("lrn", "static", "routing_network")


@dataclass
class RoutingConfig:
    """Every keyword argument of ``gymnasium.make("Routing*-v0", ...)``.

    Attributes:
        benchmark: ``"mnist"``, ``"cifar"`` or ``"min"`` (set by the env id).
        data_root: data folder; default ``$ROUTING_ENV_DATA``, else ``~/.cache/routing_env``.
        download: let torchvision download MNIST / CIFAR-100 when missing.
        data_seed: seeds the benchmark's draws (which images form the pairs); fixed across runs by default.
        split: ``"train"`` (shuffled, pool trained) or ``"test"`` (in order, pool frozen).
        max_pairs: use only this many pairs of the split (a seeded subset; quick runs and tests).
        duplicates: copies of each kind of module in the pool (>= 1).
        max_depth: steps per episode (>= 2).
        batch_size: episodes per pool update and per collapse-bonus count.
        bonus_weight: weight of the collapse bonus; 0 disables it.
        invalid_action_penalty: reward cost of an action the mask forbids.
        lr: Adam learning rate of the pool; lr_decay: factor after every pass over the split.
        train_modules: train the pool; default True for ``split="train"``, False for ``"test"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        seed: seeds the pool's initial weights and the order episodes walk the data.
        dispatch: ``"auto"`` (dense on CUDA, compact on CPU), ``"dense"``, ``"compact"`` or ``"grouped"``.
        pool: ``"lrn"`` (the paper's pool) or ``"static"`` (one fixed network with a head per task,
            routed by ``max_depth=5``; the static baseline) or ``"routing_network"`` (Rosenbaum et al.
            2017: a fixed conv trunk, then 3 routed FC depths of ``duplicates`` modules each; needs
            ``max_depth=5``; see :func:`routing_env.modules.routing_network_pool_specs`).
    """

    benchmark: str = "mnist"
    data_root: str | os.PathLike | None = None
    download: bool = True
    data_seed: int = 0
    split: str = "train"
    max_pairs: int | None = None
    duplicates: int = 10
    max_depth: int = 6
    batch_size: int = 128
    bonus_weight: float = 1.0
    invalid_action_penalty: float = 1.0
    lr: float = 1e-4
    lr_decay: float = 0.97
    train_modules: bool | None = None
    device: str = "auto"
    seed: int | None = None
    dispatch: str = "auto"
    pool: str = "lrn"

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; known: {sorted(BENCHMARKS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool == "static" and int(self.max_depth) != 5:
            # FIX: the static network has exactly 5 layers; any other depth admits no complete network.
            raise ValueError(
                f"pool='static' is one fixed 5-layer network: it needs max_depth=5, got {self.max_depth}"
            )
        if self.pool == "routing_network" and int(self.max_depth) != 5:
            raise ValueError(
                f"pool='routing_network' builds 5-layer networks: it needs max_depth=5, got {self.max_depth}"
            )
        if int(self.duplicates) < 1:
            raise ValueError(f"duplicates must be >= 1, got {self.duplicates}")
        if self.max_pairs is not None and int(self.max_pairs) < 1:
            raise ValueError(f"max_pairs must be >= 1 or None, got {self.max_pairs}")
        if self.train_modules is None:
            self.train_modules = self.split == "train"
        resolve_device(self.device)  # fail now, with a clear message, on a bad device
        self.engine_config()  # validates max_depth, batch_size, bonus_weight, lr, dispatch

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RoutingConfig:
        """Like the constructor, but an unknown kwarg gets one error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown env kwargs {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def engine_config(self, batch_size: int | None = None, **overrides: Any) -> EngineConfig:
        return EngineConfig(
            max_depth=int(self.max_depth),
            batch_size=int(batch_size or self.batch_size),
            bonus_weight=float(self.bonus_weight),
            invalid_action_penalty=float(self.invalid_action_penalty),
            lr=float(self.lr),
            lr_decay=float(self.lr_decay),
            train_modules=bool(self.train_modules),
            sequential=self.split == "test",
            dispatch=self.dispatch,
            **overrides,
        )


_BENCHMARK_CACHE: dict[tuple, MTLBenchmark] = {}


def get_benchmark(config: RoutingConfig) -> MTLBenchmark:
    """The benchmark for ``config``, loaded once per process (CPU copy; engines move their split)."""
    root = resolve_data_root(config.data_root)
    key = (config.benchmark, str(root), int(config.data_seed))
    if key not in _BENCHMARK_CACHE:
        _BENCHMARK_CACHE[key] = load_benchmark(
            config.benchmark, root, seed=config.data_seed, download=config.download
        )
    return _BENCHMARK_CACHE[key]


def build_pool(config: RoutingConfig, benchmark: MTLBenchmark) -> ModulePool:
    if config.pool == "static":
        specs = static_pool_specs(benchmark.image_shape, benchmark.n_classes, benchmark.n_tasks)
    elif config.pool == "routing_network":
        specs = routing_network_pool_specs(benchmark.image_shape, benchmark.n_classes, int(config.duplicates))
    else:
        specs = lrn_pool_specs(benchmark.image_shape, benchmark.n_classes, int(config.duplicates))
    image = TensorType("image", tuple(benchmark.image_shape))
    # The original routing network routes every sample through all 5 layers: no PASS.
    return ModulePool(specs, image, seed=config.seed, allow_pass=config.pool != "routing_network")


def make_engine(
    config: RoutingConfig,
    batch_size: int | None = None,
    pool: ModulePool | None = None,
    **engine_overrides: Any,
) -> tuple[RoutingEngine, MTLBenchmark]:
    """Load the benchmark, build (or share) the pool and return an engine over ``config.split``."""
    benchmark = get_benchmark(config)
    split = benchmark.train if config.split == "train" else benchmark.test
    if config.max_pairs is not None and config.max_pairs < len(split):
        # A seeded subset; sorted so a test subset is still walked in the split's order.
        keep = torch.randperm(len(split), generator=seeded_generator(config.data_seed + 1))
        split = split.subset(keep[: int(config.max_pairs)].sort().values)
    if pool is None:
        pool = build_pool(config, benchmark)
    engine = RoutingEngine(
        pool,
        split,
        config.engine_config(batch_size, **engine_overrides),
        device=config.device,
        seed=config.seed,
    )
    return engine, benchmark


def observation_space(engine: RoutingEngine, benchmark: MTLBenchmark) -> spaces.Dict:
    """One instance's observation: image, task, route so far, step and action mask (all numpy)."""
    n_actions, depth = engine.pool.n_actions, engine.config.max_depth
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, shape=tuple(benchmark.image_shape), dtype=np.uint8),
            "task": spaces.Discrete(benchmark.n_tasks),
            # action ids so far; n_actions marks a step not taken yet
            "route": spaces.MultiDiscrete(np.full(depth, n_actions + 1, dtype=np.int64)),
            # depth itself is the terminal observation's step
            "step": spaces.Discrete(depth + 1),
            "action_mask": spaces.MultiBinary(n_actions),
        }
    )


def observation_to_numpy(obs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The engine's batched observation as numpy arrays (one device-to-host copy per key)."""
    return {key: value.detach().to("cpu", copy=True).numpy() for key, value in obs.items()}


def final_info_to_numpy(final: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        key: value.detach().to("cpu", copy=True).numpy() for key, value in final.items() if key != "reward"
    }
