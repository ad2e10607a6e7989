"""Building an engine from a :class:`RoutingConfig`: the benchmark (loaded once per process), the pool,
the engine over the configured split, and the Gymnasium observation space."""

from __future__ import annotations

import json

import numpy as np
import torch
from gymnasium import spaces

from routing_env.benchmarks import (
    MTLBenchmark,
    MTLSplit,
    get_loader,
    load_benchmark,
    resolve_data_root,
    seeded_generator,
)
from routing_env.benchmarks.registry import resolve
from routing_env.config import RoutingConfig, resolve_device
from routing_env.engine import RoutingEngine
from routing_env.modules import (
    ModulePool,
    TensorType,
    lrn_pool_specs,
    routing_network_pool_specs,
    static_pool_specs,
)

_BENCHMARK_CACHE: dict[tuple, MTLBenchmark] = {}


def get_benchmark(config: RoutingConfig) -> MTLBenchmark:
    """The benchmark for ``config``, loaded once per process (CPU copy; engines move their split).

    Keyed by the loader itself and the benchmark kwargs too, so re-registering a benchmark under the same
    name, or asking for other settings of it, loads it anew.
    """
    root = resolve_data_root(config.data_root)
    kwargs = config.benchmark_kwargs or {}
    key = (
        resolve(config.benchmark),
        get_loader(config.benchmark),
        str(root),
        int(config.data_seed),
        json.dumps(kwargs, sort_keys=True, default=repr),
    )
    if key not in _BENCHMARK_CACHE:
        _BENCHMARK_CACHE[key] = load_benchmark(
            config.benchmark, root, seed=config.data_seed, download=config.download, **kwargs
        )
    return _BENCHMARK_CACHE[key]


def holdout(split: MTLSplit, fraction: float, data_seed: int, val: bool) -> MTLSplit:
    """The held-out ``fraction`` of ``split``'s pairs (``val``), or the rest; seeded by ``data_seed`` and
    stratified by task, so every task keeps the same share. Each part keeps the split's order."""
    generator = seeded_generator(data_seed + 2)
    keys = torch.rand(len(split), generator=generator)
    tasks = split.tasks.cpu()
    held = torch.zeros(len(split), dtype=torch.bool)
    for t in tasks.unique().tolist():
        members = (tasks == t).nonzero().flatten()
        n_val = max(1, round(fraction * len(members)))
        held[members[keys[members].argsort()[:n_val]]] = True
    return split.subset((held if val else ~held).nonzero().flatten())


def build_pool(config: RoutingConfig, benchmark: MTLBenchmark) -> ModulePool:
    """The pool ``config.pool`` names, shaped for ``benchmark``; ``config.seed`` seeds its weights."""
    widths = {"conv_channels": int(config.pool_conv_channels), "fc_width": int(config.pool_fc_width)}
    shape, n_classes = benchmark.image_shape, benchmark.n_classes
    if config.pool == "static":
        specs = static_pool_specs(shape, n_classes, benchmark.n_tasks, **widths)
    elif config.pool == "routing_network":
        specs = routing_network_pool_specs(shape, n_classes, int(config.duplicates), **widths)
    else:
        specs = lrn_pool_specs(shape, n_classes, int(config.duplicates), **widths)
    image = TensorType("image", tuple(benchmark.image_shape))
    # The original routing network routes every sample through all 5 layers: no PASS.
    return ModulePool(specs, image, seed=config.seed, allow_pass=config.pool != "routing_network")


def reseed_pool(pool: ModulePool, config: RoutingConfig, benchmark: MTLBenchmark, seed: int) -> None:
    """Give ``pool`` the initial weights ``config.seed = seed`` would have given it (in place, so an
    optimizer over its parameters keeps working)."""
    pool.load_state_dict(build_pool(config.replace(seed=int(seed)), benchmark).state_dict())


def make_engine(
    config: RoutingConfig,
    batch_size: int | None = None,
    pool: ModulePool | None = None,
    update_every: int | None = None,
) -> tuple[RoutingEngine, MTLBenchmark]:
    """Load the benchmark, build (or share) the pool and return an engine over ``config.split``."""
    resolve_device(config.device)  # a device that is not here fails before any data loads
    benchmark = get_benchmark(config)
    split = benchmark.test if config.split == "test" else benchmark.train
    if config.split != "test" and config.val_fraction > 0:
        split = holdout(split, config.val_fraction, config.data_seed, config.split == "val")
    if config.max_pairs is not None and config.max_pairs < len(split):
        # A seeded subset; sorted so a test subset is still walked in the split's order.
        keep = torch.randperm(len(split), generator=seeded_generator(config.data_seed + 1))
        split = split.subset(keep[: int(config.max_pairs)].sort().values)
    if pool is None:
        pool = build_pool(config, benchmark)
    oracle = None
    if benchmark.oracle is not None and config.pool == "lrn":
        oracle = benchmark.oracle.resolve(
            pool, config.max_depth
        )  # (T, K, D); one clear error if it cannot be
    elif config.loss_source == "oracle":
        raise ValueError(
            f"loss_source='oracle' needs a benchmark with an oracle routing and the LRN pool (a probe, "
            f"e.g. RoutingProbeRouter-v0); {benchmark.name!r} with pool={config.pool!r} has none"
        )
    engine = RoutingEngine(
        pool,
        split,
        config,
        batch_size=batch_size,
        update_every=update_every,
        hflip=benchmark.hflip,
        oracle_routes=oracle,
        n_tasks=benchmark.n_tasks,
    )
    return engine, benchmark


def observation_space(engine: RoutingEngine, benchmark: MTLBenchmark) -> spaces.Dict:
    """One instance's observation: image, task, route so far, step and action mask (all numpy)."""
    n_actions, depth = engine.pool.n_actions, engine.max_depth
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


def to_numpy(tensors: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Tensors as numpy arrays (one device-to-host copy per key), leaving out the keys in ``skip``."""
    return {k: v.detach().to("cpu", copy=True).numpy() for k, v in tensors.items() if k not in skip}
