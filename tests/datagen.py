"""Small fake data sets in the REAL on-disk formats, and helpers to find or require the real ones.

The fake images are learnable on purpose: the image of class ``c`` carries a bright block whose position
(and, for colour images, colour) depends on ``c``, over mild noise, so a small model trained on them
scores well above chance. The blocks are large enough to survive JPEG compression.

Import from tests as ``from datagen import ...`` (setup.cfg's ``pythonpath`` puts tests/ on the path).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from routing_env.benchmarks import DATA_ENV_VAR, cifar, mini_imagenet, mnist

# The top-level folder of each benchmark under a data root (MIN-MTL: our folder layout).
BENCHMARK_FOLDERS = {"mnist": mnist.FOLDER, "cifar": cifar.FOLDER, "min": mini_imagenet.FOLDER}

# The file (or folder) whose presence under the data root means "this benchmark's data is there".
REAL_DATA_MARKERS = {
    "mnist": f"{mnist.FOLDER}/raw/{mnist.RAW_FILES[0]}",
    "cifar": f"{cifar.FOLDER}/train",
    "min": f"{mini_imagenet.FOLDER}/train",
}

# Sizes of the fake data sets. A few more images than the protocols draw (1,000 / 20 per digit for MNIST,
# 160 / 10 per class for MIN), so that different seeds give different splits.
FAKE_SIZES = {
    "mnist": {"train_per_digit": 1100, "test_per_digit": 25},
    "cifar": {"train_per_fine": 10, "test_per_fine": 2},
    "min": {"train_per_class": 165, "test_per_class": 12, "n_classes": 52},
}


# --- real data ------------------------------------------------------------------------------------


def real_data_root(name: str) -> Path | None:
    """``$ROUTING_ENV_DATA`` if it holds benchmark ``name`` ("mnist", "cifar", "min"), else None."""
    value = os.environ.get(DATA_ENV_VAR)
    if not value:
        return None
    root = Path(value).expanduser()
    return root if (root / REAL_DATA_MARKERS[name]).exists() else None


def has_real_data(name: str) -> bool:
    return real_data_root(name) is not None


def requires_real_data(name: str) -> pytest.MarkDecorator:
    """Mark a test that needs the real data of benchmark ``name``: it is skipped when that is absent."""
    return pytest.mark.skipif(
        not has_real_data(name),
        reason=f"needs real {name} data under ${DATA_ENV_VAR} (see docs/benchmarks.md)",
    )


# --- learnable images -----------------------------------------------------------------------------


def block_images(
    classes: np.ndarray, size: int, channels: int, grid: int, block: int, rng: np.random.Generator
) -> np.ndarray:
    """``(N, channels, size, size)`` uint8 images: noise in [0, 64) plus a [192, 256) block for each class.

    The image area is cut into ``grid x grid`` cells. Grey images: class ``c`` lights cell ``c``. Colour
    images: class ``c`` lights cell ``c // 7`` in colour ``c % 7 + 1`` (a non-empty subset of R, G, B).
    """
    classes = np.asarray(classes, dtype=np.int64)
    n = len(classes)
    cells = classes if channels == 1 else classes // 7
    if n and cells.max() >= grid * grid:
        raise ValueError(f"{grid}x{grid} cells cannot encode class {classes.max()}")
    images = rng.integers(0, 64, size=(n, channels, size, size), dtype=np.uint8)
    cell = size // grid
    pad = (cell - block) // 2
    rows = (cells // grid) * cell + pad
    cols = (cells % grid) * cell + pad
    if channels == 1:
        lit = np.ones((n, 1), dtype=bool)
    else:
        bits = classes % 7 + 1
        lit = ((bits[:, None] >> np.arange(channels)) & 1).astype(bool)  # (N, C)
    # One (N, C, block, block) gather instead of a loop over images.
    r = rows[:, None, None, None] + np.arange(block)[None, None, :, None]
    c = cols[:, None, None, None] + np.arange(block)[None, None, None, :]
    i = np.arange(n)[:, None, None, None]
    ch = np.arange(channels)[None, :, None, None]
    bright = rng.integers(192, 256, size=(n, channels, block, block), dtype=np.uint8)
    images[i, ch, r, c] = np.where(lit[:, :, None, None], bright, images[i, ch, r, c])
    return images


# --- MNIST ----------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as torchvision reads it: big-endian magic (0x08 = uint8, then the rank), sizes, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim  # 2051 for (N, 28, 28) images, 2049 for (N,) labels
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def write_fake_mnist(
    root: Path, train_per_digit: int = 1000, test_per_digit: int = 20, seed: int = 0
) -> Path:
    """Write ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; returns the raw folder."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    for prefix, per_digit in (("train", train_per_digit), ("t10k", test_per_digit)):
        digits = rng.permutation(np.repeat(np.arange(10), per_digit))  # interleaved, like the real files
        images = block_images(digits, size=28, channels=1, grid=4, block=7, rng=rng)[:, 0]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", digits)
    return raw


# --- CIFAR-100 ------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us change how bytes are written
    """Writes bytes as Python 2 ``str`` opcodes, as in the official CIFAR-100 pickles: they then load as
    str under ``encoding="latin1"`` (torchvision's way) and as bytes under ``encoding="bytes"``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def fake_fine_to_coarse(seed: int = 0) -> np.ndarray:
    """A random, fixed assignment of 5 fine labels to each of 20 coarse labels, chosen so that neither
    ``fine // 5`` gives the coarse label nor ``fine % 5`` the rank inside a superclass (it collides)."""
    rng = np.random.default_rng(seed)
    while True:
        mapping = np.empty(100, dtype=np.int64)
        mapping[rng.permutation(100)] = np.arange(100) // 5
        fine_mod_collides = any(
            len(set(np.flatnonzero(mapping == k) % 5)) < 5 for k in range(20)
        )  # some superclass has two fine labels with the same fine % 5
        if fine_mod_collides and not (mapping == np.arange(100) // 5).all():
            return mapping


def write_fake_cifar100(root: Path, train_per_fine: int = 10, test_per_fine: int = 2, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` as Python-2 pickles with the real keys."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine_to_coarse = fake_fine_to_coarse(seed)
    for name, per_fine in (("train", train_per_fine), ("test", test_per_fine)):
        fine = rng.permutation(np.repeat(np.arange(100), per_fine))
        images = block_images(fine, size=32, channels=3, grid=4, block=6, rng=rng)
        entry = {
            b"filenames": [f"fake_{name}_{i:05d}.png".encode() for i in range(len(fine))],
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": fine_to_coarse[fine].tolist(),
            b"data": images.reshape(len(fine), 3072),
        }
        (folder / name).write_bytes(py2_pickle_bytes(entry))
    meta = {
        b"fine_label_names": [f"fine_{f:02d}".encode() for f in range(100)],
        b"coarse_label_names": [f"coarse_{k:02d}".encode() for k in range(20)],
    }
    (folder / "meta").write_bytes(py2_pickle_bytes(meta))
    return folder


# --- mini-ImageNet --------------------------------------------------------------------------------


def fake_wnids(n_classes: int, seed: int = 0) -> list[str]:
    """Distinct fake wnids ``n0000xxxx``, sorted (so class ``i`` of the fake set is the i-th sorted wnid)."""
    rng = np.random.default_rng(seed)
    numbers = np.sort(rng.choice(10_000, size=n_classes, replace=False))
    return [f"n0000{k:04d}" for k in numbers]


def write_fake_mini_imagenet(
    root: Path, train_per_class: int = 160, test_per_class: int = 12, n_classes: int = 52, seed: int = 0
) -> Path:
    """Write ``root/mini-imagenet-mtl/{train,test}/<wnid>/<wnid><8 digits>.jpg`` (84x84 RGB JPEGs).

    The default 52 classes exceed the protocol's 50, so "only the first 50 sorted wnids" is exercised.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / mini_imagenet.FOLDER
    wnids = fake_wnids(n_classes, seed)
    for c, wnid in enumerate(wnids):
        first = 0
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            class_dir = folder / split / wnid
            class_dir.mkdir(parents=True, exist_ok=True)
            images = block_images(np.full(count, c), size=84, channels=3, grid=3, block=20, rng=rng)
            for i, image in enumerate(images.transpose(0, 2, 3, 1)):
                # Numbered on from the training files, like the real data, so no name is in both splits.
                Image.fromarray(image).save(class_dir / f"{wnid}{first + i:08d}.jpg", quality=90)
            first += count
    return folder


# --- corruption -----------------------------------------------------------------------------------


def corrupt_file(path: Path, how: str = "truncate", seed: int = 0) -> None:
    """Damage a file in place: ``"truncate"`` keeps its first half, ``"garbage"`` replaces it with
    1,000 random bytes. The file must be a real file (a symlink is replaced, its target left alone)."""
    path = Path(path)
    if how == "truncate":
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.unlink(missing_ok=True)
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    else:
        raise ValueError(f"unknown corruption {how!r}")


def link_tree(src: Path, dst: Path) -> Path:
    """Copy the folder tree ``src`` to ``dst`` with symlinks for files: a cheap private copy to corrupt."""
    import shutil

    shutil.copytree(src, dst, copy_function=os.symlink)
    return dst
