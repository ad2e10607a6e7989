"""The interface every multi-task benchmark implements, and the data-root rules they share.

A benchmark turns a real image data set into (image, task, label) pairs, as the LRN paper builds them.
Images are stored once, as uint8, and pairs index into them (MNIST-MTL reuses an image in several
tasks), so a whole benchmark sits on the env's device as a few tensors.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

if TYPE_CHECKING:
    from routing_env.oracle_route import OracleRouting

DATA_ENV_VAR = "ROUTING_ENV_DATA"


class DataError(RuntimeError):
    """Benchmark data cannot be loaded: it is missing, corrupt or too small for the benchmark's protocol,
    or the library that reads it (torchvision) cannot be imported."""


class TorchvisionError(DataError):
    """torchvision, which reads and downloads the benchmarks' files, is missing or does not fit torch."""


def import_torchvision(module: str = "torchvision") -> ModuleType:
    """``module`` (torchvision or one of its submodules), imported; one clear error if that fails.

    A torchvision built for another torch fails deep inside its import (``operator torchvision::nms does
    not exist``, an undefined symbol, ...); the error names both versions and the fix, on one line.
    """
    try:
        return importlib.import_module(module)
    except Exception as exc:  # RuntimeError, ImportError or OSError, depending on what does not fit
        raise TorchvisionError(torchvision_failure(module, exc)) from exc


def torchvision_failure(module: str, exc: BaseException) -> str:
    """Why ``module`` could not be imported, and the install command that fixes it, on one line."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        installed = f"torchvision {version('torchvision')}"
    except PackageNotFoundError:
        installed = "no torchvision"
    cause = " ".join(str(exc).split())[:300]
    build = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    base_version = torch.__version__.split("+")[0]
    return (
        f"cannot import {module} ({type(exc).__name__}: {cause}); torch {torch.__version__} with {installed} "
        "installed: torch and torchvision must come as a matching pair from one index, e.g. "
        f"pip install --force-reinstall torch=={base_version} torchvision "
        f"--index-url https://download.pytorch.org/whl/{build}"
    )


@dataclass
class MTLSplit:
    """The pairs of one split.

    Attributes:
        images: every image the split uses, ``(N_img, C, H, W)`` uint8.
        image_index: for each pair, the row of ``images`` it shows, ``(N,)`` int64.
        tasks: the task of each pair, ``(N,)`` int64 in ``[0, n_tasks)``.
        labels: the label of each pair inside its task, ``(N,)`` int64 in ``[0, n_classes)``.
        source_index: for each pair, the image's index in the source data set (e.g. MNIST's train
            or test file), ``(N,)`` int64; lets tests and users check disjointness and provenance.
        kinds: the kind of instance of each pair, ``(N,)`` int64 in ``[0, n_kinds)`` (e.g. which
            transformation its image went through, in the probes: ``routing_env/benchmarks/probes.py``);
            None where the benchmark has no kinds of instance.
    """

    images: torch.Tensor
    image_index: torch.Tensor
    tasks: torch.Tensor
    labels: torch.Tensor
    source_index: torch.Tensor
    kinds: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tasks.shape[0])

    def to(self, device: torch.device | str) -> MTLSplit:
        return MTLSplit(*(t.to(device) for t in self._fields()))

    def subset(self, index: torch.Tensor) -> MTLSplit:
        """The pairs at ``index`` (images are shared, not copied)."""
        index = index.to(self.tasks.device)
        return MTLSplit(
            self.images,
            self.image_index[index],
            self.tasks[index],
            self.labels[index],
            self.source_index[index],
            None if self.kinds is None else self.kinds[index],
        )

    def _fields(self) -> tuple[torch.Tensor, ...]:
        """The split's tensors in constructor order (``kinds`` only where the split has them)."""
        kinds = () if self.kinds is None else (self.kinds,)
        return (self.images, self.image_index, self.tasks, self.labels, self.source_index, *kinds)


@dataclass
class MTLBenchmark:
    """A multi-task benchmark: every task is a ``n_classes``-way classification problem over images.

    What a loader returns (see :func:`routing_env.register_benchmark`). Every pair is one episode of the
    env: the router sees the image and the task id, builds a network and is scored on the label.

    Attributes:
        name: a short name for messages and logs (e.g. ``"mnist"``); need not be the registered name.
        n_tasks: the number of tasks; every pair's ``task`` is in ``[0, n_tasks)``. The env's
            observation ``task`` is ``Discrete(n_tasks)``.
        n_classes: the number of classes of every task: the pool's output heads give ``n_classes``
            logits, and every pair's ``label`` is in ``[0, n_classes)``.
        image_shape: ``(C, H, W)`` of every image; the pool's input convs are built for it.
        train: the training pairs (:class:`MTLSplit`: images ``(N_img, C, H, W)`` uint8, 0..255;
            tasks, labels and indices ``(N,)`` int64). The env's ``split="train"`` (and ``"val"``, a
            held-out part of it) walks these.
        test: the test pairs, in the same form; ``split="test"`` walks them in order.
        task_names: one name per task, for ``render()``; empty shows the task ids.
        hflip: whether a mirrored image keeps its label, so that the env's augmentation (``augment``)
            may flip images at random (True for photos, False for digits or text).
        data_folder: where the loader read the data (``train.py`` prints it). A loader whose data lies
            outside the data root says so here; None stands for the data root itself
            (:func:`load_benchmark` fills that in).
        kind_names: one name per kind of instance where the splits have ``kinds`` (the probes); empty
            otherwise.
        oracle: the best routing known by construction (:class:`routing_env.oracle_route.OracleRouting`:
            a route per task and kind of instance), or None (the paper's benchmarks have none). The route
            statistics measure the router's routes against it, and ``--algo oracle_route`` trains the pool
            on it.
    """

    name: str
    n_tasks: int
    n_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    train: MTLSplit
    test: MTLSplit
    task_names: tuple[str, ...] = ()
    hflip: bool = True
    data_folder: Path | None = None
    kind_names: tuple[str, ...] = ()
    oracle: OracleRouting | None = None

    @property
    def n_kinds(self) -> int:
        """The kinds of instance (1 for a benchmark without kinds)."""
        return max(len(self.kind_names), 1)

    def to(self, device: torch.device | str) -> MTLBenchmark:
        return dataclasses.replace(self, train=self.train.to(device), test=self.test.to(device))


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the ``data_root`` argument, else ``$ROUTING_ENV_DATA``, else a user cache folder."""
    if data_root is not None:
        return Path(data_root).expanduser()
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "routing_env"


@contextmanager
def atomic_download_dir(root: Path, final_name: str) -> Iterator[Path]:
    """A scratch folder inside ``root`` for a download; ``<scratch>/<final_name>`` is moved to
    ``root/<final_name>`` only if the body finishes, so a failed download leaves nothing half-written."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        yield scratch
        target = root / final_name
        if not target.exists():
            os.replace(scratch / final_name, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def download_failure(exc: BaseException) -> str:
    """A failed download's cause on one line (torchvision's messages span several)."""
    return f"download failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays: a data file must not run arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(file: BinaryIO) -> Any:
    """Unpickle a data file that may hold only containers and NumPy arrays (no code runs). latin1 is what
    NumPy needs for arrays pickled by Python 2 (e.g. the official CIFAR-100 files)."""
    return _ArrayUnpickler(file, encoding="latin1").load()


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator for the protocol's draws (CPU so that splits do not depend on the device)."""
    return torch.Generator().manual_seed(int(seed))
