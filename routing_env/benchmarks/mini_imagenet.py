"""MIN-MTL: ten 5-way tasks built from mini-ImageNet, as in the LRN paper.

The first 50 classes in sorted wnid order are grouped, in that order, into 10 tasks of 5 classes; the
label inside a task is the class's position in its group. Per class, 160 training and 10 test images are
drawn with a seeded generator: 800 training and 50 test pairs per task. Images are 84x84 RGB (other
sizes are resized, grey images converted).

Three layouts are read, looked for in this order under the data root:

1. ``mini-imagenet-mtl/{train,test}/<wnid>/*.jpg`` (ours, made by hand): the 50 classes are the first 50
   folders of ``train/`` in sorted order; the 160 training images of a class are drawn from its
   ``train/`` folder and the 10 test images from its ``test/`` folder (file names sorted first).
2. ``mini-imagenet/images/*.jpg`` with Ravi & Larochelle's split files
   ``mini-imagenet/{train,val,test}.csv`` (columns ``filename,label``, e.g.
   ``n0153282900000005.jpg,n01532829``): the few-shot 64/16/20 class split is ignored; the 50 classes
   are the first 50 wnids in sorted order over all the CSV files present (with the standard files they
   come from all three). Each class's images (sorted by file name,
   600 in the full set) form one pool, from which 170 are drawn without replacement: the first 160
   drawn are its training images, the next 10 its test images, so the two never share an image.
3. The pickle caches of few-shot loaders, ``mini-imagenet/mini-imagenet-cache-{train,val,test}.pkl``,
   each ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [row, ...]}}``: classes and draws as
   for the CSV layout, a class's pool being its rows in ascending order.

There is no download: mini-ImageNet must be put there by hand.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .base import DataError, MTLBenchmark, MTLSplit, safe_unpickle, seeded_generator
from .tasks import Pairs, class_groups

NAME = "min"
N_CLASSES = 50  # the first 50 wnids in sorted order
CLASSES_PER_TASK = 5
N_TASKS = N_CLASSES // CLASSES_PER_TASK
PER_CLASS = {"train": 160, "test": 10}
SIZE = 84

FOLDER = "mini-imagenet-mtl"  # layout 1
DISTRIBUTION_FOLDER = "mini-imagenet"  # layouts 2 and 3
CSV_FILES = ("train.csv", "val.csv", "test.csv")
PICKLE_FILES = tuple(f"mini-imagenet-cache-{s}.pkl" for s in ("train", "val", "test"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = (
    "<root>/mini-imagenet-mtl/{train,test}/<wnid>/*.jpg (ImageFolder layout, at least "
    f"{N_CLASSES} classes with {PER_CLASS['train']} train / {PER_CLASS['test']} test images each), or "
    "<root>/mini-imagenet/images/*.jpg with Ravi & Larochelle's {train,val,test}.csv beside images/, or "
    "<root>/mini-imagenet/mini-imagenet-cache-{train,val,test}.pkl; there is no automatic download, put "
    "the files there by hand"
)


def _error(root: Path, cause: str) -> DataError:
    return DataError(
        f"mini-ImageNet data in {root / FOLDER} is unusable: {cause}. Expected layout: {LAYOUT}."
    )


def layout(data_root: Path) -> str:
    """Which layout ``data_root`` holds: ``"folders"``, ``"csv"`` or ``"pickle"`` (first found)."""
    root = Path(data_root)
    dist = root / DISTRIBUTION_FOLDER
    if (root / FOLDER).is_dir():
        return "folders"
    if (dist / "images").is_dir() and any((dist / name).is_file() for name in CSV_FILES):
        return "csv"
    if any((dist / name).is_file() for name in PICKLE_FILES):
        return "pickle"
    raise _error(root, f"the folder does not exist (nor {dist} with images/ and CSV files, or pickle caches)")


# --- layout 1: our folders ------------------------------------------------------------------------


def _class_dirs(root: Path, split: str) -> list[Path]:
    folder = root / FOLDER / split
    if not folder.is_dir():
        raise _error(root, f"missing folder {split}/")
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name
    )


def _first_classes(root: Path, wnids: list[str], where: str, noun: str = "classes") -> list[str]:
    if len(wnids) < N_CLASSES:
        raise _error(root, f"{where} has {len(wnids)} {noun}, the protocol needs {N_CLASSES}")
    return sorted(wnids)[:N_CLASSES]


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


# --- layout 2: images/ and the CSV split files ------------------------------------------------------


def _csv_files_per_class(root: Path) -> dict[str, list[Path]]:
    """Every class of the CSV files present, with its image files sorted by name."""
    dist = root / DISTRIBUTION_FOLDER
    per_class: dict[str, list[Path]] = {}
    for name in CSV_FILES:
        path = dist / name
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                raise _error(root, f"{path} has no filename,label header")
            for row in reader:
                per_class.setdefault(row["label"], []).append(dist / "images" / row["filename"])
    return {wnid: sorted(files, key=lambda f: f.name) for wnid, files in per_class.items()}


# --- layout 3: the pickle caches --------------------------------------------------------------------


def _read_cache(root: Path, path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = safe_unpickle(f)
    except Exception as exc:  # garbage gives UnpicklingError, EOFError, ValueError, ...
        raise _error(root, f"cannot unpickle {path} ({type(exc).__name__}: {exc})") from exc
    data = entry.get("image_data") if isinstance(entry, dict) else None
    classes = entry.get("class_dict") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
        raise _error(root, f"{path}: image_data is not an (N, H, W, 3) uint8 array")
    if not isinstance(classes, dict):
        raise _error(root, f"{path}: class_dict is not a dict")
    return entry


def _read_caches(root: Path) -> tuple[dict[str, list[tuple[int, int]]], list[np.ndarray]]:
    """Every class of the caches present, as (cache, row) pairs in ascending row order, and each cache's
    ``image_data`` (``(N, H, W, 3)`` uint8)."""
    dist = root / DISTRIBUTION_FOLDER
    per_class: dict[str, list[tuple[int, int]]] = {}
    arrays = []
    for c, path in enumerate(dist / name for name in PICKLE_FILES if (dist / name).is_file()):
        entry = _read_cache(root, path)
        n = entry["image_data"].shape[0]
        for wnid, rows in entry["class_dict"].items():
            rows = sorted(int(r) for r in rows)
            if rows and not 0 <= rows[0] <= rows[-1] < n:
                raise _error(root, f"{path}: class {wnid} lists rows outside 0..{n - 1}")
            per_class.setdefault(str(wnid), []).extend((c, r) for r in rows)
        arrays.append(entry["image_data"])
    return per_class, arrays


def _cache_images(arrays: list[np.ndarray], rows: list[tuple[int, int]]) -> torch.Tensor:
    """The images at ``rows`` ((cache, row) pairs) as ``(n, 3, 84, 84)`` uint8."""
    out = torch.empty(len(rows), 3, SIZE, SIZE, dtype=torch.uint8)
    where = np.array(rows, dtype=np.int64).reshape(-1, 2)
    for c, data in enumerate(arrays):
        take = np.flatnonzero(where[:, 0] == c)
        if take.size:
            out[torch.from_numpy(take)] = _resized(torch.from_numpy(data[where[take, 1]]).permute(0, 3, 1, 2))
    return out


# --- decoding ---------------------------------------------------------------------------------------


def _resized(images: torch.Tensor) -> torch.Tensor:
    if images.shape[-2:] != (SIZE, SIZE):
        from torchvision.transforms.v2.functional import resize

        images = resize(images, [SIZE, SIZE], antialias=True)
    return images


def _decode(root: Path, path: Path) -> torch.Tensor:
    """One image as ``(3, 84, 84)`` uint8."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        # libjpeg-turbo through torchvision is ~2x faster than PIL on these small JPEGs.
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception as tv_exc:
        image = _decode_pil(root, path, tv_exc)
    return _resized(image)


def _decode_pil(root: Path, path: Path, first_error: Exception) -> torch.Tensor:
    """Fallback for files torchvision cannot decode but PIL can (e.g. unusual JPEG variants)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except Exception as exc:
        raise _error(root, f"cannot decode {path} ({first_error}; PIL: {exc})") from exc
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _file_decoder(root: Path, files: list[Path]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images(used)`` for :meth:`Pairs.split`: decodes only the files at the indices used."""

    def images(used: torch.Tensor) -> torch.Tensor:
        out = torch.empty(used.numel(), 3, SIZE, SIZE, dtype=torch.uint8)
        with warnings.catch_warnings():
            # torchvision 0.29 warns on every decode that torchvision.io moves to TorchCodec; once is plenty.
            warnings.filterwarnings(
                "ignore", message=".*image decoding and encoding capabilities", category=DeprecationWarning
            )
            for row, index in enumerate(used.tolist()):
                out[row] = _decode(root, files[index])
        return out

    return images


# --- the protocol -----------------------------------------------------------------------------------


def _groups() -> list[list[int]]:
    return [list(range(t * CLASSES_PER_TASK, (t + 1) * CLASSES_PER_TASK)) for t in range(N_TASKS)]


def _class_major(per_class: list[list]) -> tuple[list, torch.Tensor]:
    """The candidates of every class in one list, and the class of each."""
    flat = [item for items in per_class for item in items]
    labels = torch.arange(len(per_class)).repeat_interleave(torch.tensor([len(x) for x in per_class]))
    return flat, labels


def _pooled_pairs(root: Path, per_class: list[list], generator: torch.Generator) -> dict[str, Pairs]:
    """Layouts 2 and 3: one seeded draw of 160 + 10 distinct images per class, split train / test."""
    need = PER_CLASS["train"] + PER_CLASS["test"]
    _, labels = _class_major(per_class)
    drawn = class_groups(labels, _groups(), need, generator, what="the data", unit="class")
    cut = {"train": slice(0, PER_CLASS["train"]), "test": slice(PER_CLASS["train"], need)}
    return {
        split: Pairs(
            *(
                t.view(N_CLASSES, need)[:, part].reshape(-1)
                for t in (drawn.source_index, drawn.tasks, drawn.labels)
            )
        )
        for split, part in cut.items()
    }


def selected_classes(data_root: Path) -> list[str]:
    """The wnids MIN-MTL uses: the first 50 in sorted order (of ``train/``'s folders in our layout, of
    all the CSV files or caches otherwise). Class ``i`` of this list is task ``i // 5``, label ``i % 5``."""
    root = Path(data_root)
    kind = layout(root)
    if kind == "folders":
        return _first_classes(root, [d.name for d in _class_dirs(root, "train")], "train/", "class folders")
    if kind == "csv":
        return _first_classes(root, list(_csv_files_per_class(root)), "the CSV files")
    return _first_classes(root, list(_read_caches(root)[0]), "the pickle caches")


def split_files(data_root: Path, split: str) -> list[Path]:
    """The candidate image files of a split (``"train"`` or ``"test"``), class-major in sorted order;
    ``MTLSplit.source_index`` indexes this list. In the CSV layout both splits draw from the same list
    (all images of the 50 classes). Not for the pickle caches (see :func:`cache_rows`)."""
    root = Path(data_root)
    kind = layout(root)
    classes = selected_classes(root)
    if kind == "folders":
        return [f for files in _files_per_class(root, split, classes) for f in files]
    if kind == "csv":
        per_class = _csv_files_per_class(root)
        return [f for wnid in classes for f in per_class[wnid]]
    raise ValueError("the pickle caches have no files: use cache_rows()")


def cache_rows(data_root: Path) -> list[tuple[str, int]]:
    """The candidates of the pickle layout, class-major: ``(cache file name, row)``; both splits'
    ``MTLSplit.source_index`` index this list."""
    root = Path(data_root)
    per_class, _ = _read_caches(root)
    names = [n for n in PICKLE_FILES if (root / DISTRIBUTION_FOLDER / n).is_file()]
    classes = _first_classes(root, list(per_class), "the pickle caches")
    return [(names[c], r) for wnid in classes for c, r in per_class[wnid]]


def _checked(root: Path, per_class: dict[str, list], classes: list[str]) -> list[list]:
    need = PER_CLASS["train"] + PER_CLASS["test"]
    short = [(w, len(per_class[w])) for w in classes if len(per_class[w]) < need]
    if short:
        wnid, n = short[0]
        raise _error(root, f"class {wnid} has {n} images, the protocol needs {need} (160 train + 10 test)")
    return [per_class[w] for w in classes]


def load(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
    """Build MIN-MTL from ``data_root`` in any of the three layouts. ``download`` is accepted for a
    uniform signature and ignored: mini-ImageNet has no official download, so missing data raises a
    DataError saying where to put it."""
    del download
    root = Path(data_root)
    kind = layout(root)
    generator = seeded_generator(seed)
    splits: dict[str, MTLSplit] = {}
    if kind == "folders":
        classes = selected_classes(root)
        # List (and check) both splits before decoding anything, so a bad folder fails fast.
        files = {split: _files_per_class(root, split, classes) for split in ("train", "test")}
        for split, per_class in files.items():
            flat, labels = _class_major(per_class)
            pairs = class_groups(labels, _groups(), PER_CLASS[split], generator)
            splits[split] = pairs.split(_file_decoder(root, flat))
    elif kind == "csv":
        candidates = _csv_files_per_class(root)
        classes = _first_classes(root, list(candidates), "the CSV files")
        per_class = _checked(root, candidates, classes)
        flat, _ = _class_major(per_class)
        missing = [f for f in flat if not f.is_file()]
        if missing:
            raise _error(root, f"{len(missing)} images the CSV files list are missing, e.g. {missing[0]}")
        for split, pairs in _pooled_pairs(root, per_class, generator).items():
            splits[split] = pairs.split(_file_decoder(root, flat))
    else:
        rows, arrays = _read_caches(root)
        classes = _first_classes(root, list(rows), "the pickle caches")
        per_class = _checked(root, rows, classes)
        flat, _ = _class_major(per_class)
        for split, pairs in _pooled_pairs(root, per_class, generator).items():
            splits[split] = pairs.split(lambda used: _cache_images(arrays, [flat[i] for i in used.tolist()]))
    return MTLBenchmark(
        name=NAME,
        n_tasks=N_TASKS,
        n_classes=CLASSES_PER_TASK,
        image_shape=(3, SIZE, SIZE),
        train=splits["train"],
        test=splits["test"],
        task_names=tuple(
            ",".join(classes[t * CLASSES_PER_TASK : (t + 1) * CLASSES_PER_TASK]) for t in range(N_TASKS)
        ),
    )
