"""The env's configuration: every keyword argument a ``Routing*-v0`` id takes, with its one default.

Importing this module imports neither torch nor any data: train.py checks its flags against these
dataclasses before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

Split = Literal["train", "val", "test"]
Precision = Literal["fp32", "bf16"]
BonusScope = Literal["pool", "task", "kind"]  # the collapse bonus's counts (routing_env/rewards.py)
Pool = Literal["lrn", "static", "routing_network"]
# Where an episode's loss comes from: the networks the route builds ("modules"), or, on a probe with an oracle
# routing, the route alone ("oracle": the router-alone probe, routing_env/oracle_route.py oracle_losses).
LossSource = Literal["modules", "oracle"]
# How the chosen modules run (routing_env/modules.py): "dense" (every duplicate of a bank on every sample,
# as one wide layer), "gathered" / "gathered_nhwc" (convs as one grouped conv through per-sample weights,
# linears dense), "patches" (convs as one batched matrix product over unfolded patches, linears dense),
# "grouped_gemm" (convs as one grouped matrix product per bank over the patches of samples sorted by
# duplicate, bf16), "grouped" (one call per chosen duplicate, a host sync per bank), "compact" (each
# bank on only its sub-batch, one host sync). "auto": routing_env/network.py's AUTO_DISPATCH.
Dispatch = Literal[
    "auto", "dense", "gathered", "gathered_nhwc", "patches", "grouped_gemm", "grouped", "compact"
]
SPLITS, PRECISIONS, BONUS_SCOPES, POOLS, DISPATCH_MODES, LOSS_SOURCES = (
    typing.get_args(t) for t in (Split, Precision, BonusScope, Pool, Dispatch, LossSource)
)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class RoutingConfig:
    """Every keyword argument of ``gymnasium.make("Routing*-v0", ...)``.

    Attributes:
        benchmark: a registered benchmark (``"mnist"``, ``"cifar"``, ``"min"``; set by the env id), or
            ``"module:name"``: import ``module`` first (it registers ``name``).
        benchmark_kwargs: keyword arguments for the benchmark's loader (a registered benchmark's own
            settings); part of what identifies the loaded data.
        data_root: data folder; default ``$ROUTING_ENV_DATA``, else ``~/.cache/routing_env``.
        download: let torchvision download MNIST / CIFAR-100 when missing.
        data_seed: seeds the benchmark's draws (which images form the pairs); fixed across runs by default.
        split: ``"train"`` (shuffled, pool trained), ``"val"`` (the held-out ``val_fraction`` of the
            training pairs, in order, pool frozen) or ``"test"`` (in order, pool frozen).
        val_fraction: hold out this share of the training pairs (seeded by ``data_seed``) as the ``"val"``
            split; ``"train"`` then walks the rest. 0: train on every training pair (the paper).
        max_pairs: use only this many pairs of the split (a seeded subset; quick runs and tests).
        duplicates: copies of each kind of module in the pool (>= 1).
        max_depth: steps per episode: an input module, ``max_depth - 2`` hidden steps, a head (>= 2).
        batch_size: episodes per pool update and per collapse-bonus count.
        bonus_weight: weight of the collapse bonus; 0 disables it.
        bonus_warmup: passes over the split whose episodes get no bonus (the modules specialise first).
        bonus_until: not in the paper: the pass over the split from which episodes get no bonus again
            (the routes the bonus spread out consolidate); None: the bonus stays on.
        bonus_scope: whose usage counts the collapse bonus compares (``routing_env/rewards.py``):
            ``"pool"`` (the paper, eq. 6: every module of the pool; optimal when all are used equally,
            which with as many tasks as duplicates means disjoint routes), ``"task"`` (not in the paper:
            the routes of the episode's own task only, so a task spreads over duplicates without being
            pushed off the modules other tasks use) or ``"kind"`` (not in the paper: min and max within
            each kind of module).
        task_heads: not in the paper: a task ends only in heads of its own, as the static network's do
            (with as many duplicates as tasks, head duplicate ``t`` of each head kind for task ``t``;
            :class:`routing_env.rules.RouteRules`): the action mask hides the other tasks' heads, so a
            head never has to serve two tasks' labels and the router chooses only the modules before it.
        invalid_action_penalty: reward cost of an action the mask forbids.
        lr: Adam learning rate of the pool.
        lr_decay: factor on the pool's learning rate after every pass over the split.
        train_modules: train the pool; default True for ``split="train"``, False for ``"test"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: seeds the pool's initial weights and the order episodes walk the data.
        dispatch: how the chosen modules run: ``"auto"`` (the device's default), ``"dense"``,
            ``"gathered"``, ``"gathered_nhwc"``, ``"patches"``, ``"grouped_gemm"``, ``"compact"`` or
            ``"grouped"`` (see
            ``routing_env/modules.py``).
        pool: ``"lrn"`` (the paper's pool), ``"static"`` (one fixed network with a head per task, routed
            by ``max_depth=5``; the static baseline) or ``"routing_network"`` (Rosenbaum et al. 2017: a
            fixed conv trunk, then 3 routed FC depths of ``duplicates`` modules each; ``max_depth=5``).
        freeze_unused: keep the weights and Adam state of a module no episode of an update used (the
            paper's rule; each module is its own Adam); False: one Adam over the pool, which moves unused
            modules through their moments.
        cuda_graph: on a GPU, replay fixed-shape programs as CUDA graphs: the pool's training step (a
            sync-free dispatch mode) and, for train.py's router algorithms, a batch's rollout and each PPO
            minibatch update (False runs the same programs eagerly).
        compile: torch.compile (inductor) the fixed-shape programs: the pool's forward and, for train.py's
            router algorithms, the router's step of a rollout and each PPO minibatch's losses (CUDA graphs
            replay the compiled kernels); where compiling fails, one warning line and they run eagerly.
        precision: the pool's arithmetic on a GPU: ``"fp32"`` or ``"bf16"`` (autocast; weights, Adam
            and the loss stay fp32).
        augment: not in the paper: random crops (4-pixel padding) of training images, and horizontal flips
            where the benchmark allows them (not MNIST's digits).
        weight_decay: not in the paper: decoupled weight decay of the pool's modules (AdamW's), applied
            where a module is updated.
        module_dropout: not in the paper: dropout rate on every hidden module's output in training.
        pool_conv_channels: channels of every conv module of the pool (the paper: 32); the probes use
            small modules, where sharing one between conflicting tasks or kinds of instance costs.
        pool_fc_width: width of every hidden FC module of the pool (the paper: 256).
        loss_source: ``"modules"`` (the paper: the loss of the network the route builds) or ``"oracle"``
            (the router-alone probe: no module runs or trains; the loss is the fraction of steps where the
            route differs from the oracle route of the instance's task and kind, each step's share charged
            at that step in the per-step rewards, and a route is "correct" when it is the oracle route;
            needs a benchmark with an oracle routing).
    """

    benchmark: str = "mnist"
    benchmark_kwargs: dict[str, Any] | None = None
    data_root: str | os.PathLike | None = None
    download: bool = True
    data_seed: int = 0
    split: Split = "train"
    val_fraction: float = 0.0
    max_pairs: int | None = None
    duplicates: int = 10
    max_depth: int = 6
    batch_size: int = 128
    bonus_weight: float = 1.0
    bonus_warmup: int = 0
    bonus_until: int | None = None
    bonus_scope: BonusScope = "pool"
    task_heads: bool = False
    invalid_action_penalty: float = 1.0
    lr: float = 1e-4
    lr_decay: float = 0.97
    train_modules: bool | None = None
    device: str = "auto"
    seed: int | None = None
    dispatch: Dispatch = "auto"
    pool: Pool = "lrn"
    freeze_unused: bool = True
    cuda_graph: bool = True
    compile: bool = False
    precision: Precision = "fp32"
    augment: bool = False
    weight_decay: float = 0.0
    module_dropout: float = 0.0
    pool_conv_channels: int = 32
    pool_fc_width: int = 256
    loss_source: LossSource = "modules"

    def __post_init__(self) -> None:
        from routing_env.benchmarks.registry import resolve

        resolve(self.benchmark)  # unknown benchmark: one error naming the known ones
        if self.benchmark_kwargs is not None:
            if not isinstance(self.benchmark_kwargs, dict) or not all(
                isinstance(k, str) for k in self.benchmark_kwargs
            ):
                raise ValueError(
                    f"benchmark_kwargs must be a dict with str keys, got {self.benchmark_kwargs!r}"
                )
        check_choices(self)
        if not 0 <= self.val_fraction < 1 or not 0 <= self.module_dropout < 1 or not self.weight_decay >= 0:
            raise ValueError(
                "need 0 <= val_fraction < 1, 0 <= module_dropout < 1 and weight_decay >= 0, got "
                f"{self.val_fraction}, {self.module_dropout}, {self.weight_decay}"
            )
        if self.pool != "lrn" and int(self.max_depth) != 5:
            # The static network and the routing network have exactly 5 layers: no other depth completes.
            raise ValueError(
                f"pool={self.pool!r} builds 5-layer networks: it needs max_depth=5, got {self.max_depth}"
            )
        for field in dataclasses.fields(self):  # a switch given as "yes" or 2 would read as on
            if field.type == "bool" and getattr(self, field.name) not in (True, False):
                raise ValueError(f"{field.name} must be True or False, got {getattr(self, field.name)!r}")
        _at_least("duplicates", self.duplicates, 1)
        _at_least("max_depth", self.max_depth, 2)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("pool_conv_channels", self.pool_conv_channels, 1)
        _at_least("pool_fc_width", self.pool_fc_width, 1)
        _at_least("bonus_warmup", self.bonus_warmup, 0)
        if self.bonus_until is not None:
            _at_least("bonus_until", self.bonus_until, self.bonus_warmup + 1)
        if self.max_pairs is not None:
            _at_least("max_pairs", self.max_pairs, 1)
        if not self.bonus_weight >= 0:
            raise ValueError(f"bonus_weight must be >= 0, got {self.bonus_weight}")
        if not (self.lr > 0 and 0 < self.lr_decay <= 1):
            raise ValueError(f"need lr > 0 and 0 < lr_decay <= 1, got lr={self.lr}, lr_decay={self.lr_decay}")
        if not _DEVICE.match(str(self.device)):
            raise ValueError(f"unknown device {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.train_modules is None:
            self.train_modules = self.split == "train"

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RoutingConfig:
        """Like the constructor, but an unknown kwarg gets one error that lists the known ones."""
        return from_known_kwargs(cls, kwargs, "env kwargs")

    @property
    def sequential(self) -> bool:
        """Walk the split in order (evaluation) rather than in seeded shuffled passes."""
        return self.split != "train"

    def replace(self, **changes: Any) -> RoutingConfig:
        """A copy with ``changes``; ``train_modules`` follows a changed ``split`` unless given."""
        if "split" in changes and "train_modules" not in changes:
            changes["train_modules"] = None
        return dataclasses.replace(self, **changes)


def from_known_kwargs(cls: type, kwargs: dict[str, Any], what: str) -> Any:
    """``cls(**kwargs)`` for a dataclass, with one error listing the known fields for unknown keywords."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return cls(**kwargs)


def resolve_device(device: str) -> Any:
    """``"auto"`` -> CUDA if available, else CPU; anything else must name a usable torch device."""
    import torch

    if not _DEVICE.match(str(device)):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal[...]`` annotation allows (with None for ``Literal[...] | None``); None for
    any other annotation."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    args = typing.get_args(annotation)
    for arg in args:
        if typing.get_origin(arg) is Literal:
            return (*typing.get_args(arg), *((None,) if type(None) in args else ()))
    return None


@functools.cache
def _choice_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    choices = {f.name: literal_choices(hints[f.name]) for f in dataclasses.fields(cls)}
    return {name: values for name, values in choices.items() if values is not None}


def check_choices(instance: Any) -> None:
    """One error for a dataclass field typed ``Literal[...]`` that holds another value."""
    for name, choices in _choice_fields(type(instance)).items():
        value = getattr(instance, name)
        if value not in choices:
            allowed = tuple(c for c in choices if c is not None)
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) and int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
