"""MIN-MTL: ten 5-way tasks built from mini-ImageNet, as in the LRN paper.

The first 50 classes in sorted wnid order are grouped, in that order, into 10 tasks of 5 classes; the
label inside a task is the class's position in its group. Per class, 160 training and 10 test images are
drawn with a seeded generator: 800 training and 50 test pairs per task. Images are 84x84 RGB (other
sizes are resized, grey images converted).

Three layouts are read, one :class:`Layout` each, looked for in this order under the data root:

1. :class:`FolderLayout`, ``mini-imagenet-mtl/{train,test}/<wnid>/*.jpg`` (ours, made by hand;
   torchvision's ``ImageFolder`` layout per split): the 50 classes are the first 50 folders of
   ``train/`` in sorted order; the 160 training images of a class are drawn from its ``train/`` folder
   and the 10 test images from its ``test/`` folder (file names sorted first).
2. :class:`CsvLayout`, ``mini-imagenet/images/*.jpg`` with Ravi & Larochelle's split files
   ``mini-imagenet/{train,val,test}.csv`` (columns ``filename,label``, e.g.
   ``n0153282900000005.jpg,n01532829``): the few-shot 64/16/20 class split is ignored; the 50 classes
   are the first 50 wnids in sorted order over all the CSV files present (with the standard files they
   come from all three). Each class's images (sorted by file name, 600 in the full set) form one pool,
   from which 170 are drawn without replacement: the first 160 drawn are its training images, the next
   10 its test images, so the two never share an image.
3. :class:`PickleLayout`, the pickle caches of few-shot loaders,
   ``mini-imagenet/mini-imagenet-cache-{train,val,test}.pkl``, each
   ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [row, ...]}}``: classes and draws as for
   the CSV layout, a class's pool being its rows in ascending order.

There is no download: mini-ImageNet must be put there by hand.
"""

from __future__ import annotations

import csv
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .base import DataError, MTLBenchmark, import_torchvision, safe_unpickle, seeded_generator
from .tasks import Pairs, class_groups

NAME = "min"
N_CLASSES = 50  # the first 50 wnids in sorted order
CLASSES_PER_TASK = 5
N_TASKS = N_CLASSES // CLASSES_PER_TASK
PER_CLASS = {"train": 160, "test": 10}
SPLITS = tuple(PER_CLASS)
SIZE = 84

FOLDER = "mini-imagenet-mtl"  # our layout
DISTRIBUTION_FOLDER = "mini-imagenet"  # the CSV and pickle layouts
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Candidate = Path | tuple[str, int]  # one image a class's pool offers: a file, or a (cache file, row) pair


class Layout(ABC):
    """One way mini-ImageNet can lie under the data root: which classes it holds, each class's pool of
    candidate images (per split, or one pool both splits draw from), and how to read them.

    Attributes:
        root: the data root.
        folder: where the layout lives, ``root / <its folder>``; errors and ``MTLBenchmark.data_folder``
            name it.
    """

    name: ClassVar[str]  # "folders", "csv", "pickle"
    subfolder: ClassVar[str]
    description: ClassVar[str]  # the layout, for error messages
    classes_found: ClassVar[str]  # what its classes are, for "found 12 <classes_found>"
    shared_pool: ClassVar[bool]  # both splits draw from one pool per class (160 + 10 distinct images)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.folder = self.root / self.subfolder

    @classmethod
    @abstractmethod
    def holds(cls, root: Path) -> bool:
        """Whether ``root`` holds this layout (its files are there; they may still be unusable)."""

    @abstractmethod
    def class_names(self) -> list[str]:
        """Every class the layout holds."""

    @abstractmethod
    def class_pools(self, classes: list[str]) -> dict[str, list[list[Candidate]]]:
        """Each split's candidates of each of ``classes``, in the order draws index them, checked to be
        enough for the protocol (both splits share one list where :attr:`shared_pool`)."""

    @abstractmethod
    def read(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        """The images of ``candidates`` as ``(n, 3, 84, 84)`` uint8."""

    def error(self, cause: str) -> DataError:
        return DataError(
            f"mini-ImageNet data in {self.folder} is unusable: {cause}. Expected layout: {LAYOUT}."
        )

    def classes(self) -> list[str]:
        """The wnids MIN-MTL uses: the first 50 in sorted order. Class ``i`` of this list is task
        ``i // 5``, label ``i % 5``."""
        names = self.class_names()
        if len(names) < N_CLASSES:
            raise self.error(f"found {len(names)} {self.classes_found}, the protocol needs {N_CLASSES}")
        return sorted(names)[:N_CLASSES]

    def candidates(self, split: str) -> list[Candidate]:
        """The candidate images of ``split``, class-major; ``MTLSplit.source_index`` indexes this list."""
        return [c for pool in self.class_pools(self.classes())[split] for c in pool]

    def draw(self, pools: dict[str, list[list[Candidate]]], generator: torch.Generator) -> dict[str, Pairs]:
        """Each split's pairs: 160 / 10 images of each class drawn from its pool(s) with ``generator``."""
        if not self.shared_pool:
            return {
                split: class_groups(_class_labels(pools[split]), _groups(), PER_CLASS[split], generator)
                for split in SPLITS
            }
        # One draw of 160 + 10 distinct images per class: the first 160 train, the next 10 test.
        need = sum(PER_CLASS.values())
        drawn = class_groups(_class_labels(pools["train"]), _groups(), need, generator)
        cut = {"train": slice(0, PER_CLASS["train"]), "test": slice(PER_CLASS["train"], need)}
        fields = (drawn.source_index, drawn.tasks, drawn.labels)
        return {
            split: Pairs(*(t.view(N_CLASSES, need)[:, part].reshape(-1) for t in fields))
            for split, part in cut.items()
        }

    def check_pool_sizes(self, pools: list[list[Candidate]], classes: list[str]) -> None:
        """A shared pool must hold 160 + 10 images of every class."""
        need = sum(PER_CLASS.values())
        short = [(w, len(p)) for w, p in zip(classes, pools, strict=True) if len(p) < need]
        if short:
            wnid, n = short[0]
            raise self.error(f"class {wnid} has {n} images, the protocol needs {need} (160 train + 10 test)")


class FileLayout(Layout):
    """A layout whose candidates are image files, decoded with torchvision (PIL where it cannot)."""

    def read(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        io = import_torchvision("torchvision.io")
        out = torch.empty(len(candidates), 3, SIZE, SIZE, dtype=torch.uint8)
        with warnings.catch_warnings():
            # torchvision 0.29 warns on every decode that torchvision.io moves to TorchCodec; once is plenty.
            warnings.filterwarnings(
                "ignore", message=".*image decoding and encoding capabilities", category=DeprecationWarning
            )
            for row, path in enumerate(candidates):
                try:
                    # libjpeg-turbo through torchvision is ~2x faster than PIL on these small JPEGs.
                    image = io.decode_image(io.read_file(str(path)), mode=io.ImageReadMode.RGB)
                except Exception as tv_exc:
                    image = self._decode_pil(Path(path), tv_exc)
                out[row] = _resized(image)
        return out

    def _decode_pil(self, path: Path, first_error: Exception) -> torch.Tensor:
        """Fallback for files torchvision cannot decode but PIL can (e.g. unusual JPEG variants)."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                array = np.array(im.convert("RGB"))
        except Exception as exc:
            raise self.error(f"cannot decode {path} ({first_error}; PIL: {exc})") from exc
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class FolderLayout(FileLayout):
    """``mini-imagenet-mtl/{train,test}/<wnid>/*.jpg``: a class folder per split, each split drawn from
    its own folder (torchvision's ``find_classes`` / ``make_dataset`` list them)."""

    name = "folders"
    subfolder = FOLDER
    description = (
        f"<root>/{FOLDER}/{{train,test}}/<wnid>/*.jpg (ImageFolder layout, at least {N_CLASSES} classes "
        f"with {PER_CLASS['train']} train / {PER_CLASS['test']} test images each)"
    )
    classes_found = "class folders in train/"
    shared_pool = False

    @classmethod
    def holds(cls, root: Path) -> bool:
        return (Path(root) / FOLDER).is_dir()

    def _split_classes(self, split: str) -> list[str]:
        folder = self.folder / split
        if not folder.is_dir():
            raise self.error(f"missing folder {split}/")
        try:
            names = import_torchvision("torchvision.datasets.folder").find_classes(folder)[0]
        except FileNotFoundError:  # no class folder at all
            names = []
        return [n for n in names if not n.startswith(".")]

    def class_names(self) -> list[str]:
        return self._split_classes("train")

    def class_pools(self, classes: list[str]) -> dict[str, list[list[Candidate]]]:
        folder_helpers = import_torchvision("torchvision.datasets.folder")
        pools = {}
        for split in SPLITS:  # both listed (and checked) before anything is decoded: a bad folder fails fast
            present = set(self._split_classes(split))
            absent = [w for w in classes if w not in present]
            if absent:
                raise self.error(f"{split}/ has no folder {absent[0]}")
            split_folder = self.folder / split

            def is_image(path: str, split_folder: Path = split_folder) -> bool:
                hidden = any(part.startswith(".") for part in Path(path).relative_to(split_folder).parts)
                return path.lower().endswith(IMAGE_SUFFIXES) and not hidden

            index = {w: i for i, w in enumerate(classes)}
            listed = folder_helpers.make_dataset(
                split_folder, index, is_valid_file=is_image, allow_empty=True
            )
            per_class: list[list[Candidate]] = [[] for _ in classes]
            for path, c in listed:  # class-major, file names sorted inside a class
                per_class[c].append(Path(path))
            for wnid, files in zip(classes, per_class, strict=True):
                if len(files) < PER_CLASS[split]:
                    need = PER_CLASS[split]
                    raise self.error(f"{split}/{wnid} has {len(files)} images, the protocol needs {need}")
            pools[split] = per_class
        return pools


class CsvLayout(FileLayout):
    """``mini-imagenet/images/*.jpg`` with Ravi & Larochelle's ``{train,val,test}.csv``: one pool per
    class over all the CSV files present, both splits drawn from it."""

    name = "csv"
    subfolder = DISTRIBUTION_FOLDER
    files = ("train.csv", "val.csv", "test.csv")
    description = (
        f"<root>/{DISTRIBUTION_FOLDER}/images/*.jpg with Ravi & Larochelle's {{train,val,test}}.csv "
        "beside images/"
    )
    classes_found = "classes in the CSV files"
    shared_pool = True

    @classmethod
    def holds(cls, root: Path) -> bool:
        folder = Path(root) / DISTRIBUTION_FOLDER
        return (folder / "images").is_dir() and any((folder / name).is_file() for name in cls.files)

    @cached_property
    def _files_per_class(self) -> dict[str, list[Path]]:
        """Every class of the CSV files present, with its image files sorted by name."""
        per_class: dict[str, list[Path]] = {}
        for path in (self.folder / name for name in self.files):
            if not path.is_file():
                continue
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                    raise self.error(f"{path} has no filename,label header")
                for row in reader:
                    per_class.setdefault(row["label"], []).append(self.folder / "images" / row["filename"])
        return {wnid: sorted(files, key=lambda f: f.name) for wnid, files in per_class.items()}

    def class_names(self) -> list[str]:
        return list(self._files_per_class)

    def class_pools(self, classes: list[str]) -> dict[str, list[list[Candidate]]]:
        pools: list[list[Candidate]] = [list(self._files_per_class[w]) for w in classes]
        self.check_pool_sizes(pools, classes)
        missing = [f for pool in pools for f in pool if not f.is_file()]
        if missing:
            raise self.error(f"{len(missing)} images the CSV files list are missing, e.g. {missing[0]}")
        return dict.fromkeys(SPLITS, pools)


class PickleLayout(Layout):
    """``mini-imagenet/mini-imagenet-cache-{train,val,test}.pkl``: one pool per class (its rows over the
    caches present, in ascending order), both splits drawn from it. The pickles are read without running
    any code in them."""

    name = "pickle"
    subfolder = DISTRIBUTION_FOLDER
    files = tuple(f"mini-imagenet-cache-{s}.pkl" for s in ("train", "val", "test"))
    description = f"<root>/{DISTRIBUTION_FOLDER}/mini-imagenet-cache-{{train,val,test}}.pkl"
    classes_found = "classes in the pickle caches"
    shared_pool = True

    @classmethod
    def holds(cls, root: Path) -> bool:
        return any((Path(root) / DISTRIBUTION_FOLDER / name).is_file() for name in cls.files)

    @cached_property
    def _caches(self) -> dict[str, dict]:
        """The caches present, by file name: ``image_data`` ``(N, H, W, 3)`` uint8 and ``class_dict``."""
        caches = {}
        for name in self.files:
            path = self.folder / name
            if not path.is_file():
                continue
            try:
                with open(path, "rb") as f:
                    entry = safe_unpickle(f)
            except Exception as exc:  # garbage gives UnpicklingError, EOFError, ValueError, ...
                raise self.error(f"cannot unpickle {path} ({type(exc).__name__}: {exc})") from exc
            data = entry.get("image_data") if isinstance(entry, dict) else None
            classes = entry.get("class_dict") if isinstance(entry, dict) else None
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[3:] == (3,)):
                raise self.error(f"{path}: image_data is not an (N, H, W, 3) uint8 array")
            if not isinstance(classes, dict):
                raise self.error(f"{path}: class_dict is not a dict")
            caches[name] = entry
        return caches

    @cached_property
    def _rows_per_class(self) -> dict[str, list[tuple[str, int]]]:
        """Every class of the caches present, as (cache file name, row) pairs in ascending row order."""
        per_class: dict[str, list[tuple[str, int]]] = {}
        for name, entry in self._caches.items():
            n = entry["image_data"].shape[0]
            for wnid, rows in entry["class_dict"].items():
                rows = sorted(int(r) for r in rows)
                if rows and not 0 <= rows[0] <= rows[-1] < n:
                    raise self.error(f"{self.folder / name}: class {wnid} lists rows outside 0..{n - 1}")
                per_class.setdefault(str(wnid), []).extend((name, r) for r in rows)
        return per_class

    def class_names(self) -> list[str]:
        return list(self._rows_per_class)

    def class_pools(self, classes: list[str]) -> dict[str, list[list[Candidate]]]:
        pools: list[list[Candidate]] = [list(self._rows_per_class[w]) for w in classes]
        self.check_pool_sizes(pools, classes)
        return dict.fromkeys(SPLITS, pools)

    def read(self, candidates: Sequence[Candidate]) -> torch.Tensor:
        out = torch.empty(len(candidates), 3, SIZE, SIZE, dtype=torch.uint8)
        names = np.array([name for name, _ in candidates])
        rows = np.array([row for _, row in candidates], dtype=np.int64)
        for name, entry in self._caches.items():  # one gather per cache
            take = np.flatnonzero(names == name)
            if take.size:
                images = torch.from_numpy(entry["image_data"][rows[take]]).permute(0, 3, 1, 2)
                out[torch.from_numpy(take)] = _resized(images)
        return out


# Looked for in this order; the first the data root holds is read.
LAYOUTS: tuple[type[Layout], ...] = (FolderLayout, CsvLayout, PickleLayout)
LAYOUT = (
    ", or ".join(layout.description for layout in LAYOUTS)
    + "; there is no automatic download, put the files there by hand"
)


def find_layout(data_root: Path) -> Layout:
    """The layout ``data_root`` holds (the first of :data:`LAYOUTS` found); one clear error if none."""
    root = Path(data_root)
    for layout in LAYOUTS:
        if layout.holds(root):
            return layout(root)
    dist = root / DISTRIBUTION_FOLDER
    raise FolderLayout(root).error(
        f"the folder does not exist (nor {dist} with images/ and CSV files, or pickle caches)"
    )


def _resized(images: torch.Tensor) -> torch.Tensor:
    if images.shape[-2:] != (SIZE, SIZE):
        functional = import_torchvision("torchvision.transforms.v2.functional")
        images = functional.resize(images, [SIZE, SIZE], antialias=True)
    return images


def _groups() -> list[list[int]]:
    return [list(range(t * CLASSES_PER_TASK, (t + 1) * CLASSES_PER_TASK)) for t in range(N_TASKS)]


def _class_labels(per_class: list[list[Candidate]]) -> torch.Tensor:
    """The class of each candidate of the class-major list ``per_class`` flattens to."""
    return torch.arange(len(per_class)).repeat_interleave(torch.tensor([len(x) for x in per_class]))


def load(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
    """Build MIN-MTL from ``data_root`` in any of the three layouts. ``download`` is accepted for a
    uniform signature and ignored: mini-ImageNet has no official download, so missing data raises a
    DataError saying where to put it."""
    del download
    layout = find_layout(Path(data_root))
    classes = layout.classes()
    pools = layout.class_pools(classes)
    pairs = layout.draw(pools, seeded_generator(seed))
    splits = {}
    for split in SPLITS:
        candidates = [c for pool in pools[split] for c in pool]

        def read_used(used: torch.Tensor, candidates: list[Candidate] = candidates) -> torch.Tensor:
            return layout.read([candidates[i] for i in used.tolist()])  # only the images pairs use

        splits[split] = pairs[split].split(read_used)
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
        data_folder=layout.folder,
    )
