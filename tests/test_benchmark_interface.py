"""The public benchmark interface: the task-shape helpers, ``register_benchmark`` (by function, by path,
``module:name``), benchmark kwargs, and the example of docs/benchmarks.md through gym and train.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import routing_env
import train
from routing_env import RoutingConfig, RoutingSB3VecEnv
from routing_env.benchmarks import (
    DataError,
    MTLBenchmark,
    class_groups,
    load_benchmark,
    one_vs_all,
    registered_benchmarks,
    seeded_generator,
)
from routing_env.build import get_benchmark

REPO = Path(__file__).resolve().parents[1]
LABELS = torch.arange(6).repeat_interleave(torch.tensor([5, 6, 7, 5, 8, 9]))  # 6 classes, uneven sizes


# --- the task-shape helpers --------------------------------------------------------------------------


def test_one_vs_all() -> None:
    pairs = one_vs_all(LABELS, 4, seeded_generator(0))
    classes = LABELS[pairs.source_index]
    assert len(pairs.tasks) == 6 * 6 * 4
    assert torch.equal(torch.bincount(pairs.tasks * 6 + classes), torch.full((36,), 4))
    assert torch.equal(pairs.labels, (classes == pairs.tasks).long())
    assert torch.unique(pairs.tasks * 100 + pairs.source_index).numel() == len(pairs.tasks)  # no repeats
    again = one_vs_all(LABELS, 4, seeded_generator(0))
    assert torch.equal(again.source_index, pairs.source_index)
    assert not torch.equal(one_vs_all(LABELS, 4, seeded_generator(1)).source_index, pairs.source_index)
    with pytest.raises(DataError, match="the source has 5 images of class 0, the protocol needs 6"):
        one_vs_all(LABELS, 6, seeded_generator(0))


def test_class_groups_draws_and_uses_every_image() -> None:
    groups = [[4, 1], [0, 5, 2]]  # class 3 in no task
    drawn = class_groups(LABELS, groups, 3, seeded_generator(0))
    classes = LABELS[drawn.source_index]
    assert classes.tolist() == [4] * 3 + [1] * 3 + [0] * 3 + [5] * 3 + [2] * 3  # task, class, draw
    assert drawn.tasks.tolist() == [0] * 6 + [1] * 9
    assert drawn.labels.tolist() == [0] * 3 + [1] * 3 + [0] * 3 + [1] * 3 + [2] * 3
    assert torch.unique(drawn.source_index).numel() == 15
    every = class_groups(LABELS, groups, None)
    assert sorted(every.source_index.tolist()) == torch.nonzero(LABELS != 3).squeeze(1).tolist()
    assert every.tasks.tolist() == sorted(every.tasks.tolist())  # grouped by task, source order inside
    with pytest.raises(ValueError, match="several groups"):
        class_groups(LABELS, [[0, 1], [1, 2]], 2, seeded_generator(0))


def test_pairs_split_stores_each_image_once() -> None:
    images = torch.arange(len(LABELS), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    pairs = one_vs_all(LABELS, 3, seeded_generator(0))
    split = pairs.split(images)
    assert split.images.shape[0] == torch.unique(pairs.source_index).numel()
    assert torch.equal(split.images[split.image_index][:, 0, 0, 0].long(), pairs.source_index)
    decoded = []
    lazy = pairs.split(lambda used: decoded.append(used) or images[used])  # only the used ones decoded
    assert torch.equal(lazy.images, split.images) and torch.equal(
        decoded[0], torch.unique(pairs.source_index)
    )


# --- registration ------------------------------------------------------------------------------------


def tiny_loader(data_root: Path, seed: int = 0, download: bool = True, per_class: int = 3) -> MTLBenchmark:
    """A benchmark from LABELS with images that show their class (no files)."""
    images = (LABELS * 40).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    g = seeded_generator(seed)
    train, test = one_vs_all(LABELS, per_class, g), one_vs_all(LABELS, 1, g)
    return MTLBenchmark("tiny", 6, 2, (1, 8, 8), train.split(images), test.split(images))


def test_register_benchmark_with_kwargs_and_an_env_id(tmp_path: Path) -> None:
    routing_env.register_benchmark("tiny", tiny_loader, env_id="RoutingTiny-v0")
    assert "tiny" in registered_benchmarks() and "RoutingTiny-v0" in routing_env.routing_env_ids()
    # The loader lives in this test module, so the env id names the benchmark with its module.
    assert routing_env.benchmark_of("RoutingTiny-v0") == f"{__name__}:tiny"
    kw = dict(data_root=tmp_path, device="cpu", duplicates=1, max_depth=3)
    env = gym.make("RoutingTiny-v0", benchmark_kwargs={"per_class": 2}, **kw)
    assert len(env.unwrapped.engine.data) == 6 * 6 * 2
    # Other kwargs are another benchmark (the cache is keyed by them), not the cached one.
    assert len(RoutingSB3VecEnv("RoutingTiny-v0", num_envs=2, **kw).engine.data) == 6 * 6 * 3
    with pytest.raises(TypeError, match="does not take the benchmark_kwargs"):
        gym.make("RoutingTiny-v0", benchmark_kwargs={"size": 1}, **kw)
    with pytest.raises(ValueError, match="benchmark_kwargs must be a dict"):
        RoutingConfig(benchmark="tiny", benchmark_kwargs=[1])
    # The same loader again is fine; another under the same name needs overwrite=True.
    routing_env.register_benchmark("tiny", tiny_loader, env_id="RoutingTiny-v0")
    with pytest.raises(ValueError, match="already registered"):
        routing_env.register_benchmark("tiny", "routing_env.benchmarks.mnist:load")
    with pytest.raises(ValueError, match="without ':'"):
        routing_env.register_benchmark("a:b", tiny_loader)


def test_a_re_registered_loader_is_loaded_anew(tmp_path: Path) -> None:
    routing_env.register_benchmark("tiny2", tiny_loader)
    kw = dict(benchmark="tiny2", data_root=tmp_path, device="cpu", duplicates=1, max_depth=3)
    assert routing_env.RoutingEnv(**kw).benchmark.n_tasks == 6

    def five_tasks(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
        b = tiny_loader(data_root, seed)
        keep = b.train.tasks < 5
        return MTLBenchmark(
            "tiny", 5, 2, b.image_shape, b.train.subset(torch.nonzero(keep).squeeze(1)), b.test
        )

    routing_env.register_benchmark("tiny2", five_tasks, overwrite=True)
    assert routing_env.RoutingEnv(**kw).benchmark.n_tasks == 5


def test_data_folder_is_where_the_loader_read(tmp_path: Path) -> None:
    """A loader that says where it read its data keeps that folder (it may lie outside the data root);
    one that does not is taken to have read the data root."""
    routing_env.register_benchmark("tiny3", tiny_loader)
    assert load_benchmark("tiny3", tmp_path / "root").data_folder == tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"

    def reads_elsewhere(data_root: Path, seed: int = 0, download: bool = True) -> MTLBenchmark:
        return dataclasses.replace(tiny_loader(data_root, seed), data_folder=elsewhere)

    routing_env.register_benchmark("tiny3", reads_elsewhere, overwrite=True)
    assert load_benchmark("tiny3", tmp_path / "root").data_folder == elsewhere
    config = RoutingConfig(benchmark="tiny3", data_root=tmp_path / "root", device="cpu")
    assert get_benchmark(config).data_folder == elsewhere  # what train.py prints as "data:"


def test_module_name_form_imports_the_registering_module() -> None:
    assert load_benchmark.__module__  # the registry is importable without torch work
    config = RoutingConfig(benchmark="examples.shapes_benchmark:shapes")
    assert config.benchmark == "examples.shapes_benchmark:shapes" and "shapes" in registered_benchmarks()
    with pytest.raises(ValueError, match="did not register 'nothing'"):
        RoutingConfig(benchmark="examples.shapes_benchmark:nothing")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        RoutingConfig(benchmark="no_such_module:x")
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        RoutingConfig(benchmark="imagenet")


# --- the worked example of docs/benchmarks.md ---------------------------------------------------------


def test_readme_example_benchmark_through_gym_and_train_py(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from examples.shapes_benchmark import write_demo_data

    write_demo_data(tmp_path / "data")
    env_id = "examples.shapes_benchmark:RoutingShapes-v0"
    env = gym.make(env_id, data_root=tmp_path / "data", device="cpu", duplicates=1, max_depth=3)
    bench = env.unwrapped.benchmark
    assert (bench.name, bench.n_tasks, bench.image_shape) == ("shapes", 4, (1, 16, 16))
    assert len(bench.train) == 4 * 4 * 20 and len(bench.test) == 4 * 4 * 5
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (1, 16, 16)

    out = tmp_path / "run"
    argv = [
        "--env", env_id, "--data-root", str(tmp_path / "data"), "--epochs", "1",
        "--benchmark-kwargs", '{"per_class": 8}', "--batch-size", "16", "--limit-train", "48",
        "--duplicates", "1", "--max-depth", "3", "--d-model", "32", "--n-heads", "2", "--d-ff", "64",
        "--device", "cpu", "--out", str(out), "--no-progress", "--no-checkpoint",
    ]  # fmt: skip
    assert train.main(argv) == 0  # in-process: train.py as the docs run it, without a second import of torch
    # The folder the loader read, not the data root it was given.
    assert f"data: {tmp_path / 'data' / 'shapes'}\n" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["test_pairs"] == 4 * 4 * 5
    config = (out / "config.json").read_text()
    assert '"benchmark": "examples.shapes_benchmark:shapes"' in config and '"per_class": 8' in config


def test_train_py_help_lists_every_registered_id() -> None:
    done = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    help_text = " ".join(done.stdout.split())
    for env_id in ("RoutingMNIST-v0", "RoutingCIFAR-v0", "RoutingMIN-v0"):
        assert env_id in help_text
    assert "module:Id" in help_text


def test_demo_data_is_learnable(tmp_path: Path) -> None:
    """The demo images tell their classes apart (a bright square per quadrant)."""
    from examples.shapes_benchmark import write_demo_data

    with np.load(write_demo_data(tmp_path)) as data:
        images, labels = data["train_images"], data["train_labels"]
    quadrant = images[:, 0].reshape(len(labels), 2, 8, 2, 8).mean(axis=(2, 4)).reshape(len(labels), 4)
    assert (quadrant.argmax(axis=1) == labels).all()
