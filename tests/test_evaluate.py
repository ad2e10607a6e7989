"""A trained run in a researcher's hands (``training_run.evaluate``): ``python -m training_run.evaluate`` on a
finished run folder prints the test accuracy of its last metrics line and draws its routes; ``load_run``'s
env and SB3 model reproduce it through SB3's own ``predict`` (examples/evaluate_run.py); a weights file
(pool and router, no optimizer state) is a fraction of the checkpoint and evaluates the same; bad input is
one line.

A finished run of the resume tests' small settings (conftest.py's ``resume_argv``: fake MNIST, 6 batches).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import REPO, read_metrics, run_main

from examples import evaluate_run
from training_run import evaluate


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, resume_argv: list) -> Path:
    out = tmp_path_factory.mktemp("runs") / "finished"
    argv = [*resume_argv, "--epochs", 1, "--val-fraction", 0.1, "--save-weights", "--out", out]
    assert run_main(argv) == 0
    return out


def accuracy_line(record: dict) -> str:
    balanced = 100 * record["test_balanced_accuracy"]
    return f"test: accuracy {100 * record['test_accuracy']:.2f}%, balanced {balanced:.2f}%"


def test_the_command_prints_the_runs_last_test_accuracy_and_draws_its_routes(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    last = read_metrics(finished_run)[-1]
    weights = tmp_path / "shared" / "model.pt"
    argv = [str(finished_run), "--render", "2", "--device", "cpu", "--save-weights", str(weights)]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert f"weights after epoch {last['epoch']}" in out
    accuracy = accuracy_line(last)
    assert accuracy in out
    written = json.loads((finished_run / "evaluation-test.json").read_text())
    for key in (
        "test_accuracy",
        "test_balanced_accuracy",
        "per_task_accuracy",
        "module_usage",
        "route_overlap",
    ):
        assert written[key] == last[key], key  # the run's own evaluation, to the bit
    picture = Image.open(finished_run / "routes-test.png")
    assert (
        picture.size[0] > 1000
        and len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 8
    )

    # the validation split, as the run scored it
    assert evaluate.main([str(finished_run), "--split", "val", "--device", "cpu"]) == 0
    balanced = 100 * last["val_balanced_accuracy"]
    assert (
        f"val: accuracy {100 * last['val_accuracy']:.2f}%, balanced {balanced:.2f}%"
        in capsys.readouterr().out
    )

    # the weights file: a fraction of the checkpoint, and the same evaluation
    checkpoint = sum(p.stat().st_size for p in (finished_run / "checkpoint").iterdir())
    assert weights.stat().st_size < checkpoint / 2
    assert evaluate.main([str(weights), "--device", "cpu"]) == 0
    assert accuracy in capsys.readouterr().out


def test_load_run_gives_the_trained_env_and_model_for_sb3s_predict(finished_run: Path) -> None:
    """examples/evaluate_run.py (docs/environment.md's recipe): the env walks the test pairs with the trained
    pool, and the SB3 model's deterministic ``predict`` routes them as the run's evaluation did."""
    last = read_metrics(finished_run)[-1]
    harness, sb3 = evaluate_run.main(str(finished_run), device="cpu")
    assert harness == last["test_accuracy"]
    assert sb3 == pytest.approx(last["test_accuracy"])
    # without the run's weights, the same env routes otherwise: what load_run saves a user from
    run = evaluate.load_run(finished_run, device="cpu")
    fresh = type(run.env).from_config(run.env.config)
    trained, untrained = run.env.engine.pool.state_dict(), fresh.engine.pool.state_dict()
    assert any(not torch.equal(trained[k], untrained[k]) for k in trained)


def test_a_run_made_with_save_weights_writes_them_when_it_ends(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``train.py --save-weights``: weights.pt beside the checkpoint, a fraction of its size; a folder that
    holds no checkpoint (``--no-checkpoint``, or one removed to share the folder) evaluates from it."""
    checkpoint = sum(p.stat().st_size for p in (finished_run / "checkpoint").iterdir())
    assert (finished_run / "weights.pt").stat().st_size < checkpoint / 2
    shared = tmp_path / "shared-run"
    shutil.copytree(finished_run, shared, ignore=shutil.ignore_patterns("checkpoint*"))
    capsys.readouterr()
    assert evaluate.main([str(shared), "--device", "cpu"]) == 0
    assert accuracy_line(read_metrics(finished_run)[-1]) in capsys.readouterr().out


def test_bad_input_is_one_line(finished_run: Path, tmp_path: Path) -> None:
    not_weights = tmp_path / "notes.txt"
    not_weights.write_text("not a model")
    no_val = tmp_path / "no-val"  # the run as if made without a validation split
    shutil.copytree(finished_run, no_val)
    config = json.loads((no_val / "config.json").read_text())
    config["env"]["val_fraction"] = 0.0
    (no_val / "config.json").write_text(json.dumps(config))
    for argv, message in [
        (
            [no_val, "--split", "val"],
            "the run has no validation split (it was made without --val-fraction)",
        ),
        ([tmp_path], f"{tmp_path} holds no run (no config.json)"),
        ([not_weights], f"{not_weights} is not a weights file"),
    ]:
        with pytest.raises(SystemExit) as info:
            evaluate.main([*map(str, argv), "--device", "cpu"])
        line = str(info.value.code)
        assert len(line.splitlines()) == 1 and line.startswith("error: ") and message in line, line


def test_the_recorded_weights_file_of_train_pys_settings_is_under_300_mb(fake_data_root: Path) -> None:
    """results/checkpoints/sizes.json (docs' sizes, scripts/checkpoint_sizes.py) was measured on the pool of
    ``python train.py``'s settings as the code builds it now, and its weights file is at most 300 MB: the
    pool's fp32 weights, the router's, and little else."""
    from routing_env.build import build_pool, get_benchmark
    from training_run.settings import RunConfig

    sizes = json.loads((REPO / "results" / "checkpoints" / "sizes.json").read_text())
    env = RunConfig.from_settings({"env.data_root": str(fake_data_root)}).env  # MNIST-MTL's shapes
    pool = build_pool(env, get_benchmark(env))
    n_weights = sum(t.numel() for t in pool.state_dict().values())
    assert (sizes["env_id"], sizes["duplicates"], sizes["max_depth"]) == (
        "RoutingMNIST-v0",
        env.duplicates,
        6,
    )
    assert sizes["pool_parameters"] == n_weights
    assert 4 * n_weights < sizes["weights_file_bytes"] <= 300e6
    assert sizes["weights_file_bytes"] < sizes["checkpoint_bytes"] / 2.5
    assert sizes["test_accuracy_of_weights_file"] == sizes["test_accuracy_logged"]
