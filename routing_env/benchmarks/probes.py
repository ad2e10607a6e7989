"""Probe benchmarks: small multi-task problems built from MNIST whose best routing is known by construction.

Each probe's images are MNIST digits under known transformations (applied once, as tensors, when the
benchmark loads), and each carries an oracle routing (:class:`routing_env.oracle_route.OracleRouting`): a
route per (task, kind of instance) through the LRN pool. A 2-core CPU checks in minutes whether the router
finds it (``scripts/probes.py``; docs/results.md, "Probes"):

* **router alone** (``probe_router``, ``RoutingProbeRouter-v0``): 2 tasks x 2 kinds (digits as they are, and
  inverted: the kind shows in the image's mean intensity). Run with ``loss_source="oracle"``
  (``--preset probe_router``): no module runs or trains, an episode's loss is the fraction of steps where
  the route differs from its (task, kind)'s oracle route, so the best route per task and per kind is
  known and the probe tests PPO, the router and the masking alone.
* **share or separate** (``probe_share``, ``RoutingProbeShare-v0``): 4 tasks: two on plain digits (the same
  features: sharing a trunk gives each twice the data) and two on digits under two fixed pixel
  permutations (features that conflict with the plain digits' and with each other's in small modules:
  each is best on a trunk of its own). The oracle shares trunk 0 between tasks 0 and 1 and gives tasks 2
  and 3 trunks 1 and 2; every task has its own head.
* **per instance** (``probe_kinds``, ``RoutingProbeKinds-v0``): 2 tasks whose instances come in 3 kinds,
  in the spirit of the compositional recursive learner (Chang et al., ICLR 2019): plain digits, and digits
  with a white 4x4 square in the top-left (``mark_a``) or top-right (``mark_b``) corner. Each kind also
  maps the digits to classes of its own (:func:`kind_class_maps`: kind 0 keeps the digit, any two kinds
  give every digit different classes), and task ``t`` labels class ``c`` as ``(c + t) % 10``. The oracle
  gives every kind its own trunk (both tasks share it) and every task its own head; the static network
  shares one trunk between all kinds. Why the oracle is the best routing of this pool: a module that
  serves two kinds sees nearly the same image (the digit; only the 16 marker pixels differ) with a
  different class to produce, so it must compute a kind x digit interaction (XOR-like) from the marker,
  which small modules do poorly; a trunk per kind only maps its own digits to its own classes, and every
  (task, kind)'s trunk is shared by both tasks (the class does not depend on the task) and every head by
  all kinds (the task adds the same shift to every kind's class), so no module of the oracle serves pairs
  whose targets conflict, and each gets all the pairs it can share. (A route that shares only the first
  conv layer between kinds, the rest per kind, may match it; none can avoid the conflict better.) The old
  construction (``kinds=("identity", "invert", "permute_a"), relabel=False``: kinds that change the image
  only: a shared trunk fit every kind) left the oracle within noise of the static route (issue 27).

Every task is a 10-way digit problem; task ``t`` labels digit ``d`` as ``(d + t) % 10`` (the per-instance
probe: its kind's class of ``d``), so tasks on the same images need heads of their own. Pairs are drawn per
(task, kind, digit) without replacement from MNIST's training file (``per_digit`` each) and its test file
(``test_per_digit``), seeded by ``seed``; a pair's image is stored transformed (its own row). The
permutations and the kinds' classes are fixed (their own seeds), the same for every data seed and split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from routing_env.oracle_route import PASS, OracleRouting, Step

from . import mnist
from .base import DataError, MTLBenchmark, MTLSplit, seeded_generator

N_DIGITS = 10
# The transformations a probe's kinds of instance apply to a (N, 28, 28) uint8 batch of digits.
TRANSFORMS = ("identity", "invert", "rot90", "rot180", "permute_a", "permute_b", "mark_a", "mark_b")
_PERMUTATION_SEEDS = {"permute_a": 1234, "permute_b": 5678}
# A marker kind: the digit as it is with a white 4x4 square in a corner MNIST leaves black (rows, cols).
_MARKERS = {"mark_a": (slice(0, 4), slice(0, 4)), "mark_b": (slice(0, 4), slice(24, 28))}
_CLASS_CYCLE_SEED = 4321  # the cycle of kind_class_maps


def transform(images: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` ``(N, 28, 28)`` uint8 under transformation ``name`` (one of :data:`TRANSFORMS`)."""
    if name == "identity":
        return images
    if name == "invert":
        return 255 - images
    if name in ("rot90", "rot180"):
        return torch.rot90(images, 1 if name == "rot90" else 2, dims=(1, 2)).contiguous()
    if name in _MARKERS:
        rows, cols = _MARKERS[name]
        marked = images.clone()
        marked[:, rows, cols] = 255
        return marked
    if name in _PERMUTATION_SEEDS:
        perm = torch.randperm(images[0].numel(), generator=seeded_generator(_PERMUTATION_SEEDS[name]))
        return images.flatten(1)[:, perm].view_as(images)
    raise ValueError(f"unknown transformation {name!r}; known: {', '.join(TRANSFORMS)}")


def _draw(
    images: torch.Tensor,
    digits: torch.Tensor,
    task_kinds: Sequence[Sequence[int]],
    kind_transforms: Sequence[str],
    per_digit: int,
    generator: torch.Generator,
    what: str,
    class_maps: torch.Tensor | None = None,
) -> MTLSplit:
    """The pairs of one split: for every task, every kind it holds and every digit, ``per_digit`` images
    drawn without replacement, transformed by the kind's transformation. ``class_maps`` ``(K, 10)``: kind
    ``k`` gives digit ``d`` the class ``class_maps[k, d]`` (None: its digit), which task ``t`` labels
    ``(class + t) % 10``."""
    pools = [torch.nonzero(digits == d).squeeze(1) for d in range(N_DIGITS)]
    short = [d for d, pool in enumerate(pools) if pool.numel() < per_digit]
    if short:
        raise DataError(f"{what} has fewer than {per_digit} images of digit {short[0]}, the probe needs them")
    rows, tasks, kinds, sources = [], [], [], []
    for t, held in enumerate(task_kinds):
        for k in held:
            drawn = torch.cat(
                [pool[torch.randperm(pool.numel(), generator=generator)[:per_digit]] for pool in pools]
            )
            rows.append(transform(images[drawn], kind_transforms[k]))
            sources.append(drawn)
            tasks.append(torch.full_like(drawn, t))
            kinds.append(torch.full_like(drawn, k))
    source_index = torch.cat(sources)
    task, kind = torch.cat(tasks), torch.cat(kinds)
    digit = digits[source_index].long()
    cls = digit if class_maps is None else class_maps[kind, digit]
    return MTLSplit(
        images=torch.cat(rows).unsqueeze(1).contiguous(),  # (N, 1, 28, 28): each pair its own row
        image_index=torch.arange(source_index.numel()),
        tasks=task,
        labels=(cls + task) % N_DIGITS,
        source_index=source_index,
        kinds=kind,
    )


def _build(
    data_root: Path,
    seed: int,
    download: bool,
    name: str,
    task_kinds: Sequence[Sequence[int]],
    kind_transforms: Sequence[str],
    oracle: OracleRouting,
    per_digit: int,
    test_per_digit: int,
    with_kinds: bool,
    class_maps: torch.Tensor | None = None,
) -> MTLBenchmark:
    root = Path(data_root)
    mnist._ensure_files(root, download)
    generator = seeded_generator(seed)
    splits = []
    for train, n in ((True, per_digit), (False, test_per_digit)):
        images, digits = mnist._read(root, train)
        split = _draw(
            images,
            digits,
            task_kinds,
            kind_transforms,
            n,
            generator,
            "the training file" if train else "the test file",
            class_maps,
        )
        splits.append(split if with_kinds else MTLSplit(*split._fields()[:5]))
    return MTLBenchmark(
        name=name,
        n_tasks=len(task_kinds),
        n_classes=N_DIGITS,
        image_shape=(1, 28, 28),
        train=splits[0],
        test=splits[1],
        task_names=tuple(
            f"digits+{t} ({', '.join(kind_transforms[k] for k in held)})" for t, held in enumerate(task_kinds)
        ),
        hflip=False,
        data_folder=root / mnist.FOLDER,
        kind_names=tuple(kind_transforms) if with_kinds else (),
        oracle=oracle,
    )


def _trunk(dup: int, head: int) -> tuple[Step, ...]:
    """The static network's layers (input conv, hidden conv, FC from conv, hidden FC) on duplicate ``dup``,
    then head ``head``: the static route's shape with another trunk."""
    return (
        ("input_conv", dup),
        ("hidden_conv", dup),
        ("fc_from_conv", dup),
        ("hidden_fc", dup),
        ("head_from_fc", head),
    )


def router_oracle(xor: bool = False) -> OracleRouting:
    """The router-alone probe's oracle: input conv and FC from conv by kind, hidden conv and head by task,
    and kind 1 skips the hidden FC (a PASS, so the masking of PASS is exercised too): every (task, kind)
    has its own route, differing per task and per kind at several steps. ``xor``: the hidden conv by task
    xor kind instead, a choice no sum of a task term and a kind term makes (plain LRN misses it:
    docs/results.md, "Probes")."""
    routes = []
    for t in range(2):
        per_kind = []
        for k in range(2):
            hidden_fc: Step = PASS if k == 1 else ("hidden_fc", t)
            conv = t ^ k if xor else t
            per_kind.append(
                (
                    ("input_conv", k),
                    ("hidden_conv", conv),
                    ("fc_from_conv", k),
                    hidden_fc,
                    ("head_from_fc", t),
                )
            )
        routes.append(tuple(per_kind))
    return OracleRouting(tuple(routes), note="input conv and FC by kind, hidden conv and head by task")


def load_router(
    data_root: Path,
    seed: int = 0,
    download: bool = True,
    per_digit: int = 50,
    test_per_digit: int = 25,
    xor: bool = False,
) -> MTLBenchmark:
    """The router-alone probe (module docstring): 2 tasks x 2 kinds (plain, inverted digits); ``xor``: the
    harder oracle of :func:`router_oracle`."""
    return _build(
        data_root, seed, download, "probe_router", [[0, 1], [0, 1]], ["identity", "invert"],
        router_oracle(bool(xor)), per_digit, test_per_digit, with_kinds=True,
    )  # fmt: skip


def share_oracle() -> OracleRouting:
    """Tasks 0 and 1 (plain digits) share trunk 0; tasks 2 and 3 (two pixel permutations) get trunks 1
    and 2; every task its own head."""
    trunks = (0, 0, 1, 2)
    return OracleRouting(
        tuple((_trunk(trunks[t], t),) for t in range(4)),
        note="tasks on the same images share a trunk, tasks on conflicting images get their own",
    )


def load_share(
    data_root: Path, seed: int = 0, download: bool = True, per_digit: int = 100, test_per_digit: int = 50
) -> MTLBenchmark:
    """The share-or-separate probe (module docstring): 4 tasks, on plain, plain, permuted (a) and permuted
    (b) digits."""
    kinds = ["identity", "permute_a", "permute_b"]
    return _build(
        data_root, seed, download, "probe_share", [[0], [0], [1], [2]], kinds, share_oracle(), per_digit,
        test_per_digit, with_kinds=False,
    )  # fmt: skip


def kind_class_maps(n_kinds: int) -> torch.Tensor:
    """``(n_kinds, 10)``: the class each kind gives each digit when the per-instance probe relabels. Kind 0
    keeps the digit; kind ``k`` moves it ``k`` places along a fixed cycle through the ten digits
    (``order[(position(d) + k) % 10]``), so any two kinds give every digit different classes and no kind's
    map is a shift of the labels (which a task's head would already make)."""
    if not 1 <= n_kinds <= N_DIGITS:
        raise ValueError(f"relabelling needs 1 to {N_DIGITS} kinds, got {n_kinds}")
    order = torch.randperm(N_DIGITS, generator=seeded_generator(_CLASS_CYCLE_SEED))  # the cycle
    position = torch.argsort(order)  # position[d]: where digit d sits on the cycle
    shifts = torch.arange(n_kinds).unsqueeze(1)  # (K, 1)
    return order[(position.unsqueeze(0) + shifts) % N_DIGITS]  # (K, 10)


def kinds_oracle(n_tasks: int, n_kinds: int) -> OracleRouting:
    """Every kind of instance its own trunk (shared by the tasks), every task its own head."""
    return OracleRouting(
        tuple(tuple(_trunk(k, t) for k in range(n_kinds)) for t in range(n_tasks)),
        note="a trunk per kind of instance, a head per task",
    )


def load_kinds(
    data_root: Path,
    seed: int = 0,
    download: bool = True,
    per_digit: int = 50,
    test_per_digit: int = 25,
    kinds: Sequence[str] = ("identity", "mark_a", "mark_b"),
    n_tasks: int = 2,
    relabel: bool = True,
) -> MTLBenchmark:
    """The per-instance probe (module docstring): ``n_tasks`` tasks, each with instances of every kind in
    ``kinds`` (transformations of :data:`TRANSFORMS`); ``relabel``: each kind also maps the digits to
    classes of its own (:func:`kind_class_maps`)."""
    kinds = list(kinds)
    for name in kinds:
        if name not in TRANSFORMS:
            raise ValueError(f"unknown kind {name!r}; known: {', '.join(TRANSFORMS)}")
    class_maps = kind_class_maps(len(kinds)) if relabel else None
    return _build(
        data_root, seed, download, "probe_kinds", [list(range(len(kinds)))] * int(n_tasks), kinds,
        kinds_oracle(int(n_tasks), len(kinds)), per_digit, test_per_digit, with_kinds=True,
        class_maps=class_maps,
    )  # fmt: skip
