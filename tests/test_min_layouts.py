"""MIN-MTL from the common mini-ImageNet distributions: the ``images/`` folder with Ravi & Larochelle's CSV
split files, and the pickle caches of few-shot loaders, written small here (the fake mini-ImageNet's
52 classes of 177 images, named as the real files are)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import block_images, fake_wnids
from PIL import Image

from routing_env.benchmarks import DataError, mini_imagenet

N_CLASSES, PER_CLASS = 52, 177  # the fake data's classes and images per class (165 train + 12 test)
# A few-shot class split that is not in wnid order, so the first 50 sorted wnids span all three files.
SPLIT_OF_CLASS = {"train": range(0, 52, 3), "val": range(1, 52, 3), "test": range(2, 52, 3)}


def _class_files(fake_data_root: Path) -> dict[str, list[Path]]:
    """The fake JPEGs of each wnid (both of our splits' folders, as our layout lists them), named
    ``<wnid><8 digits>.jpg``."""
    wnids = fake_wnids(N_CLASSES)
    pools = mini_imagenet.FolderLayout(fake_data_root).class_pools(wnids)
    return {wnid: pools["train"][c] + pools["test"][c] for c, wnid in enumerate(wnids)}


@pytest.fixture(scope="module")
def csv_root(fake_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mini-imagenet/images/*.jpg`` (links to the fake JPEGs) and ``{train,val,test}.csv``."""
    root = tmp_path_factory.mktemp("min-csv")
    images = root / "mini-imagenet" / "images"
    images.mkdir(parents=True)
    wnids = fake_wnids(N_CLASSES)
    files = _class_files(fake_data_root)
    for split, classes in SPLIT_OF_CLASS.items():
        lines = ["filename,label"]
        for c in classes:
            for f in files[wnids[c]]:
                (images / f.name).symlink_to(f)
                lines.append(f"{f.name},{wnids[c]}")
        (root / "mini-imagenet" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def pickle_caches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """``mini-imagenet/mini-imagenet-cache-{train,val,test}.pkl``: ``image_data`` (N, 84, 84, 3) uint8 and
    ``class_dict`` {wnid: rows}, rows of a class interleaved with other classes' (as shuffled caches are).
    Returns the data root and the caches written, by file name."""
    root = tmp_path_factory.mktemp("min-pickle")
    (root / "mini-imagenet").mkdir()
    wnids = fake_wnids(N_CLASSES)
    rng = np.random.default_rng(0)
    caches = {}
    for split, classes in SPLIT_OF_CLASS.items():
        classes = list(classes)
        labels = rng.permutation(np.repeat(np.arange(len(classes)), PER_CLASS))
        data = block_images(np.array(classes)[labels], size=84, channels=3, grid=8, block=8, rng=rng)
        name = f"mini-imagenet-cache-{split}.pkl"
        caches[name] = {
            "image_data": np.ascontiguousarray(data.transpose(0, 2, 3, 1)),
            "class_dict": {wnids[c]: np.flatnonzero(labels == i).tolist() for i, c in enumerate(classes)},
        }
        with open(root / "mini-imagenet" / name, "wb") as f:
            pickle.dump(caches[name], f, protocol=4)
    return root, caches


@pytest.fixture(scope="module")
def csv_bench(csv_root: Path):
    return mini_imagenet.load(csv_root, seed=0)


def _check_protocol(bench, classes: list[str], wnid_of_source: list[str]) -> None:
    """160 / 10 images per class, class i = task i // 5 label i % 5, train and test disjoint."""
    for split, per_class in (("train", 160), ("test", 10)):
        s = getattr(bench, split)
        assert len(s) == 50 * per_class
        cls = s.tasks * 5 + s.labels
        assert torch.equal(torch.bincount(cls, minlength=50), torch.full((50,), per_class))
        assert [wnid_of_source[i] for i in s.source_index.tolist()] == [classes[c] for c in cls.tolist()]
        assert torch.unique(s.source_index).numel() == len(s)
    assert not set(bench.train.source_index.tolist()) & set(bench.test.source_index.tolist())
    assert list(bench.task_names) == [",".join(classes[5 * t : 5 * t + 5]) for t in range(10)]


def test_csv_layout(csv_root: Path, csv_bench) -> None:
    layout = mini_imagenet.find_layout(csv_root)
    assert isinstance(layout, mini_imagenet.CsvLayout) and csv_bench.data_folder == csv_root / "mini-imagenet"
    classes = layout.classes()
    assert classes == fake_wnids(N_CLASSES)[:50]  # the first 50 sorted wnids of all three CSV files
    assert {s for s, cs in SPLIT_OF_CLASS.items() for c in cs if c < 50} == {"train", "val", "test"}
    files = layout.candidates("train")
    assert files == layout.candidates("test")  # one pool per class for both splits
    assert len(files) == 50 * PER_CLASS and files == sorted(files, key=lambda f: (f.name[:9], f.name))
    bench = csv_bench
    _check_protocol(bench, classes, [f.name[:9] for f in files])
    for split in ("train", "test"):  # the stored pixels are the files' (JPEG decoders differ by a level)
        s = getattr(bench, split)
        for row in (0, len(s) // 2, len(s) - 1):
            decoded = np.asarray(Image.open(files[s.source_index[row]]).convert("RGB"))
            ours = s.images[s.image_index[row]].permute(1, 2, 0).numpy()
            assert np.abs(decoded.astype(int) - ours.astype(int)).mean() < 2


def test_pickle_layout(pickle_caches: tuple[Path, dict[str, dict]], csv_bench) -> None:
    pickle_root, caches = pickle_caches
    layout = mini_imagenet.find_layout(pickle_root)
    assert isinstance(layout, mini_imagenet.PickleLayout)
    classes = layout.classes()
    assert classes == fake_wnids(N_CLASSES)[:50]
    rows = layout.candidates("train")
    assert rows == layout.candidates("test")
    wnid_of = {
        (name, r): wnid
        for name, cache in caches.items()
        for wnid, rs in cache["class_dict"].items()
        for r in rs
    }
    bench = mini_imagenet.load(pickle_root, seed=0)
    _check_protocol(bench, classes, [wnid_of[row] for row in rows])
    for split in ("train", "test"):  # the pixels are the cache's, exactly (channels first)
        s = getattr(bench, split)
        expected = np.stack([caches[rows[i][0]]["image_data"][rows[i][1]] for i in s.source_index.tolist()])
        np.testing.assert_array_equal(s.images[s.image_index].permute(0, 2, 3, 1).numpy(), expected)
    # Both distributions list a class's images in one order and draw alike: the same pairs for a seed.
    for split in ("train", "test"):
        a, b = getattr(bench, split), getattr(csv_bench, split)
        assert torch.equal(a.source_index, b.source_index) and torch.equal(a.labels, b.labels)
    other = mini_imagenet.load(pickle_root, seed=1)  # another seed: other images, the same layout
    assert not torch.equal(other.train.source_index, bench.train.source_index)
    assert torch.equal(other.train.tasks, bench.train.tasks)


def test_our_folders_come_first_and_errors_name_every_layout(
    csv_root: Path, fake_data_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "mini-imagenet").symlink_to(csv_root / "mini-imagenet", target_is_directory=True)
    assert isinstance(mini_imagenet.find_layout(tmp_path), mini_imagenet.CsvLayout)
    (tmp_path / "mini-imagenet-mtl").symlink_to(
        fake_data_root / "mini-imagenet-mtl", target_is_directory=True
    )
    assert isinstance(mini_imagenet.find_layout(tmp_path), mini_imagenet.FolderLayout)
    with pytest.raises(DataError) as info:
        mini_imagenet.load(tmp_path / "nowhere")
    message = str(info.value)
    assert "mini-imagenet-mtl/{train,test}" in message and "train,val,test}.csv" in message
    assert "mini-imagenet-cache-{train,val,test}.pkl" in message


def test_csv_layout_errors(csv_root: Path, tmp_path: Path) -> None:
    dist = tmp_path / "mini-imagenet"
    (dist / "images").mkdir(parents=True)
    (dist / "train.csv").write_text("file,class\nx.jpg,n0\n")
    with pytest.raises(DataError, match="no filename,label header"):
        mini_imagenet.load(tmp_path)
    lines = (csv_root / "mini-imagenet" / "train.csv").read_text().splitlines()
    for name in ("val.csv", "test.csv"):
        (dist / name).symlink_to(csv_root / "mini-imagenet" / name)
    (dist / "train.csv").write_text("\n".join(lines[:1] + lines[11:]) + "\n")  # class 0 loses 10 images
    with pytest.raises(DataError, match=f"class {fake_wnids(N_CLASSES)[0]} has {PER_CLASS - 10} images"):
        mini_imagenet.load(tmp_path)
    (dist / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="images the CSV files list are missing"):
        mini_imagenet.load(tmp_path)  # images/ is empty here


def test_pickle_layout_refuses_code(tmp_path: Path) -> None:
    (tmp_path / "mini-imagenet").mkdir()
    with open(tmp_path / "mini-imagenet" / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump(
            {"image_data": np.zeros((1, 84, 84, 3), np.uint8), "class_dict": {"n0": [0]}, "x": Path()}, f
        )
    with pytest.raises(DataError, match="forbidden object"):
        mini_imagenet.load(tmp_path)
