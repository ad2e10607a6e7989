"""CIFAR-MTL: twenty 5-way tasks built from CIFAR-100, as in the LRN paper.

CIFAR-100 groups its 100 fine labels into 20 superclasses (coarse labels) of 5 fine labels each. Task
``k`` is superclass ``k``: tell its 5 fine labels apart. The label inside the task is the rank of the fine
label among the superclass's sorted fine labels (``fine % 5`` would not do: fine labels of one superclass
are not consecutive, so it collides). Every image is used: 2,500 training and 500 test pairs per task.

Data layout (torchvision's): ``<root>/cifar-100-python/{train,test,meta}``, Python pickles; train and test
hold ``data`` ``(N, 3072)`` uint8 (channel-major 32x32 RGB), ``fine_labels`` and ``coarse_labels``, meta
holds ``fine_label_names`` and ``coarse_label_names``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import (
    DataError,
    MTLBenchmark,
    atomic_download_dir,
    download_failure,
    import_torchvision,
    safe_unpickle,
)
from .tasks import class_groups

NAME = "cifar"
N_FINE = 100
N_COARSE = 20
FINE_PER_COARSE = 5

FOLDER = "cifar-100-python"
LAYOUT = (
    "<root>/cifar-100-python/{train,test,meta} (torchvision's CIFAR-100 layout: pickles with "
    "data (N, 3072) uint8, fine_labels, coarse_labels; meta with fine_label_names, coarse_label_names)"
)


def _error(root: Path, cause: str) -> DataError:
    return DataError(f"CIFAR-100 data in {root / FOLDER} is unusable: {cause}. Expected layout: {LAYOUT}.")


def _read_pickle(root: Path, name: str) -> dict[str, Any]:
    """One pickle as a dict with str keys (Python 2 pickles have bytes keys under encoding="bytes")."""
    path = root / FOLDER / name
    if not path.is_file():
        raise _error(root, f"missing file {name}")
    try:
        with open(path, "rb") as f:
            entry = safe_unpickle(f)
    except Exception as exc:  # garbage gives UnpicklingError, EOFError, ValueError, ...
        raise _error(root, f"cannot unpickle {name} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(entry, dict):
        raise _error(root, f"{name} holds a {type(entry).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in entry.items()}


def _names(root: Path, meta: dict[str, Any], key: str, count: int) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise _error(root, f"meta.{key} is not a list of {count} names")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_split(root: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8, fine and coarse labels ``(N,)`` int64 of one split, validated."""
    entry = _read_pickle(root, name)
    missing = [k for k in ("data", "fine_labels", "coarse_labels") if k not in entry]
    if missing:
        raise _error(root, f"{name} lacks the keys {missing}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise _error(root, f"{name}: data is not an (N, 3072) uint8 array (got shape {shape})")
    try:
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise _error(root, f"{name}: labels are not integers ({exc})") from exc
    if fine.shape != (data.shape[0],) or coarse.shape != (data.shape[0],):
        raise _error(
            root, f"{name}: {data.shape[0]} images but {fine.shape} fine / {coarse.shape} coarse labels"
        )
    if data.shape[0] == 0:
        raise _error(root, f"{name} holds no images")
    if fine.min() < 0 or fine.max() >= N_FINE or coarse.min() < 0 or coarse.max() >= N_COARSE:
        raise _error(root, f"{name}: labels outside 0..{N_FINE - 1} (fine) or 0..{N_COARSE - 1} (coarse)")
    return data.reshape(-1, 3, 32, 32), fine, coarse


def _fine_to_coarse(root: Path, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The superclass of each fine label, from the data's own labels, checked to be a 20 x 5 partition."""
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    if len(np.unique(pairs[:, 0])) != len(pairs):
        raise _error(root, "a fine label appears under several coarse labels")
    if len(pairs) != N_FINE:
        raise _error(root, f"only {len(pairs)} of the {N_FINE} fine labels appear")
    mapping = np.empty(N_FINE, dtype=np.int64)
    mapping[pairs[:, 0]] = pairs[:, 1]
    counts = np.bincount(mapping, minlength=N_COARSE)
    if (counts != FINE_PER_COARSE).any():
        raise _error(
            root, f"coarse labels hold {counts.tolist()} fine labels, expected {FINE_PER_COARSE} each"
        )
    return mapping


def _ensure_files(root: Path, download: bool) -> None:
    if (root / FOLDER).exists():
        return
    if not download:
        raise _error(root, "the folder does not exist (download=False)")
    datasets = import_torchvision("torchvision.datasets")
    try:
        with atomic_download_dir(root, FOLDER) as scratch:
            # torchvision checks md5 sums here, on the real archive; we read the pickles ourselves below.
            datasets.CIFAR100(str(scratch), train=True, download=True)
    except Exception as exc:  # network, disk and format errors all mean the same thing to the caller
        raise _error(root, download_failure(exc)) from exc


def load(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
    """Build CIFAR-MTL from ``data_root`` (downloading CIFAR-100 there if it is absent and ``download``).

    ``seed`` is accepted for a uniform loader signature; the protocol uses every image, so draws nothing.
    """
    del seed
    root = Path(data_root)
    _ensure_files(root, download)
    meta = _read_pickle(root, "meta")
    coarse_names = _names(root, meta, "coarse_label_names", N_COARSE)
    _names(root, meta, "fine_label_names", N_FINE)
    raw = {name: _read_split(root, name) for name in ("train", "test")}
    fine_all = np.concatenate([raw["train"][1], raw["test"][1]])
    coarse_all = np.concatenate([raw["train"][2], raw["test"][2]])
    fine_to_coarse = _fine_to_coarse(root, fine_all, coarse_all)
    # Task k: its superclass's fine labels in sorted order, so the label is the fine label's rank.
    groups = [np.flatnonzero(fine_to_coarse == k).tolist() for k in range(N_COARSE)]
    splits = {}
    for name, (data, fine, _coarse) in raw.items():
        # Every image used once, grouped by task (file order kept inside a task); no draw.
        pairs = class_groups(torch.from_numpy(fine), groups, per_class=None)
        splits[name] = pairs.split(torch.from_numpy(np.require(data, requirements=["C", "W"])))
    return MTLBenchmark(
        name=NAME,
        n_tasks=N_COARSE,
        n_classes=FINE_PER_COARSE,
        image_shape=(3, 32, 32),
        train=splits["train"],
        test=splits["test"],
        task_names=tuple(coarse_names),
        data_folder=root / FOLDER,
    )
