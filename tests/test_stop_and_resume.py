"""Stopping and continuing a run as a user does: Ctrl-C, SIGTERM, kill -9 (before the first checkpoint
and within an epoch), ``--resume`` with changed flags, torn metrics, TensorBoard after a resume, a
diverging run, and the first lines and seconds of a run (bad ``--out``, threads, the time estimate).

Runs on the CPU with tiny settings (fixtures ``resume_argv`` and ``uninterrupted`` in conftest.py: 6
batches per epoch). Subprocesses where the test needs a real process (signals, kill -9, exit status,
what gets imported); ``train.main`` in-process otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from datagen import requires_real_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import REPO, deterministic_part, fails, read_metrics, run_main, small_run, snapshot, train_cmd

from training_run import guards, loop, machine
from training_run.settings import FIRST_RUN, FirstRun, RunConfig


def strict_json(line: str) -> dict:
    """``json.loads`` that refuses NaN and Infinity (which Python's json would accept)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 180, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(poll)


def checkpoint_state(out: Path) -> dict | None:
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())
    except (OSError, ValueError):  # not there yet, or being renamed into place
        return None


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory, resume_argv: list) -> Path:
    """The first epoch of the ``uninterrupted`` run, stopped there; tests work on copies."""
    out = tmp_path_factory.mktemp("runs") / "one-epoch"
    assert run_main([*resume_argv, "--epochs", 1, "--out", out]) == 0
    return out


@pytest.fixture
def run_copy(one_epoch_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    return out


# --- --resume and the saved settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, differences",
    [
        (
            ["--lr", "1e-3", "--seed", "5", "--no-bonus"],
            [
                "--lr 0.001 (the run has 0.0001)",
                "--seed 5 (the run has 0)",
                "--bonus-weight 0.0 (the run has 0.1)",
            ],
        ),
        (["--duplicates", "3"], ["--duplicates 3 (the run has 2)"]),
        (["--limit-train", "64"], ["--limit-train 64 (the run has 192)"]),
        (["--algo", "static"], ["--algo static (the run has maskable_ppo)"]),
        # a switch is named as given, and as the run has it (not "--no-freeze-unused True")
        (["--freeze-unused"], ["--freeze-unused (the run has --no-freeze-unused)"]),
    ],
)
def test_resume_refuses_a_changed_setting_in_one_line_and_changes_nothing(
    flags: list, differences: list, run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(run_copy)
    line = fails(["--out", run_copy, "--resume", "--epochs", "3", *flags], capsys)
    assert len(line.splitlines()) == 1, line
    assert line.startswith(f"error: --resume: {run_copy} was started with other settings: "), line
    for difference in differences:
        assert difference in line
    assert "a resumed run may change only --epochs" in line and "--epochs 3" not in line  # allowed
    assert snapshot(run_copy) == before


def test_resume_cannot_shrink_a_run_below_its_epochs(run_copy: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(run_copy)
    line = fails(["--out", run_copy, "--resume", "--epochs", "0"], capsys)
    assert "--epochs 0 is fewer than the 1 epochs" in line
    assert snapshot(run_copy) == before


def test_resume_takes_the_saved_settings_and_records_what_changed(
    uninterrupted: list[dict], run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--out X --resume`` alone continues with the run's own settings (not the flags' defaults);
    config.json records each allowed change."""
    assert run_main(["--out", run_copy, "--resume", "--epochs", 3]) == 0
    out = capsys.readouterr().out
    assert f"resumed {run_copy} after epoch 0" in out
    assert deterministic_part(read_metrics(run_copy)) == deterministic_part(uninterrupted)
    # a run that ends says what it reached, where its plots are and how to evaluate it
    last = uninterrupted[-1]
    summary = out[out.index(f"finished: {run_copy}, epochs: 3") :]
    assert f"last epoch 2: test accuracy {100 * last['test_accuracy']:.2f}%" in summary
    assert "accuracy.png" in summary and f"python -m training_run.evaluate {run_copy}" in summary
    config = json.loads((run_copy / "config.json").read_text())
    assert config["epochs"] == 3 and config["env"]["max_pairs"] == 192 and config["env"]["duplicates"] == 2
    (resumed,) = config["resumed"]
    assert resumed["from"] == "after epoch 0"
    assert resumed["changed"]["run.epochs"] == [1, 3]
    assert set(resumed["changed"]) == {"run.epochs", "run.out"}  # the folder was copied elsewhere


def test_resuming_a_complete_run_says_so_and_writes_nothing(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(run_copy)
    assert run_main(["--out", run_copy, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"{run_copy} is complete: its checkpoint holds every epoch (1)" in out
    assert "--epochs N above 1 trains it longer" in out
    assert f"finished: {run_copy}, epochs: 1" in out  # the run's summary
    assert snapshot(run_copy) == before  # no "resumed" entry in config.json


def test_resume_without_out_names_the_folder_it_continues(
    one_epoch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    default = Path(RunConfig.from_settings({}).out)  # runs/RoutingMNIST-v0-maskable_ppo-s0
    shutil.copytree(one_epoch_run, tmp_path / default)
    monkeypatch.chdir(tmp_path)
    assert run_main(["--resume"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"--resume without --out: the run in {default}, train.py's folder for these flags\n"
    )


def test_config_json_is_rewritten_only_after_the_checkpoint_loads(
    run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    (run_copy / "checkpoint" / "env.pt").write_bytes(b"not a checkpoint")
    before = snapshot(run_copy)
    line = fails(["--out", run_copy, "--resume", "--epochs", "2"], capsys)
    assert line.startswith(f"error: --resume: the checkpoint in {run_copy} cannot be loaded (")
    assert len(line.splitlines()) == 1, line
    assert snapshot(run_copy) == before


# --- runs stopped before their first checkpoint, torn metrics, TensorBoard --------------------------


def test_a_run_killed_before_its_first_checkpoint_starts_over_with_resume(
    uninterrupted: list[dict], resume_argv: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(
            train_cmd([*resume_argv, "--epochs", 3, "--out", out]),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:  # TensorBoard's file appears just before the first batch
            wait_for(lambda: list(out.glob("tb/events.out.tfevents.*")), "TensorBoard file", proc)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert not (out / "checkpoint").exists(), "the first epoch ended before the kill"
    assert not (out / "metrics.jsonl").exists() and (out / "config.json").exists()
    # A plain start, even with other settings, must not overwrite it: one line says how to go on.
    before = snapshot(out)
    line = fails([*resume_argv, "--duplicates", 3, "--epochs", 1, "--out", out], capsys)
    assert line == (
        f"error: {out} holds a run stopped before its first checkpoint; pass --resume to start it over or "
        "choose another --out"
    )
    assert snapshot(out) == before
    assert run_main([*resume_argv, "--epochs", 3, "--out", out, "--resume"]) == 0
    assert f"{out} has no checkpoint (the run stopped before its first one): starting it over" in (
        capsys.readouterr().out
    )
    assert deterministic_part(read_metrics(out)) == deterministic_part(uninterrupted)


def test_a_run_with_metrics_but_no_checkpoint_starts_over(
    uninterrupted: list[dict], run_copy: Path, resume_argv: list, capsys: pytest.CaptureFixture
) -> None:
    """Killed between an epoch's metrics line and its checkpoint: a plain start says how to go on, and
    --resume starts over without keeping the stale metrics or TensorBoard steps."""
    shutil.rmtree(run_copy / "checkpoint")
    line = fails([*resume_argv, "--epochs", 3, "--out", run_copy], capsys)
    assert "stopped before its first checkpoint; pass --resume to start it over" in line
    assert run_main([*resume_argv, "--epochs", 2, "--out", run_copy, "--resume"]) == 0
    assert deterministic_part(read_metrics(run_copy)) == deterministic_part(uninterrupted[:2])
    assert tensorboard_steps(run_copy) == [0, 1]


def test_a_run_made_without_checkpoints_is_never_started_over(
    run_copy: Path, resume_argv: list, capsys: pytest.CaptureFixture
) -> None:
    """A --no-checkpoint run keeps its metrics: neither a plain start nor --resume overwrites them."""
    shutil.rmtree(run_copy / "checkpoint")
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "checkpoint": False}))
    before = snapshot(run_copy)
    line = fails([*resume_argv, "--epochs", 1, "--out", run_copy, "--no-checkpoint"], capsys)
    assert f"{run_copy} holds a run made with --no-checkpoint; choose another --out" in line
    line = fails(["--out", run_copy, "--resume"], capsys)
    assert "was run with --no-checkpoint: there is nothing to continue" in line
    assert snapshot(run_copy) == before


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(
    uninterrupted: list[dict], run_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    with (run_copy / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 1, "episodes": 384, "wall_cl')  # killed while writing epoch 1's line
    assert run_main(["--out", run_copy, "--resume", "--epochs", 2]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run_copy / 'metrics.jsonl'}: dropped its last line, cut off when the run" in err
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    assert deterministic_part([strict_json(line) for line in lines]) == deterministic_part(uninterrupted[:2])


def tensorboard_steps(out: Path, tag: str = "test_accuracy") -> list[int]:
    accumulator = EventAccumulator(str(out / "tb"))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_tensorboard_shows_each_epoch_once_after_a_resume(
    uninterrupted: list[dict], run_copy: Path, tmp_path: Path
) -> None:
    """Killed after epoch 1 was logged but before its checkpoint: the resumed run logs epoch 1 again,
    and TensorBoard shows it once, with the resumed values."""
    shutil.copytree(run_copy / "checkpoint", tmp_path / "epoch0-checkpoint")
    assert run_main(["--out", run_copy, "--resume", "--epochs", 2]) == 0
    shutil.rmtree(run_copy / "checkpoint")
    shutil.copytree(tmp_path / "epoch0-checkpoint", run_copy / "checkpoint")  # epoch 1's is lost
    time.sleep(1.1)  # TensorBoard names its files by the second
    assert run_main(["--out", run_copy, "--resume", "--epochs", 3]) == 0
    accumulator = EventAccumulator(str(run_copy / "tb"))
    accumulator.Reload()
    events = accumulator.Scalars("train_loss")
    assert [e.step for e in events] == [0, 1, 2]
    assert [e.value for e in events] == pytest.approx([r["train_loss"] for r in uninterrupted])


# --- stopping within an epoch -----------------------------------------------------------------------


def test_kill_9_within_an_epoch_loses_only_the_batches_since_the_last_checkpoint(
    uninterrupted: list[dict], resume_argv: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With --checkpoint-every-minutes 0 a checkpoint follows every batch; kill -9 within epoch 0, and
    the resumed run continues from that batch with metrics bit-identical to the uninterrupted run (which
    wrote no mid-epoch checkpoint: writing them changes nothing)."""
    out = tmp_path / "run"
    argv = [*resume_argv, "--epochs", 3, "--checkpoint-every-minutes", 0, "--out", out]
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(train_cmd(argv), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:

            def within_epoch() -> bool:
                state = checkpoint_state(out)
                return state is not None and state["next_batch"] >= 2

            wait_for(within_epoch, "checkpoint within an epoch", proc)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    state = checkpoint_state(out)
    capsys.readouterr()
    assert run_main(["--out", out, "--resume"]) == 0
    if state["next_batch"]:
        expected = f"resumed {out} at epoch {state['epoch'] + 1}, batch {state['next_batch']} of 6"
    else:
        expected = f"resumed {out} after epoch {state['epoch']}"
    assert expected in capsys.readouterr().out
    assert deterministic_part(read_metrics(out)) == deterministic_part(uninterrupted)


def start_long_run(
    argv: list, stdout_path: Path, stderr_path: Path, preexec_fn: Callable[[], object] | None = None
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        train_cmd(argv),
        cwd=REPO,
        stdout=stdout_path.open("wb"),
        stderr=stderr_path.open("wb"),
        env=env,
        preexec_fn=preexec_fn,
    )


@pytest.mark.parametrize("signum, name", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_first_minutes_then_a_stop_signal_then_resume(
    signum: int,
    name: str,
    uninterrupted: list[dict],
    resume_argv: list,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """A user starts a run far too long for a CPU: three lines (device, data, run folder), then the
    time it will take and quick flags; Ctrl-C (or SIGTERM) finishes the batch, writes a checkpoint,
    prints the resume command and exits 130 (143) without a traceback; the resumed run, shortened to 3
    epochs, matches the uninterrupted one."""
    out, stdout, stderr = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    proc = start_long_run([*resume_argv, "--epochs", 100_000, "--out", out], stdout, stderr)
    try:
        wait_for(lambda: "time:" in stdout.read_text(), "time estimate", proc)
        os.kill(proc.pid, signum)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == 128 + signum, stderr.read_text()

    lines = stdout.read_text().splitlines()
    assert re.fullmatch(r"device: cpu \(.+, \d+ threads?\)", lines[0])
    threads = int(re.search(r"(\d+) threads?\)", lines[0]).group(1))
    assert threads <= len(os.sched_getaffinity(0))
    assert lines[1] == f"data: {resume_argv[resume_argv.index('--data-root') + 1] / 'MNIST'}"  # read there
    assert lines[2] == f"run folder: {out} (its config.json holds every setting)"
    assert not any(line.startswith(("{", "}", '  "')) for line in lines)  # no config dump
    estimate = next(line for line in lines if line.startswith("time:"))
    assert re.fullmatch(
        r"time: [\d.]+ s per batch here, so the [\d,]+ batches left take about \d+ h \(evaluation not "
        r"counted\)\. These are GPU-sized settings; for a first look on this CPU \(LRN learns in minutes\): "
        + re.escape(FIRST_RUN.command()),  # no time: its settings are not timed
        estimate,
    ), estimate

    err = stderr.read_text()
    assert "Traceback" not in err
    state = checkpoint_state(out)
    position = loop.checkpoint_position(state, 6)
    resume = f"python train.py --out {out} --resume"
    stopped = f"stopped by {name}: {out} has a checkpoint {position}; continue with: {resume}"
    assert err.strip().splitlines()[-1] == stopped

    capsys.readouterr()
    assert run_main(["--out", out, "--resume", "--epochs", 3]) == 0
    assert f"resumed {out} {position}" in capsys.readouterr().out
    assert deterministic_part(read_metrics(out)) == deterministic_part(uninterrupted)


@pytest.mark.parametrize("started_ignoring", [False, True], ids=["", "started_with_sigint_ignored"])
def test_a_second_ctrl_c_stops_at_once(started_ignoring: bool, resume_argv: list, tmp_path: Path) -> None:
    """Also in a process that started with SIGINT ignored (a shell's background job, or a parent that
    ignores it): the first Ctrl-C still asks for a stop, and the second must not be ignored."""
    out, stdout, stderr = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    handler = signal.SIG_IGN if started_ignoring else signal.SIG_DFL  # SIG_DFL: as from a terminal

    def start_with_sigint_handler() -> None:
        signal.signal(signal.SIGINT, handler)

    argv = [*resume_argv, "--epochs", 100_000, "--out", out]
    proc = start_long_run(argv, stdout, stderr, start_with_sigint_handler)
    try:
        wait_for(lambda: "time:" in stdout.read_text(), "time estimate", proc)
        os.kill(proc.pid, signal.SIGINT)
        # a signal sent before the first is handled would merge with it
        wait_for(
            lambda: "stopping after this batch" in stderr.read_text(),
            "first Ctrl-C handled",
            proc,
            poll=0.002,
        )
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    err = stderr.read_text()
    assert proc.returncode == 130 and "Traceback" not in err, err
    resume = f"python train.py --out {out} --resume"
    assert err.strip().splitlines()[-1] in (
        f"interrupted; continue from its last checkpoint with: {resume}",
        f"interrupted; it has no checkpoint yet: {resume} starts it over",
    )


# --- divergence --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, lrs",
    [
        (["--lr", "1e6"], "router lr 1e+06, module lr 1e+06"),
        (["--algo", "static", "--lr", "1e30"], "module lr 1e+30"),
    ],
)
def test_a_diverging_run_stops_in_one_line_and_writes_nothing_of_the_epoch(
    flags: list, lrs: str, fake_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    algo = flags[flags.index("--algo") + 1] if "--algo" in flags else "maskable_ppo"
    argv = [
        *flags,
        *small_run(algo),
        "--epochs",
        2,
        "--threads",
        1,
        "--data-root",
        fake_data_root,
        "--out",
        out,
    ]
    line = fails(argv, capsys)
    assert len(line.splitlines()) == 1, line
    assert re.match(r"error: training diverged in epoch 0, batch [1-4] of 4: .*(nan|inf)", line), line
    assert f"({lrs}); nothing of this epoch was written and {out} has no checkpoint" in line
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint").exists()


def test_metrics_hold_null_where_a_value_is_undefined(fake_data_root: Path, tmp_path: Path) -> None:
    """3 test pairs leave most of the 10 tasks without one: their per-task accuracy is null, not NaN
    (which is not JSON)."""
    out = tmp_path / "run"
    argv = [
        "--limit-train", 32, "--limit-test", 3, "--batch-size", 16, "--max-depth", 3, "--epochs", 1,
        "--device", "cpu", "--duplicates", 2, "--no-progress", "--threads", 1, "--data-root", fake_data_root,
        "--out", out,
    ]  # fmt: skip
    assert run_main(argv) == 0
    (record,) = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert None in record["per_task_accuracy"] and 0 < record["per_task_accuracy"].count(None) < 10


# --- before anything loads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "/proc/lrn-run"], "error: --out /proc/lrn-run cannot hold a run: "),
        (["--out", "{file}"], "error: --out {file} is a file, not a folder"),
        (["--out", "{file}/run"], "error: --out {file}/run: {file} is a file, not a folder"),
        (["--epochs", "-1"], "error: --epochs must be >= 0, got -1 (see: python train.py --help)"),
    ],
)
def test_bad_out_and_bad_flags_fail_before_torch_loads(argv: list, message: str, tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    argv = [a.format(file=file) for a in argv]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "train.py"), *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.monotonic() - started
    timing = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in timing]
    errors = [line for line in done.stderr.splitlines() if line not in timing]
    assert done.returncode != 0
    assert "torch" not in imported and "numpy" in imported  # the check ran, before torch
    assert errors[-1].startswith(message.format(file=file)), errors
    assert "Traceback" not in done.stderr
    assert seconds < 10  # well under a second unloaded; torch alone takes seconds
    assert not Path("/proc/lrn-run").exists() and file.read_text() == "not a folder"


def test_threads_are_capped_to_the_cores_the_process_may_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        assert machine.usable_cores() == 1
        assert machine.set_threads(None) == 1 == torch.get_num_threads()
        assert machine.set_threads(3) == 3  # --threads overrides
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
        quota = tmp_path / "cpu.max"
        quota.write_text("150000 100000\n")  # a cgroup quota of 1.5 cores
        monkeypatch.setattr(machine, "_cgroup_cpu_max_files", lambda: [quota])
        assert machine.usable_cores() == 2
    finally:
        torch.set_num_threads(before)


def test_the_real_data_skip_message_points_into_the_repo() -> None:
    reason = requires_real_data("min").kwargs["reason"]
    assert "docs/benchmarks.md" in reason and "/work/" not in reason and "shared" not in reason


def test_time_estimate_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arithmetic behind the line the long run above prints: 16 s per batch, 78,200 batches; the
    quick first run's time is its batches at its measured share of that time per batch."""
    first_run = FirstRun(settings=(("env.max_pairs", 1280), ("run.epochs", 3)), batch_cost=0.25)
    monkeypatch.setattr(guards, "FIRST_RUN", first_run)  # 30 batches at 4 s: 2 min
    clock = iter([0.0, 16.0, 32.0])
    monkeypatch.setattr(guards.time, "perf_counter", lambda: next(clock))
    estimate = guards.TimeEstimate(torch.device("cpu"), first_run_timed=True)
    assert estimate.batch_done(78_202) is None and estimate.batch_done(78_201) is None
    line = estimate.batch_done(78_200)
    assert line.startswith("time: 16.00 s per batch here, so the 78,200 batches left take about 348 h")
    first = (
        "python train.py --limit-train 1280 --epochs 3 --out runs/first-run"  # not python train.py's folder
    )
    assert line.endswith(f"{first} (about 2 min of training here)")
    assert estimate.batch_done(78_199) is None  # said once
    # A run of other settings (pool, depth, benchmark, router): the flags, without a time made up for them.
    clock = iter([0.0, 16.0, 32.0])
    estimate = guards.TimeEstimate(torch.device("cpu"), first_run_timed=False)
    estimate.batch_done(78_202), estimate.batch_done(78_201)
    assert estimate.batch_done(78_200).endswith(first)


def test_the_first_run_is_timed_against_train_py_settings_only() -> None:
    assert FIRST_RUN.timed_by(RunConfig.from_settings({}))  # python train.py: MNIST-MTL, d10 L6
    assert FIRST_RUN.timed_by(RunConfig.from_settings({"env.bonus_weight": 0.5, "run.seed": 3}))
    for other in (
        {"run.env_id": "RoutingMIN-v0"},
        {"env.duplicates": 5},
        {"env.max_depth": 4},
        {"run.algo": "static"},
        {"router.d_model": 64},
        {"run.preset": "paper"},  # the decoder's queries are the valid actions: another cost per batch
    ):
        assert not FIRST_RUN.timed_by(RunConfig.from_settings(other)), other
