"""The benchmark protocols (counts, labels, provenance, seeding) and their data errors.

Runs on the real MNIST and mini-ImageNet when ``$ROUTING_ENV_DATA`` holds them, on fake data in the real
formats otherwise (CIFAR-100 is always fake here). Each benchmark is loaded once per module.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import os
import pickle
import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
from datagen import (
    BENCHMARK_FOLDERS,
    FAKE_SIZES,
    corrupt_file,
    fake_wnids,
    has_real_data,
    link_tree,
    py2_pickle_bytes,
    requires_real_data,
    write_fake_mnist,
)
from PIL import Image

from routing_env.benchmarks import (
    DATA_ENV_VAR,
    DataError,
    MTLBenchmark,
    MTLSplit,
    TorchvisionError,
    cifar,
    load_benchmark,
    mini_imagenet,
    mnist,
    registered_benchmarks,
)

# --- loaded once per module -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_root(real_or_fake_root) -> Path:
    return real_or_fake_root("mnist")


@pytest.fixture(scope="module")
def cifar_root(real_or_fake_root) -> Path:
    return real_or_fake_root("cifar")


@pytest.fixture(scope="module")
def min_root(real_or_fake_root) -> Path:
    return real_or_fake_root("min")


@pytest.fixture(scope="module")
def mnist_bench(mnist_root: Path) -> MTLBenchmark:
    return mnist.load(mnist_root, seed=0, download=False)


@pytest.fixture(scope="module")
def cifar_bench(cifar_root: Path) -> MTLBenchmark:
    return cifar.load(cifar_root, seed=0, download=False)


@pytest.fixture(scope="module")
def min_bench(min_root: Path) -> MTLBenchmark:
    return mini_imagenet.load(min_root, seed=0)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file parsed here with NumPy (independently of torchvision's reader)."""
    data = path.read_bytes()
    ndim = data[3]
    shape = np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(shape)


@pytest.fixture(scope="module")
def mnist_raw(mnist_root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Images and digits of MNIST's train and test files."""
    raw = mnist_root / "MNIST" / "raw"
    return {
        split: (
            torch.from_numpy(_read_idx(raw / f"{prefix}-images-idx3-ubyte").copy()),
            torch.from_numpy(_read_idx(raw / f"{prefix}-labels-idx1-ubyte").astype(np.int64)),
        )
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


@pytest.fixture(scope="module")
def cifar_raw(cifar_root: Path) -> dict[str, dict]:
    """The CIFAR-100 pickles, read here with plain pickle (keys normalised to str)."""
    out = {}
    for name in ("train", "test", "meta"):
        with open(cifar_root / "cifar-100-python" / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        out[name] = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    return out


def _splits(bench: MTLBenchmark) -> dict[str, MTLSplit]:
    return {"train": bench.train, "test": bench.test}


def _equal(a: MTLBenchmark, b: MTLBenchmark) -> bool:
    return all(
        torch.equal(x, y)
        for split in ("train", "test")
        for x, y in zip(_splits(a)[split]._fields(), _splits(b)[split]._fields())
    )


# --- every benchmark ------------------------------------------------------------------------------

SHAPES = {"mnist": (10, 2, (1, 28, 28)), "cifar": (20, 5, (3, 32, 32)), "min": (10, 5, (3, 84, 84))}


@pytest.mark.parametrize("name", ["cifar", "min", "mnist"])
def test_structure(name: str, request: pytest.FixtureRequest) -> None:
    bench: MTLBenchmark = request.getfixturevalue(f"{name}_bench")
    n_tasks, n_classes, image_shape = SHAPES[name]
    assert (bench.name, bench.n_tasks, bench.n_classes, bench.image_shape) == (
        name,
        n_tasks,
        n_classes,
        image_shape,
    )
    assert len(bench.task_names) == n_tasks and all(bench.task_names)
    for split in _splits(bench).values():
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == image_shape
        n = len(split)
        for t in (split.image_index, split.tasks, split.labels, split.source_index):
            assert t.dtype == torch.int64 and t.shape == (n,)
        assert 0 <= split.tasks.min() and split.tasks.max() < n_tasks
        assert 0 <= split.labels.min() and split.labels.max() < n_classes
        # Images are stored once and all of them are used.
        assert torch.equal(torch.unique(split.image_index), torch.arange(split.images.shape[0]))
        # Every task sees every one of its labels.
        pairs = torch.unique(split.tasks * n_classes + split.labels)
        assert torch.equal(pairs, torch.arange(n_tasks * n_classes))


def test_registry_and_load_benchmark(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"mnist", "cifar", "min"} <= set(registered_benchmarks())
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        load_benchmark("imagenet", data_root)
    assert load_benchmark("cifar", data_root, download=False).name == "cifar"
    monkeypatch.setenv(DATA_ENV_VAR, str(data_root))  # no data_root argument: $ROUTING_ENV_DATA
    assert load_benchmark("mnist", download=False).name == "mnist"


@requires_real_data("mnist")
def test_real_mnist_files(mnist_raw: dict, mnist_bench: MTLBenchmark) -> None:
    assert mnist_raw["train"][0].shape == (60_000, 28, 28) and mnist_raw["test"][0].shape == (10_000, 28, 28)
    # Independent draws of 10 x 10,000 images out of 60,000: most images are used, many by several tasks.
    assert 40_000 < mnist_bench.train.images.shape[0] < 60_000


@requires_real_data("min")
def test_real_min_folders(min_root: Path) -> None:
    for split, per_class in (("train", 160), ("test", 10)):
        class_dirs = list((min_root / "mini-imagenet-mtl" / split).iterdir())
        assert len(class_dirs) >= 50 and all(len(list(d.iterdir())) >= per_class for d in class_dirs)


# --- MNIST-MTL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "per_digit"), [("train", 1000), ("test", 20)])
def test_mnist_protocol(mnist_bench: MTLBenchmark, mnist_raw: dict, split: str, per_digit: int) -> None:
    s = _splits(mnist_bench)[split]
    raw_images, raw_digits = mnist_raw[split]
    assert len(s) == 10 * 10 * per_digit  # 100,000 train pairs, 2,000 test pairs
    assert torch.equal(torch.bincount(s.tasks, minlength=10), torch.full((10,), 10 * per_digit))
    # Provenance: each pair shows the image at source_index of the right MNIST file (test from t10k).
    assert torch.equal(s.images[s.image_index, 0], raw_images[s.source_index])
    assert s.images.shape[0] == torch.unique(s.source_index).numel()  # stored once
    digits = raw_digits[s.source_index]
    assert torch.equal(s.labels, (digits == s.tasks).long())  # one-vs-all: 1 = "is digit t"
    # per_digit images of every digit in every task: per_digit positives, 9 x per_digit negatives.
    counts = torch.bincount(s.tasks * 10 + digits, minlength=100)
    assert torch.equal(counts, torch.full((100,), per_digit))
    assert torch.equal(torch.bincount(s.tasks[s.labels == 1], minlength=10), torch.full((10,), per_digit))
    # Without replacement inside a task; independent across tasks (the tasks draw different images).
    keys = s.tasks * raw_images.shape[0] + s.source_index
    assert torch.unique(keys).numel() == len(s)
    first_two = [set(s.source_index[(s.tasks == t) & (digits == 5)].tolist()) for t in (0, 1)]
    assert first_two[0] != first_two[1]


def test_mnist_seeding(mnist_root: Path, mnist_bench: MTLBenchmark) -> None:
    assert _equal(mnist.load(mnist_root, seed=0, download=False), mnist_bench)
    other = mnist.load(mnist_root, seed=1, download=False)
    for split in ("train", "test"):
        a, b = _splits(mnist_bench)[split], _splits(other)[split]
        assert torch.equal(a.tasks, b.tasks) and torch.equal(a.labels, b.labels)
        assert set(a.source_index[a.tasks == 0].tolist()) != set(b.source_index[b.tasks == 0].tolist())


# --- CIFAR-MTL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_protocol(cifar_bench: MTLBenchmark, cifar_raw: dict, split: str) -> None:
    s = _splits(cifar_bench)[split]
    raw = cifar_raw[split]
    fine_raw = np.asarray(raw["fine_labels"])
    # Every image used exactly once; each pair shows its source image.
    assert torch.equal(torch.sort(s.source_index).values, torch.arange(len(fine_raw)))
    expected = torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32))[s.source_index]
    assert torch.equal(s.images[s.image_index], expected)
    fine = torch.from_numpy(fine_raw)[s.source_index]
    assert torch.equal(s.tasks, torch.as_tensor(raw["coarse_labels"])[s.source_index])
    # 5 x (images per fine label) pairs per task: 2,500 / 500 with the real data.
    per_fine = np.bincount(fine_raw, minlength=100)
    assert (per_fine == per_fine[0]).all()
    if not has_real_data("cifar"):
        assert per_fine[0] == FAKE_SIZES["cifar"][f"{split}_per_fine"]
    assert torch.equal(torch.bincount(s.tasks, minlength=20), torch.full((20,), 5 * int(per_fine[0])))
    fine_mod_collides = False
    for k in range(20):
        in_task = s.tasks == k
        fines = torch.unique(fine[in_task])  # sorted
        assert fines.numel() == 5
        # The label is the rank of the fine label in the superclass: distinct, covering 0..4.
        assert torch.equal(s.labels[in_task], torch.searchsorted(fines, fine[in_task]))
        fine_mod_collides |= torch.unique(fines % 5).numel() < 5
    assert fine_mod_collides  # so `fine % 5` would have been wrong: the rank test means something
    names = [n.decode() if isinstance(n, bytes) else n for n in cifar_raw["meta"]["coarse_label_names"]]
    assert list(cifar_bench.task_names) == names


def test_cifar_ignores_seed(cifar_root: Path, cifar_bench: MTLBenchmark) -> None:
    assert _equal(cifar.load(cifar_root, seed=7, download=False), cifar_bench)


# --- MIN-MTL --------------------------------------------------------------------------------------


def _rel(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


@pytest.mark.parametrize(("split", "per_class"), [("train", 160), ("test", 10)])
def test_min_protocol(min_bench: MTLBenchmark, min_root: Path, split: str, per_class: int) -> None:
    s = _splits(min_bench)[split]
    assert len(s) == 50 * per_class  # 800 / 50 per task
    assert torch.equal(torch.bincount(s.tasks, minlength=10), torch.full((10,), 5 * per_class))
    assert torch.equal(torch.bincount(s.tasks * 5 + s.labels, minlength=50), torch.full((50,), per_class))
    # The first 50 wnids in sorted order, grouped in order: class i is task i // 5, label i % 5.
    all_wnids = sorted(d.name for d in (min_root / "mini-imagenet-mtl" / split).iterdir() if d.is_dir())
    layout = mini_imagenet.find_layout(min_root)
    classes = layout.classes()
    assert classes == all_wnids[:50]
    if not has_real_data("min"):
        assert len(all_wnids) == FAKE_SIZES["min"]["n_classes"] > 50
        assert classes == fake_wnids(FAKE_SIZES["min"]["n_classes"])[:50]
    files = layout.candidates(split)
    wnid_of_pair = [files[i].parent.name for i in s.source_index.tolist()]
    assert wnid_of_pair == [classes[int(c)] for c in s.tasks * 5 + s.labels]
    assert list(min_bench.task_names) == [",".join(classes[5 * t : 5 * t + 5]) for t in range(10)]
    assert torch.unique(s.source_index).numel() == len(s)  # without replacement
    # The stored pixels are the files' (JPEG decoders may differ by a grey level or two).
    for row in torch.randperm(len(s), generator=torch.Generator().manual_seed(0))[:8].tolist():
        decoded = np.asarray(Image.open(files[s.source_index[row]]).convert("RGB").resize((84, 84)))
        ours = s.images[s.image_index[row]].permute(1, 2, 0).numpy()
        assert np.abs(decoded.astype(int) - ours.astype(int)).mean() < 2


def test_min_train_test_disjoint(min_bench: MTLBenchmark, min_root: Path) -> None:
    layout = mini_imagenet.find_layout(min_root)
    files = {split: layout.candidates(split) for split in ("train", "test")}
    assert not set(_rel(files["train"])) & set(_rel(files["test"]))  # no file in both folders
    used = {
        split: [files[split][i] for i in _splits(min_bench)[split].source_index.tolist()] for split in files
    }
    digests = {split: {hashlib.sha1(p.read_bytes()).digest() for p in used[split]} for split in used}
    # No image in both under another name either. (Not "no duplicates inside a split": the real
    # mini-ImageNet has one image filed under two training classes, n02108551 and n02111277.)
    assert not digests["train"] & digests["test"]


def test_each_benchmark_names_the_folder_it_read(
    mnist_bench: MTLBenchmark, cifar_bench: MTLBenchmark, min_bench: MTLBenchmark, real_or_fake_root
) -> None:
    for bench, name in ((mnist_bench, "mnist"), (cifar_bench, "cifar"), (min_bench, "min")):
        assert bench.data_folder == real_or_fake_root(name) / BENCHMARK_FOLDERS[name]


def test_min_seeding(min_root: Path, min_bench: MTLBenchmark) -> None:
    # One reload with another seed: the same pairs layout, other files (the real data has exactly 160
    # training images per class, so only the test draw can differ there).
    other = mini_imagenet.load(min_root, seed=1)
    assert torch.equal(other.train.tasks, min_bench.train.tasks)
    assert not torch.equal(other.test.source_index, min_bench.test.source_index)
    if not has_real_data("min"):
        assert not torch.equal(other.train.source_index, min_bench.train.source_index)


# --- data errors ----------------------------------------------------------------------------------

LOADERS = {"mnist": mnist.load, "cifar": cifar.load, "min": mini_imagenet.load}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_missing_folder(name: str, tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        LOADERS[name](root, download=False)
    message = str(info.value)
    assert str(root / BENCHMARK_FOLDERS[name]) in message and "Expected layout" in message


class _MismatchedTorchvision(importlib.abc.MetaPathFinder):
    """Fails every torchvision import as a torchvision built for another torch does."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.partition(".")[0] == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")


@pytest.mark.parametrize(("name", "download"), [("mnist", False), ("cifar", True), ("min", False)])
def test_a_torchvision_that_does_not_fit_torch_is_one_clear_line(
    name: str, download: bool, fake_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [m for m in sys.modules if m.partition(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [_MismatchedTorchvision(), *sys.meta_path])
    root = tmp_path if download else fake_data_root  # CIFAR-100 needs torchvision only to download
    with pytest.raises(TorchvisionError) as info:
        LOADERS[name](root, download=download)
    message = str(info.value)
    assert "\n" not in message and "operator torchvision::nms does not exist" in message
    assert f"torch {torch.__version__}" in message and f"torchvision {version('torchvision')}" in message
    assert "must come as a matching pair from one index" in message
    assert f"pip install --force-reinstall torch=={torch.__version__.split('+')[0]} torchvision" in message
    assert isinstance(info.value, DataError)  # train.py prints a DataError as its one line
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or half-written


def test_min_has_no_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="by hand"):
        mini_imagenet.load(tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def mnist_copy(fake_data_root: Path, tmp_path: Path) -> Path:
    link_tree(fake_data_root / "MNIST", tmp_path / "MNIST")
    return tmp_path


@pytest.mark.parametrize(
    ("file", "how"),
    [
        ("train-images-idx3-ubyte", "truncate"),
        ("train-labels-idx1-ubyte", "truncate"),
        ("t10k-images-idx3-ubyte", "garbage"),
        ("t10k-labels-idx1-ubyte", "garbage"),
    ],
)
def test_mnist_corrupt_file(mnist_copy: Path, file: str, how: str) -> None:
    corrupt_file(mnist_copy / "MNIST" / "raw" / file, how)
    with pytest.raises(DataError, match="MNIST/raw/") as info:
        mnist.load(mnist_copy, download=False)
    assert str(mnist_copy / "MNIST") in str(info.value)


def test_mnist_label_count_mismatch(mnist_copy: Path) -> None:
    raw = mnist_copy / "MNIST" / "raw"
    labels = _read_idx(raw / "t10k-labels-idx1-ubyte")
    (raw / "t10k-labels-idx1-ubyte").unlink()
    from datagen import write_idx

    write_idx(raw / "t10k-labels-idx1-ubyte", labels[:-1])
    with pytest.raises(DataError, match="labels"):
        mnist.load(mnist_copy, download=False)


def test_mnist_too_few_images(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path, train_per_digit=999, test_per_digit=20)
    with pytest.raises(DataError, match="999 images of digit"):
        mnist.load(tmp_path, download=False)


def test_mnist_incomplete_folder_is_not_overwritten(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", _must_not_download)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        mnist.load(mnist_copy, download=True)


@pytest.fixture
def cifar_copy(fake_data_root: Path, tmp_path: Path) -> Path:
    link_tree(fake_data_root / "cifar-100-python", tmp_path / "cifar-100-python")
    return tmp_path


def _rewrite_pickle(path: Path, edit) -> None:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    path.unlink()  # a symlink into the shared fake data: replace it, never write through it
    path.write_bytes(py2_pickle_bytes(edit(entry)))


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but a data file has no business calling functions


@pytest.mark.parametrize(
    ("file", "damage", "match"),
    [
        ("train", "garbage", "cannot unpickle train"),
        ("test", "truncate", "cannot unpickle test"),
        ("meta", "garbage", "cannot unpickle meta"),
        ("train", lambda e: {**e, b"data": e[b"data"][:, :3000]}, "3072"),
        ("test", lambda e: {k: v for k, v in e.items() if k != b"coarse_labels"}, "coarse_labels"),
        ("test", lambda e: {**e, b"fine_labels": [100] * len(e[b"fine_labels"])}, "outside"),
        ("test", lambda e: {**e, b"coarse_labels": [(c + 1) % 20 for c in e[b"coarse_labels"]]}, "several"),
        ("meta", lambda e: {**e, b"coarse_label_names": e[b"coarse_label_names"][:19]}, "20 names"),
        ("train", lambda e: {**e, b"extra": _Sneaky()}, "forbidden"),
    ],
)
def test_cifar_corrupt_file(cifar_copy: Path, file: str, damage, match: str) -> None:
    path = cifar_copy / "cifar-100-python" / file
    if isinstance(damage, str):
        corrupt_file(path, damage)
    elif file == "train" and match == "forbidden":
        path.unlink()
        path.write_bytes(pickle.dumps({"data": _Sneaky()}))
    else:
        _rewrite_pickle(path, damage)
    with pytest.raises(DataError, match=match) as info:
        cifar.load(cifar_copy, download=False)
    assert str(cifar_copy / "cifar-100-python") in str(info.value)


@pytest.fixture
def min_copy(fake_data_root: Path, tmp_path: Path) -> Path:
    """A private view of the fake mini-ImageNet: class folders are symlinks (~100 links, not ~9,000)."""
    for split in ("train", "test"):
        (tmp_path / "mini-imagenet-mtl" / split).mkdir(parents=True)
        for class_dir in (fake_data_root / "mini-imagenet-mtl" / split).iterdir():
            link = tmp_path / "mini-imagenet-mtl" / split / class_dir.name
            link.symlink_to(class_dir, target_is_directory=True)
    return tmp_path


def _first_class(root: Path, split: str = "train") -> Path:
    """The first class folder of ``split``, made a real folder of file symlinks that a test may damage."""
    link = sorted((root / "mini-imagenet-mtl" / split).iterdir())[0]
    target = link.resolve()
    link.unlink()
    return link_tree(target, link)


@pytest.mark.parametrize("how", ["garbage", "truncate"])
def test_min_corrupt_jpeg(min_copy: Path, how: str) -> None:
    class_dir = _first_class(min_copy)
    for path in class_dir.iterdir():  # all of them, so that whichever is drawn first is bad
        corrupt_file(path, how)
    with pytest.raises(DataError, match="cannot decode") as info:
        mini_imagenet.load(min_copy)
    assert str(class_dir) in str(info.value)  # names the file


def test_min_too_few_classes(min_copy: Path) -> None:
    train = min_copy / "mini-imagenet-mtl" / "train"
    for class_dir in sorted(train.iterdir())[:3]:  # 52 - 3 = 49 classes
        class_dir.unlink()  # a symlink
    with pytest.raises(DataError, match="49 class folders"):
        mini_imagenet.load(min_copy)


@pytest.mark.parametrize(("split", "keep"), [("train", 159), ("test", 9)])
def test_min_too_few_images(min_copy: Path, split: str, keep: int) -> None:
    class_dir = _first_class(min_copy, split)
    for path in sorted(class_dir.iterdir())[keep:]:
        path.unlink()
    with pytest.raises(DataError, match=f"{split}/{class_dir.name} has {keep} images"):
        mini_imagenet.load(min_copy)


def test_min_test_class_missing(min_copy: Path) -> None:
    sorted((min_copy / "mini-imagenet-mtl" / "test").iterdir())[0].unlink()  # a symlink
    with pytest.raises(DataError, match="test/ has no folder"):
        mini_imagenet.load(min_copy)


def test_min_resizes_and_converts(min_copy: Path) -> None:
    # The first class's training images become grey 100x60 JPEGs: converted to RGB and resized.
    for path in _first_class(min_copy).iterdir():
        path.unlink()  # a symlink into the shared fake data: replace it, never write through it
        Image.new("L", (100, 60), color=200).save(path, format="JPEG")
    bench = mini_imagenet.load(min_copy)
    first = bench.train.images[bench.train.image_index[bench.train.tasks * 5 + bench.train.labels == 0]]
    assert first.shape[1:] == (3, 84, 84)
    assert (first.float() - 200).abs().max() <= 2


# --- downloads (never reaching the network) ---------------------------------------------------------


def _must_not_download(*args, **kwargs):
    raise AssertionError("no download expected")


def _offline(monkeypatch: pytest.MonkeyPatch, fake) -> None:
    """Route torchvision's downloads to ``fake``, and make any other network access fail."""

    def no_network(*args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", fake)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fake)


@pytest.mark.parametrize("name", ["mnist", "cifar"])
def test_failed_download_leaves_nothing(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_download(url: str, download_root: str, *args, **kwargs) -> None:
        (Path(download_root) / "partial.tar.gz").write_bytes(b"\x1f\x8b half an archive")
        raise URLError("connection refused")

    _offline(monkeypatch, half_download)
    with pytest.raises(DataError, match="download failed") as info:
        LOADERS[name](tmp_path, download=True)
    assert str(tmp_path / BENCHMARK_FOLDERS[name]) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the scratch download folder


@pytest.mark.parametrize("name", ["mnist", "cifar"])
def test_download_moves_complete_folder(
    name: str, tmp_path: Path, fake_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_download(url: str, download_root: str, *args, **kwargs) -> None:
        if name == "mnist":  # one .gz per call, extracted next to it
            file = Path(url).name.removesuffix(".gz")
            shutil.copy(fake_data_root / "MNIST" / "raw" / file, Path(download_root) / file)
        else:  # the whole archive, extracted into download_root
            shutil.copytree(fake_data_root / "cifar-100-python", Path(download_root) / "cifar-100-python")

    _offline(monkeypatch, fake_download)
    # torchvision checks CIFAR-100's md5 sums, which fake files cannot match: accept any file present.
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )
    bench = LOADERS[name](tmp_path, download=True)
    assert [p.name for p in tmp_path.iterdir()] == [BENCHMARK_FOLDERS[name]]  # no scratch left behind
    assert _equal(bench, LOADERS[name](fake_data_root, download=False))
