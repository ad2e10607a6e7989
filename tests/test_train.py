"""train.py end to end: what a run writes, resuming after a kill, bad input, every algorithm, plots.

Runs on the CPU with tiny settings. ``train.main`` runs in-process where it can (no import cost), in
a subprocess where the test needs a real process (kill -9, exit status, ``python -m
training_run.report.plots``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision.datasets.mnist
from sb3_contrib import MaskablePPO

import train
from agents.route_stats import ROUTE_STAT_KEYS
from training_run.folder import PLOT_FILES

REPO = Path(__file__).resolve().parents[1]

TINY = ["--device", "cpu", "--duplicates", "2", "--no-progress"]
# One epoch of 4 batches of 16 episodes, 3 steps each, on the CPU.
SMALL_RUN = [
    "--limit-train", 64, "--limit-test", 60, "--batch-size", 16, "--max-depth", 3, "--eval-batch-size", 64,
    "--minibatch", 8, "--epochs", 1, *TINY,
]  # fmt: skip


def small_run(algo: str = "maskable_ppo") -> list:
    """SMALL_RUN for ``algo``, without the depth where the algorithm fixes its own (5 layers)."""
    if algo not in ("static", "routing_network"):
        return list(SMALL_RUN)
    i = SMALL_RUN.index("--max-depth")
    return SMALL_RUN[:i] + SMALL_RUN[i + 2 :]


RECORD_KEYS = {
    "epoch",
    "wall_clock_s",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_loss",
    "train_loss",
    "per_task_accuracy",
    "per_task_balanced_accuracy",
    *ROUTE_STAT_KEYS,
    "unused_modules",
    "module_usage",
}
# What a resumed run must reproduce exactly (everything but timings).
DETERMINISTIC_KEYS = [
    "epoch",
    "episodes",
    "router_lr",
    "module_lr",
    "train_episodes",
    "train_loss",
    "train_accuracy",
    "train_reward",
    "train_bonus",
    "test_accuracy",
    "test_balanced_accuracy",
    "test_loss",
    "per_task_accuracy",
    "unused_modules",
    "module_usage",
]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_main(argv: list) -> int:
    return train.main([str(a) for a in argv])


def train_cmd(argv: list) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *[str(a) for a in argv]]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``, with its mtime and content."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def deterministic_part(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC_KEYS} for r in records]


# --- a complete run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """The brief's smallest run, on real MNIST when ``$ROUTING_ENV_DATA`` has it."""
    out = tmp_path_factory.mktemp("runs") / "two-epochs"
    argv = ["--limit-train", 256, "--limit-test", 200, "--epochs", 2, *TINY, "--data-root", data_root]
    assert run_main([*argv, "--out", out]) == 0
    return out


def test_run_writes_metrics_config_plots_tensorboard_and_checkpoint(two_epoch_run: Path) -> None:
    out = two_epoch_run
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1]
    n_modules = 6 * 2  # six kinds of module, two duplicates each
    for r in records:
        assert RECORD_KEYS <= r.keys()
        assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["test_balanced_accuracy"] <= 1.0
        assert r["test_pairs"] == 200 and r["train_episodes"] == 256
        assert len(r["per_task_accuracy"]) == len(r["per_task_balanced_accuracy"]) == 10
        usage = r["module_usage"]
        assert len(usage) == 10 and all(len(row) == n_modules for row in usage)
        assert r["unused_modules"] == sum(1 for m in range(n_modules) if not any(row[m] for row in usage))
        # every test route holds an input conv and a head: at least 2 modules per pair
        assert sum(map(sum, usage)) >= 2 * r["test_pairs"]
        # the route statistics agree with the usage counts they summarise
        tasks_using = [sum(row[m] > 0 for row in usage) for m in range(n_modules)]
        assert r["shared_modules"] == sum(n >= 2 for n in tasks_using)
        assert 0.0 <= r["route_overlap"] <= 1.0 and 0.0 <= r["route_overlap_weighted"] <= 1.0
        assert 0.0 <= r["route_entropy_bits"] <= math.log2(r["routes_per_task"])
    assert 0 < records[0]["wall_clock_s"] < records[1]["wall_clock_s"]
    assert records[1]["router_lr"] == pytest.approx(records[0]["router_lr"] * 0.97)

    config = json.loads((out / "config.json").read_text())
    assert config["env_id"] == "RoutingMNIST-v0" and config["algo"] == "maskable_ppo"
    assert (
        config["seed"] == 0 and config["env"]["device"] == "cpu" and config["device_name"].startswith("cpu")
    )
    assert config["train_pairs"] == 256 and config["test_pairs"] == 200 and config["epochs"] == 2

    for png in PLOT_FILES.values():
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert list((out / "tb").glob("events.out.tfevents.*"))
    checkpoint = out / "checkpoint"
    assert {p.name for p in checkpoint.iterdir()} == {"agent.zip", "env.pt", "rng.pt", "state.json"}
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint.old").exists()


def test_plot_cli_draws_several_runs(two_epoch_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-run"
    other.mkdir()
    halved = [{**r, "test_accuracy": r["test_accuracy"] / 2} for r in read_metrics(two_epoch_run)]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in halved))
    fig = tmp_path / "fig.png"
    cmd = [
        sys.executable,
        "-m",
        "training_run.report.plots",
        str(two_epoch_run),
        str(other),
        "--out",
        str(fig),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 5_000
    assert str(fig) in done.stdout

    # a folder that is no run: a clear error, no figure
    bad = subprocess.run(
        [*cmd[:4], str(tmp_path / "nothing"), "--out", str(tmp_path / "no.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "no metrics.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "no.png").exists()


# --- resuming (fixtures resume_argv, uninterrupted: conftest.py) -------------------------------------


def test_resume_after_a_finished_run_continues_at_the_next_epoch(
    uninterrupted: list[dict], resume_argv: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert run_main([*resume_argv, "--epochs", 1, "--out", out]) == 0
    assert [r["epoch"] for r in read_metrics(out)] == [0]
    capsys.readouterr()
    assert run_main([*resume_argv, "--epochs", 3, "--out", out, "--resume"]) == 0
    assert f"resumed {out} after epoch 0" in capsys.readouterr().out
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert deterministic_part(records) == deterministic_part(uninterrupted)
    assert records[2]["wall_clock_s"] > records[1]["wall_clock_s"] > records[0]["wall_clock_s"]
    # nothing left to do: resuming a finished run trains no further epoch
    assert run_main([*resume_argv, "--epochs", 3, "--out", out, "--resume"]) == 0
    assert deterministic_part(read_metrics(out)) == deterministic_part(uninterrupted)


def test_resume_after_kill_reproduces_the_uninterrupted_run(
    uninterrupted: list[dict], resume_argv: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    state = out / "checkpoint" / "state.json"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(
            train_cmd([*resume_argv, "--epochs", 3, "--out", out]),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            # Each epoch ends with metrics, checkpoint, then plots: the first plot file appears once
            # epoch 0 is checkpointed, right before epoch 1 starts.
            deadline = time.monotonic() + 180
            while not (out / "module_usage.png").exists():
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "no epoch finished after 180 s"
                time.sleep(0.01)
            time.sleep(0.3)  # into epoch 1's training
            os.kill(proc.pid, signal.SIGKILL)  # kill -9
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = json.loads(state.read_text())["epoch"]  # the last complete checkpoint
    assert killed_at in (0, 1)
    assert len(read_metrics(out)) in (killed_at + 1, killed_at + 2)  # maybe the epoch after it too

    capsys.readouterr()
    assert run_main([*resume_argv, "--epochs", 3, "--out", out, "--resume"]) == 0
    assert f"resumed {out} after epoch {killed_at}" in capsys.readouterr().out
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert deterministic_part(records) == deterministic_part(uninterrupted)


def test_a_killed_checkpoint_write_falls_back_to_the_previous_one(
    uninterrupted: list[dict], resume_argv: list, tmp_path: Path
) -> None:
    """Killed between the two renames of Checkpoint.save: only checkpoint.old holds the last one."""
    out = tmp_path / "run"
    assert run_main([*resume_argv, "--epochs", 1, "--out", out]) == 0
    os.replace(out / "checkpoint", out / "checkpoint.old")
    (out / "checkpoint.tmp").mkdir()  # a half-written newer one, to be ignored
    assert run_main([*resume_argv, "--epochs", 2, "--out", out, "--resume"]) == 0
    assert deterministic_part(read_metrics(out)) == deterministic_part(uninterrupted[:2])


# --- bad input --------------------------------------------------------------------------------------


def fails(argv: list, capsys: pytest.CaptureFixture) -> str:
    """Run train.main expecting an exit with a non-zero status and one line on stderr, ``error: ...`` (no
    usage, no traceback); return it."""
    with pytest.raises(SystemExit) as info:
        run_main(argv)
    code, err = info.value.code, capsys.readouterr().err
    if isinstance(code, str):  # sys.exit("message"): Python prints it to stderr and exits with 1
        status, message = 1, code + "\n" + err
    else:
        status, message = code, err
    assert status not in (0, None)
    lines = message.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), message
    return lines[0]


def test_unknown_env(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    known = "registered routing env ids: RoutingCIFAR-v0, RoutingMIN-v0, RoutingMNIST-v0"
    for env_id in ("RoutingImageNet-v0", "Nope-v0"):
        line = fails(["--env", env_id, "--out", out], capsys)
        assert f"unknown env id {env_id!r}; {known}" in line
        assert "Did you mean" not in line  # Gymnasium's guess (Nope-v0: "Hopper") is no help here
    assert "not a routing env id" in fails(["--env", "CartPole-v1", "--out", out], capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
        (["--dispatch", "fast"], "argument --dispatch: invalid choice: 'fast'"),
        (["--preset"], "argument --preset: expected one argument"),
        (
            ["--algo", "static", "--max-depth", "6"],
            "--algo static fixes --max-depth 5: leave out --max-depth 6",
        ),
        (["--algo", "routing_network", "--bonus-weight", "0.5"], "leave out --bonus-weight 0.5"),
        (["--no-bonus", "--bonus-weight", "0.5"], "--no-bonus sets --bonus-weight 0.0: leave out"),
    ],
)
def test_a_bad_flag_is_one_line_with_a_pointer_to_help(
    argv: list, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not argparse's usage (~40 lines) first: one line saying what is wrong, and where the flags are."""
    line = fails([*argv, "--out", tmp_path / "run"], capsys)
    assert line.startswith("error: ") and message in line, line
    assert line.endswith("(see: python train.py --help)")
    assert not (tmp_path / "run").exists()


def test_an_algorithm_takes_the_settings_it_fixes_when_they_agree() -> None:
    """--algo static fixes its depth and pool (5 layers); giving the same value is no conflict."""
    cfg = train.parse_command_line(["--algo", "static", "--max-depth", "5"])[0]
    assert cfg.env.max_depth == 5 and cfg.env.pool == "static"
    cfg = train.parse_command_line(["--algo", "routing_network", "--no-bonus"])[0]
    assert cfg.env.bonus_weight == 0.0 and cfg.env.pool == "routing_network"
    # The preset's bonus gives way to the routing network's (no explicit flag contradicts it).
    assert (
        train.parse_command_line(["--algo", "routing_network", "--preset", "best"])[0].env.bonus_weight == 0
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "-1"], "--epochs must be >= 0"),
        (["--duplicates", "0"], "--duplicates must be >= 1"),
        (["--limit-train", "0"], "--limit-train must be >= 1"),
        (["--max-depth", "1"], "--max-depth must be >= 2"),
        (["--algo", "sac"], "invalid choice: 'sac'"),
        (["--duplicate", "3"], "unrecognized arguments: --duplicate 3"),  # no abbreviations
        (["--device", "tpu"], "unknown --device 'tpu'"),
        (["--task-prior-std", "-1"], "--task-prior-std must be >= 0"),
        (["--task-prior-std", "3", "--algo", "dqn"], "--task-prior-std is a RouterPolicy option"),
    ],
)
def test_bad_numbers_and_choices(
    argv: list, message: str, tmp_path: Path, fake_data_root: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert message in fails([*argv, "--data-root", fake_data_root, "--out", out], capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, cause",
    [
        # offline: torchvision's MNIST download fails at once, with a message over several lines
        ([], "download failed (RuntimeError: Error downloading train-images-idx3-ubyte.gz: Tried "),
        # --no-download: no attempt at all (a network call would turn into "download failed")
        (["--no-download"], "missing "),
    ],
)
def test_missing_data_is_one_line_and_writes_nothing(
    flags: list, cause: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def offline(*args, **kwargs):
        raise URLError("no network\n  (torchvision's messages span lines)")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    empty, out = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    message = fails(["--data-root", empty, "--out", out, "--device", "cpu", "--no-progress", *flags], capsys)
    assert message.startswith(f"error: MNIST data in {empty / 'MNIST'} is unusable: {cause}"), message
    assert "Expected layout" in message and len(message.strip().splitlines()) == 1, message
    assert ("(torchvision's messages span lines)" in message) == (not flags)  # the cause, joined
    assert not out.exists()
    assert list(empty.iterdir()) == []  # no partial download left behind either


def test_existing_run_needs_resume(
    two_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(two_epoch_run)
    line = fails(["--out", two_epoch_run, *TINY], capsys)
    assert "already holds a run" in line and "--resume" in line
    assert snapshot(two_epoch_run) == before
    # a resume needs a checkpoint
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    assert "no checkpoint" in fails(["--out", empty_run, "--resume", *TINY], capsys)
    assert list(empty_run.iterdir()) == []


def test_error_exit_of_the_script(two_epoch_run: Path) -> None:
    """The same through a real process: non-zero status, one line on stderr, no traceback."""
    before = snapshot(two_epoch_run)
    done = subprocess.run(
        train_cmd(["--out", two_epoch_run, *TINY]), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {two_epoch_run} already holds a run; pass --resume to continue it or choose another --out"
    ]
    assert snapshot(two_epoch_run) == before


# --- every algorithm --------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "static"])
def test_each_algorithm_runs_an_epoch(algo: str, fake_data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / algo
    argv = ["--algo", algo, *small_run(algo), "--data-root", fake_data_root]
    assert run_main([*argv, "--out", out]) == 0
    (record,) = read_metrics(out)
    assert record["epoch"] == 0 and record["train_episodes"] == 64 and record["test_pairs"] == 60
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == algo
    assert (out / "checkpoint" / "state.json").exists()
    if algo == "static":
        # the fixed network: max_depth forced to 5, every route [0, 1, 2, 3, 4 + task]
        assert config["env"]["max_depth"] == 5 and config["env"]["pool"] == "static"
        usage = record["module_usage"]
        for t, row in enumerate(usage):
            n = row[0]
            assert row[:4] == [n, n, n, n]
            assert row[4:] == [n if u == t else 0 for u in range(len(usage))]
        assert record["mean_route_modules"] == 5.0
    else:
        assert (out / "checkpoint" / "agent.zip").exists()


def test_task_prior_flag_reaches_config_and_checkpoint(fake_data_root: Path, tmp_path: Path) -> None:
    """--task-prior-std (not in the paper) is recorded in config.json and built into the saved router."""
    out = tmp_path / "prior"
    argv = ["--task-prior-std", 3, *SMALL_RUN, "--data-root", fake_data_root]
    assert run_main([*argv, "--out", out]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["router"]["task_prior_std"] == 3.0
    policy = MaskablePPO.load(out / "checkpoint" / "agent.zip", device="cpu").policy
    assert policy.router_config.task_prior_std == 3.0
    assert policy.router.task_prior.weight.shape == (10, int(policy.action_space.n))
    assert train.parse_command_line(["--preset", "paper"])[0].router.task_prior_std == 0.0  # the paper's
    assert train.parse_command_line([])[0].router.task_prior_std == 3.0  # the default preset "best" has it


def test_cifar_format_runs_end_to_end(fake_data_root: Path, tmp_path: Path) -> None:
    """A user with CIFAR-100 gets CIFAR-MTL with one command: train, evaluate, plot, on files in
    torchvision's CIFAR-100 format (written by the tests; the real data is not here)."""
    out = tmp_path / "cifar"
    argv = ["--env", "RoutingCIFAR-v0", "--epochs", 1, "--limit-train", 256, "--task-prior-std", 3]
    assert run_main([*argv, "--bonus-weight", 0.1, *TINY, "--data-root", fake_data_root, "--out", out]) == 0
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    assert config["env_id"] == "RoutingCIFAR-v0" and config["env"]["benchmark"] == "cifar"
    assert len(record["per_task_accuracy"]) == 20  # one task per CIFAR-100 superclass
    assert record["test_pairs"] == config["test_pairs"] > 0
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert (out / "accuracy.png").exists() and (out / "checkpoint").is_dir()
