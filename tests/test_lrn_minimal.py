"""examples/lrn_minimal.py, the one-file LRN training script, on the tests' small MNIST: it trains, routes
the test pairs once and reports accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from examples import lrn_minimal

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lrn_minimal_trains_and_reports_test_accuracy(
    fake_data_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [
        "lrn_minimal.py", "--data-root", str(fake_data_root), "--device", "cpu", "--num-envs", "8",
        "--train-pairs", "48", "--test-pairs", "20", "--max-depth", "3", "--duplicates", "1",
        "--d-model", "32",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    args = lrn_minimal.parse_args()
    assert (args.num_envs, args.train_pairs, args.d_model, args.lr) == (8, 48, 32, lrn_minimal.Args.lr)
    result = lrn_minimal.main(args)
    assert result["pairs"] == 20  # every test pair once, though 20 is not a multiple of the 8 envs
    assert 0 <= result["balanced_accuracy"] <= 1 and 0 <= result["accuracy"] <= 1
    assert math.isclose(result["accuracy"] * 20, round(result["accuracy"] * 20))  # a share of 20 pairs
    out = capsys.readouterr().out
    assert "trained 144 steps" in out  # 48 pairs x 3 steps, one epoch
    assert f"test: accuracy {result['accuracy']:.3f}, balanced accuracy" in out
