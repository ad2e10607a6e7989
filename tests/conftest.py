"""Shared fixtures: fake data in the real formats (written once per session), and the real data when
``$ROUTING_ENV_DATA`` holds it.

Fixtures:
    fake_data_root: a folder holding fake MNIST, CIFAR-100 and mini-ImageNet (see FAKE_SIZES).
    real_or_fake_root: a function ``(name) -> Path``: ``$ROUTING_ENV_DATA`` if it holds benchmark
        ``name`` ("mnist", "cifar", "min"), else ``fake_data_root``.
    data_root: one folder where every benchmark loads, real data where present, fake otherwise
        (symlinks to either).
    resume_argv: train.py's flags of the small run the resume tests stop and continue (6 batches per
        epoch, fake MNIST; one thread: faster for these small ops on a busy CPU).
    uninterrupted: the metrics records of that run, 3 epochs, without a stop.
Helpers (import them with ``from datagen import ...``): ``has_real_data(name)``,
``requires_real_data(name)`` (a skip marker), ``real_data_root(name)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from datagen import (  # tests/ is on the path: setup.cfg's pythonpath
    BENCHMARK_FOLDERS,
    FAKE_SIZES,
    real_data_root,
    write_fake_cifar100,
    write_fake_mini_imagenet,
    write_fake_mnist,
)


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with all three fake data sets (about 4 s to write, once per session). Read-only:
    tests that damage data must work on a copy (see ``datagen.link_tree``)."""
    root = tmp_path_factory.mktemp("fake-data")
    write_fake_mnist(root, **FAKE_SIZES["mnist"])
    write_fake_cifar100(root, **FAKE_SIZES["cifar"])
    write_fake_mini_imagenet(root, **FAKE_SIZES["min"])
    return root


@pytest.fixture(scope="session")
def real_or_fake_root(fake_data_root: Path) -> Callable[[str], Path]:
    """``root(name)``: the real data root for benchmark ``name`` if present, else the fake one."""

    def root(name: str) -> Path:
        return real_data_root(name) or fake_data_root

    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory, real_or_fake_root: Callable[[str], Path]) -> Path:
    """A single data root for every benchmark: links to the real data where present, else to fake data."""
    root = tmp_path_factory.mktemp("mixed-data")
    for name, folder in BENCHMARK_FOLDERS.items():
        (root / folder).symlink_to(real_or_fake_root(name) / folder, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module of many small ops: faster on a small shared CPU (and avoids
    OpenMP's spin-waits when other processes keep the cores busy). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def resume_argv(fake_data_root: Path) -> list:
    return [
        "--limit-train", 192, "--limit-test", 100, "--batch-size", 32, "--max-depth", 3,
        "--eval-batch-size", 128, "--device", "cpu", "--duplicates", 2, "--no-progress", "--threads", 1,
        "--data-root", fake_data_root,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, resume_argv: list) -> list[dict]:
    import train

    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    assert train.main([str(a) for a in [*resume_argv, "--epochs", 3, "--out", out]]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    return records
