"""RL Baselines3 Zoo trains on the env with the hyperparameter files in ``hyperparams/`` (a few steps each,
tiny env kwargs, CPU). Skipped when rl_zoo3 is not installed (the ``zoo`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents.algorithms import SB3_SETUPS

pytest.importorskip("rl_zoo3")
REPO = Path(__file__).resolve().parents[1]
ZOO_ALGOS = [s.zoo for s in SB3_SETUPS if s.zoo]
ENV_IDS = ["RoutingMNIST-v0", "RoutingCIFAR-v0", "RoutingMIN-v0"]
# The zoo's --env-kwargs / -params take key:python-literal pairs.
TINY_ENV = ["download:False", "device:'cpu'", "duplicates:1", "max_depth:3", "max_pairs:32", "batch_size:4"]
SMALL = {
    "ppo": ["n_steps:6", "batch_size:6"],
    "a2c": ["n_steps:3"],
    "trpo": ["n_steps:6", "batch_size:6", "cg_max_steps:2", "n_critic_updates:1"],
    "dqn": ["learning_starts:6", "batch_size:6"],
    "qrdqn": ["learning_starts:6", "batch_size:6"],
    "ppo_lstm": ["n_steps:6", "batch_size:6"],
    "ars": ["n_delta:2", "n_eval_episodes:1"],
}
ROUTER = "dict(d_model=32, n_heads=2, d_ff=64{})"


def zoo_args(algo: str, data_root: Path, logs: Path) -> list[str]:
    params = list(SMALL[algo])
    if algo in ("ppo", "a2c", "trpo"):  # RouterPolicy: a small router (TRPO keeps the math attention)
        params.append(
            "policy_kwargs:" + ROUTER.format(", attention_backend='math'" if algo == "trpo" else "")
        )
    return [
        "--algo", algo, "--env", "RoutingMNIST-v0", "--gym-packages", "routing_env",
        "-conf", str(REPO / "hyperparams" / f"{algo}.yml"), "-n", "24",
        "--env-kwargs", f"data_root:'{data_root}'", *TINY_ENV,
        "-params", *params,
        "--eval-freq", "-1", "-f", str(logs), "--device", "cpu", "--seed", "0", "--verbose", "0",
    ]  # fmt: skip


def run_python(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repo with one torch thread, tests/ importable; fails the test with its
    stderr's tail."""
    path = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_every_file_covers_every_env_id() -> None:
    assert sorted(p.stem for p in (REPO / "hyperparams").glob("*.yml")) == sorted(ZOO_ALGOS)
    for algo in ZOO_ALGOS:
        config = yaml.safe_load((REPO / "hyperparams" / f"{algo}.yml").read_text())
        assert sorted(config) == sorted(ENV_IDS), algo
        assert all(c["n_envs"] == 1 for c in config.values())  # one env: one module pool


def test_rl_zoo_train_ppo_command_line(fake_data_root: Path, tmp_path: Path) -> None:
    """``python -m rl_zoo3.train --algo ppo --env RoutingMNIST-v0 --gym-packages routing_env -conf ...``"""
    run_python(["-m", "rl_zoo3.train", *zoo_args("ppo", fake_data_root, tmp_path)], timeout=300)
    saved = tmp_path / "ppo" / "RoutingMNIST-v0_1"
    assert (saved / "RoutingMNIST-v0.zip").is_file()
    assert "RouterPolicy" in (saved / "RoutingMNIST-v0" / "config.yml").read_text()


RUN_ALL = """
import sys
from rl_zoo3.train import train
from test_rl_zoo import zoo_args  # tests/ is on PYTHONPATH (run_python)
for algo in sys.argv[1:]:
    sys.argv = ["rl_zoo3.train", *zoo_args(algo, {root!r}, {logs!r})]
    train()
    print("trained", algo, flush=True)
"""


@pytest.mark.slow
def test_rl_zoo_trains_every_algorithm_file(fake_data_root: Path, tmp_path: Path) -> None:
    """The other files, in one process (the zoo's imports cost more than these few steps)."""
    algos = [a for a in ZOO_ALGOS if a != "ppo"]
    script = RUN_ALL.format(root=str(fake_data_root), logs=str(tmp_path))
    done = run_python(["-c", script, *algos], timeout=400)
    for algo in algos:
        assert f"trained {algo}" in done.stdout
        assert (tmp_path / algo / "RoutingMNIST-v0_1" / "RoutingMNIST-v0.zip").is_file(), algo
