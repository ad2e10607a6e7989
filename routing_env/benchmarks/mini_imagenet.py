"""MIN-MTL: ten 5-way tasks built from mini-ImageNet, as in the LRN paper.

The first 50 classes in sorted wnid order are grouped, in that order, into 10 tasks of 5 classes; the
label inside a task is the class's position in its group. Per class, 160 training and 10 test images are
drawn with a seeded generator from the files present (file names sorted first, so a seed gives the same
split on every machine): 800 training and 50 test pairs per task.

Data layout (ImageFolder): ``<root>/mini-imagenet-mtl/{train,test}/<wnid>/*.jpg``, 84x84 RGB (other sizes
are resized, grey images converted). There is no download: mini-ImageNet must be put there by hand.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .base import DataError, MTLBenchmark, MTLSplit, seeded_generator

NAME = "min"
N_CLASSES = 50  # the first 50 wnids in sorted order
CLASSES_PER_TASK = 5
N_TASKS = N_CLASSES // CLASSES_PER_TASK
PER_CLASS = {"train": 160, "test": 10}
SIZE = 84

FOLDER = "mini-imagenet-mtl"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = (
    "<root>/mini-imagenet-mtl/{train,test}/<wnid>/*.jpg (ImageFolder layout, 84x84 RGB, at least "
    f"{N_CLASSES} classes with {PER_CLASS['train']} train / {PER_CLASS['test']} test images each; "
    "there is no automatic download, put the files there by hand)"
)


def _error(root: Path, cause: str) -> DataError:
    return DataError(
        f"mini-ImageNet data in {root / FOLDER} is unusable: {cause}. Expected layout: {LAYOUT}."
    )


def _class_dirs(root: Path, split: str) -> list[Path]:
    folder = root / FOLDER / split
    if not folder.is_dir():
        raise _error(root, f"missing folder {split}/")
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name
    )


def selected_classes(data_root: Path) -> list[str]:
    """The wnids MIN-MTL uses: the first 50 training classes in sorted order.

    Class ``i`` of this list is task ``i // 5``, label ``i % 5``.
    """
    root = Path(data_root)
    names = [d.name for d in _class_dirs(root, "train")]
    if len(names) < N_CLASSES:
        raise _error(root, f"train/ has {len(names)} class folders, the protocol needs {N_CLASSES}")
    return names[:N_CLASSES]


def _files_per_class(root: Path, split: str, classes: list[str]) -> list[list[Path]]:
    present = {d.name: d for d in _class_dirs(root, split)}
    files = []
    for wnid in classes:
        if wnid not in present:
            raise _error(root, f"{split}/ has no folder {wnid}")
        found = sorted(
            (
                f
                for f in present[wnid].iterdir()
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            ),
            key=lambda f: f.name,
        )
        if len(found) < PER_CLASS[split]:
            raise _error(
                root, f"{split}/{wnid} has {len(found)} images, the protocol needs {PER_CLASS[split]}"
            )
        files.append(found)
    return files


def split_files(data_root: Path, split: str) -> list[Path]:
    """The candidate files of a split (``"train"`` or ``"test"``), class-major in sorted order.

    ``MTLSplit.source_index`` indexes this list, so it tells which file each pair shows.
    """
    root = Path(data_root)
    return [f for per_class in _files_per_class(root, split, selected_classes(root)) for f in per_class]


def _decode(root: Path, path: Path) -> torch.Tensor:
    """One image as ``(3, 84, 84)`` uint8."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        # libjpeg-turbo through torchvision is ~2x faster than PIL on these small JPEGs.
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception as tv_exc:
        image = _decode_pil(root, path, tv_exc)
    if image.shape[1:] != (SIZE, SIZE):
        from torchvision.transforms.v2.functional import resize

        image = resize(image, [SIZE, SIZE], antialias=True)
    return image


def _decode_pil(root: Path, path: Path, first_error: Exception) -> torch.Tensor:
    """Fallback for files torchvision cannot decode but PIL can (e.g. unusual JPEG variants)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except Exception as exc:
        raise _error(root, f"cannot decode {path} ({first_error}; PIL: {exc})") from exc
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _split(root: Path, split: str, per_class: list[list[Path]], generator: torch.Generator) -> MTLSplit:
    """Draw ``PER_CLASS[split]`` files of every class and decode them."""
    k = PER_CLASS[split]
    offsets = np.cumsum([0] + [len(files) for files in per_class])
    sources = torch.empty(N_CLASSES, k, dtype=torch.long)
    for c, files in enumerate(per_class):
        sources[c] = torch.randperm(len(files), generator=generator)[:k] + int(offsets[c])
    sources = sources.reshape(-1)
    all_files = [f for files in per_class for f in files]
    images = torch.empty(len(sources), 3, SIZE, SIZE, dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 warns on every decode that torchvision.io moves to TorchCodec; once is plenty.
        warnings.filterwarnings(
            "ignore", message=".*image decoding and encoding capabilities", category=DeprecationWarning
        )
        for row, index in enumerate(sources.tolist()):
            images[row] = _decode(root, all_files[index])
    classes_of_pairs = torch.arange(N_CLASSES).repeat_interleave(k)
    return MTLSplit(
        images=images,
        image_index=torch.arange(len(sources)),  # each image is used by exactly one pair
        tasks=classes_of_pairs // CLASSES_PER_TASK,
        labels=classes_of_pairs % CLASSES_PER_TASK,
        source_index=sources,
    )


def load(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
    """Build MIN-MTL from ``data_root``. ``download`` is accepted for a uniform signature and ignored:
    mini-ImageNet has no official download, so missing data raises a DataError saying where to put it."""
    del download
    root = Path(data_root)
    if not (root / FOLDER).is_dir():
        raise _error(root, "the folder does not exist")
    classes = selected_classes(root)
    # List (and check) both splits before decoding anything, so a bad folder fails fast.
    files = {split: _files_per_class(root, split, classes) for split in ("train", "test")}
    generator = seeded_generator(seed)
    train = _split(root, "train", files["train"], generator)
    test = _split(root, "test", files["test"], generator)
    return MTLBenchmark(
        name=NAME,
        n_tasks=N_TASKS,
        n_classes=CLASSES_PER_TASK,
        image_shape=(3, SIZE, SIZE),
        train=train,
        test=test,
        task_names=tuple(
            ",".join(classes[t * CLASSES_PER_TASK : (t + 1) * CLASSES_PER_TASK]) for t in range(N_TASKS)
        ),
    )
