"""Sweeps on Ray Tune (``python -m training_run.sweep``): bad sweep files fail before Ray starts, the
repo's sweep files hold valid trials, a rerun skips finished runs before Ray starts, and a 2-trial sweep of
tiny runs on a local Ray writes two train.py run folders, reports their epochs to Tune, resumes a killed
trial from its checkpoint and leaves no process; on a Ray cluster of two nodes a trial whose node is lost
goes on on the other node from its run folder's checkpoint.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from training_run import sweep
from training_run.cli import parse_command_line

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("CI") != "true":  # CI installs the sweep extra: there a missing Ray fails the tests
    pytest.importorskip("ray", reason="the sweep extra is not installed: pip install -e '.[sweep]'")

TINY_FLAGS = (
    "{limit_train: 128, limit_test: 60, batch_size: 32, max_depth: 3, duplicates: 2, device: cpu, "
    "epochs: 3, eval_batch_size: 128, data_root: %s}"
)
LONGER_FLAGS = TINY_FLAGS.replace("epochs: 3", "epochs: 6")
# What two runs of the same settings must share (everything but timings), as in test_train.py.
DETERMINISTIC_KEYS = [
    "epoch",
    "episodes",
    "router_lr",
    "module_lr",
    "train_loss",
    "train_accuracy",
    "train_reward",
    "test_accuracy",
    "test_loss",
    "per_task_accuracy",
    "unused_modules",
    "module_usage",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def deterministic_part(records: list[dict]) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC_KEYS} for r in records]


# --- sweep files ------------------------------------------------------------------------------------

BAD_FILES = [
    ("flags: {duplicates: 2}", "`name` is required"),
    ("name: x\nflag: {duplicates: 2}", "unknown key(s) ['flag']"),
    (
        "name: x\ngrid: {dupliates: [1, 5]}",
        "unknown flag 'dupliates' (train.py has no --dupliates); did you mean duplicates?",
    ),
    ("name: x\ngrid: {max_depth: [1, 4]}", "trial x-L1: --max-depth must be >= 2"),
    ("name: x\nflags: {epochs: many}", "trial x: --epochs: invalid int value: 'many'"),
    ("name: x\nflags: {algo: ppp}", "trial x: --algo: invalid choice: 'ppp'"),
    ("name: x\nflags: {dispatch: fast}", "trial x: --dispatch: invalid choice: 'fast'"),
    ("name: x\nflags: {no_bonus: 1}", "no_bonus is a switch: true or false, got 1"),
    ("name: x\nflags: {duplicates: [1, 5]}", "several values go in `grid`"),
    (
        "name: x\nflags: {bonus_weight: 0.1}\nvariants: {n: {no_bonus: true}}",
        "trial x-n: --no-bonus sets --bonus-weight 0.0: leave out --bonus-weight 0.1",
    ),
    ("name: x\ngrid: {duplicates: 5}", "grid: duplicates needs a non-empty list of values"),
    ("name: x\nflags: {out: runs/x}", "out is not set in a sweep file"),
    ("name: x\nflags: {resume: true}", "resume is not set in a sweep file"),
    ("name: x\nflags: {seed: 1}\ngrid: {seed: [0, 1]}", "seed is set twice (in flags and grid)"),
    (
        "name: x\nvariants: {static: {algo: static, task_prior_std: 3}}",
        "trial x-static: --task-prior-std is a RouterPolicy option",
    ),
    (
        "name: x\nflags: {max_depth: 4}\nvariants: {lrn: {}, static: {algo: static}}",
        "trial x-static: --algo static fixes --max-depth 5: leave out --max-depth 4",
    ),
    ("name: x\nresources: {gpus: 1}", "`resources` takes cpu, gpu, memory_gb"),
    ("name: x\nresources: {gpu: -1}", "resources: gpu needs a number >= 0"),
    ("name: x\nmax_failures: -1", "`max_failures` needs a whole number >= 0"),
    ("name: x\ngrid: {duplicates: [5, 5]}", "two trials write"),
    ("name: x\nflags: {duplicates: 2", "not YAML: line 3, column 4: expected ',' or '}', but got ':'"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m[:30] for _, m in BAD_FILES])
def test_a_bad_sweep_file_gets_one_error_before_ray_starts(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text + f"\nout: {tmp_path / 'results'}\n")
    with pytest.raises(SystemExit) as info:
        sweep.main([str(path)])
    error = str(info.value.code)
    assert error.startswith(f"error: {path}: ") and message in error, error
    assert "Traceback" not in error and len(error.splitlines()) == 1
    assert not (tmp_path / "results").exists()  # nothing written, Ray not started
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_a_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        sweep.main([str(tmp_path / "none.yaml")])
    assert "cannot read the sweep file" in str(info.value.code)


def test_grid_and_variants_give_every_combination_as_train_py_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: g\nout: res\nflags: {env: RoutingMIN-v0, task-prior-std: 3}\n"
        "grid: {duplicates: [1, 5], max_depth: [4, 6]}\n"
        "variants: {lrn: {}, nobonus: {no_bonus: true}}\nresources: {cpu: 2, gpu: 0.25, memory_gb: 1}\n"
    )
    monkeypatch.chdir(tmp_path)  # a relative out is relative to where the sweep starts
    s = sweep.load_sweep(path)
    assert [t.key for t in s.trials] == [
        f"min/g-{label}_d{d}_L{depth}" for label in ("lrn", "nobonus") for d in (1, 5) for depth in (4, 6)
    ]
    first = s.trials[0]
    assert first.out == tmp_path / "res" / "min" / "g-lrn_d1_L4"
    assert first.settings == {
        "run.progress": False,  # trials share a terminal
        "run.env_id": "RoutingMIN-v0",
        "router.task_prior_std": 3.0,
        "env.duplicates": 1,
        "env.max_depth": 4,
        "run.out": str(first.out),
    }
    assert s.trials[-1].settings["env.bonus_weight"] == 0.0  # no_bonus
    # The trial's train.py command gives the configuration the trial trains.
    command = shlex.split(first.command())
    assert command[:2] == ["python", "train.py"]
    assert parse_command_line(command[2:])[0] == first.config()
    assert s.resources == {"cpu": 2.0, "gpu": 0.25, "memory": 2.0**30}
    assert s.storage == tmp_path / "res" / "ray_tune"


def test_an_on_off_setting_turned_off_reaches_the_run(tmp_path: Path) -> None:
    """``freeze_unused: false`` must give ``--no-freeze-unused``, not silently train.py's default (on)."""
    path = tmp_path / "s.yaml"
    path.write_text("name: f\nvariants: {moving: {freeze_unused: false}, frozen: {freeze_unused: true}}\n")
    off, on = sweep.load_sweep(path).trials  # moving, frozen
    assert off.settings["env.freeze_unused"] is False and on.settings["env.freeze_unused"] is True
    assert off.config().env.freeze_unused is False and on.config().env.freeze_unused is True
    assert "--no-freeze-unused" in off.command() and "--freeze-unused" in on.command()


def fake_run(out: Path, config: dict, last_epoch: int, checkpoint: bool = True) -> None:
    """A run folder as train.py leaves it after ``last_epoch`` (only what the sweep reads)."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "test_accuracy": 0.5}) + "\n" for e in range(last_epoch + 1))
    )
    if checkpoint:
        (out / "checkpoint").mkdir()
        (out / "checkpoint" / "state.json").write_text(json.dumps({"epoch": last_epoch}))


def test_a_rerun_continues_run_folders_and_refuses_those_it_cannot(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: r\nout: {tmp_path / 'results'}\nflags: {{duplicates: 2, epochs: 3}}\n"
        "variants: {done: {}, half: {}, new: {}, nockpt: {}, other: {}}\n"
    )
    done, half, new, nockpt, other = sweep.load_sweep(path).trials
    config = done.config().to_dict()
    fake_run(done.out, config, last_epoch=2)
    fake_run(half.out, {**config, "epochs": 100, "env": {**config["env"], "device": "cuda"}}, last_epoch=0)
    plans = sweep.check_run_folders(sweep.load_sweep(path))
    assert {out: sweep.describe_plan(plan) for out, plan in plans.items()} == {
        done.out: "finished (3 epochs): skipped",
        half.out: "resumes after epoch 0",  # epochs and device may change between runs
    }
    fake_run(nockpt.out, config, last_epoch=1, checkpoint=False)
    fake_run(other.out, {**config, "env": {**config["env"], "duplicates": 5}}, last_epoch=1)
    with pytest.raises(SystemExit) as info:
        sweep.main([str(path), "--address", "local"])
    lines = str(info.value.code).splitlines()
    assert lines[:2] == [
        "error: move these run folders or rename the sweep:",
        f"  {nockpt.out}: holds a run without a checkpoint",
    ]
    assert lines[2].startswith(
        f"  {other.out}: {other.out} was started with other settings: --duplicates 2 (the run has 5); "
    )
    assert len(lines) == 3
    assert not new.out.exists() and not (tmp_path / "results" / "ray_tune").exists()
    assert not __import__("ray").is_initialized()


def test_a_rerun_continues_what_train_py_resume_would(tmp_path: Path) -> None:
    """The sweep refuses a run folder by train.py's own rules: settings a resume may change (threads, how
    often checkpoints are written) and settings an older config.json lacks do not block it."""
    path = tmp_path / "s.yaml"
    path.write_text(f"name: r\nout: {tmp_path / 'results'}\nflags: {{duplicates: 2, epochs: 3}}\n")
    (trial,) = sweep.load_sweep(path).trials
    config = trial.config().to_dict()
    config.update(threads=7, checkpoint_every_minutes=1.0)
    del config["preset"]  # a run folder written before the flag existed
    fake_run(trial.out, config, last_epoch=0)
    (plan,) = sweep.check_run_folders(sweep.load_sweep(path)).values()
    assert sweep.describe_plan(plan) == "resumes after epoch 0"


def test_a_rerun_of_a_finished_sweep_skips_its_runs_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Finished runs get no trial: Ray does not even start, and nothing is written into their folders
    (no ``resumed`` entry in config.json)."""
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: f\nout: {tmp_path / 'results'}\nflags: {{duplicates: 2, epochs: 2}}\n"
        "variants: {a: {}, b: {}}\n"
    )
    trials = sweep.load_sweep(path).trials
    for t, last_epoch in zip(trials, (1, 3)):  # b ran more epochs than the file asks now
        fake_run(t.out, {**t.config().to_dict(), "epochs": last_epoch + 1}, last_epoch=last_epoch)
    before = {t.out: (t.out / "config.json").read_bytes() for t in trials}
    assert sweep.main([str(path), "--address", "local"]) == 0
    out = capsys.readouterr().out
    for t, last_epoch in zip(trials, (1, 3)):
        assert f"{t.out}: finished ({last_epoch + 1} epochs): skipped" in out
        assert f"done    {t.out}: finished before, epoch {last_epoch}, test accuracy 50.00%" in out
        assert (t.out / "config.json").read_bytes() == before[t.out]
    assert not (tmp_path / "results" / "ray_tune").exists()
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_the_repos_sweep_files_are_valid(path: Path) -> None:
    s = sweep.load_sweep(path)
    assert s.trials and s.resources.get("gpu", 0) > 0
    for t in s.trials:
        benchmark = t.key.split("/")[0]
        assert benchmark in ("mnist", "cifar", "min") and t.out.parent.name == benchmark


# --- a sweep on a local Ray -------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def works_in(pid: int, folder_name: str) -> bool:
    """Whether a process's working directory is named ``folder_name`` (Tune runs each trial in a
    folder named by the trial's dirname, ``<benchmark>-<run>``)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).name == folder_name
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to find and kill the trial")
def test_a_sweep_writes_run_folders_and_resumes_a_killed_trial(fake_data_root: Path, tmp_path: Path) -> None:
    """Two trials of the same tiny run (variants a and b); b's worker is killed by SIGKILL after its
    first checkpoint. Tune restarts it, it resumes from the run folder and ends with a's metrics."""
    results = tmp_path / "results"
    path = tmp_path / "tiny.yaml"
    path.write_text(
        # 6 epochs, so that the kill lands mid-run however fast this machine is
        f"name: tiny\nout: {results}\nflags: {LONGER_FLAGS % fake_data_root}\n"
        "variants: {a: {}, b: {}}\nresources: {cpu: 1, gpu: 0.5}\nmax_concurrent: 2\nmax_failures: 1\n"
    )
    a, b = results / "mnist" / "tiny-a", results / "mnist" / "tiny-b"
    cmd = [sys.executable, "-m", "training_run.sweep", str(path), "--address", "local", "--num-cpus", "2"]
    seen: set[int] = set()
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            # Tune's driver logs b's first result (and takes its checkpoint) while b trains epoch 1
            while not any(
                p.stat().st_size for p in (results / "ray_tune").glob("tiny_*/mnist-tiny-b/result.json")
            ):
                assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "trial b finished no epoch in 240 s"
                time.sleep(0.05)
            seen = descendants(proc.pid)
            workers = [p for p in seen if works_in(p, "mnist-tiny-b")]
            assert len(workers) == 1, workers
            os.kill(workers[0], signal.SIGKILL)
            killed_at = json.loads((b / "checkpoint" / "state.json").read_text())["epoch"]
            assert killed_at < 5, "trial b ended before it could be killed"
            while proc.poll() is None:
                seen |= descendants(proc.pid)
                time.sleep(0.5)
                assert time.monotonic() < deadline + 240, "the sweep did not end"
        finally:
            proc.kill()
            proc.wait(timeout=60)
    output = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, output[-3000:]
    assert f"{b}: Tune restarts it after epoch" in output  # from its checkpoint, not from scratch
    assert f"resumed {b} after epoch {killed_at}" in output

    # Each trial wrote the run folder train.py writes; b's killed run ends where a's uninterrupted one does.
    for run in (a, b):
        for name in (
            "config.json",
            "metrics.jsonl",
            "accuracy.png",
            "module_usage.png",
            "checkpoint/state.json",
        ):
            assert (run / name).exists(), f"{run / name} missing"
        assert list((run / "tb").glob("events.out.tfevents.*"))
        assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(6))
    assert deterministic_part(read_jsonl(b / "metrics.jsonl")) == deterministic_part(
        read_jsonl(a / "metrics.jsonl")
    )

    # Tune's per-epoch results are the records of metrics.jsonl.
    (experiment,) = (results / "ray_tune").glob("tiny_*")
    for run in (a, b):
        tune_records = read_jsonl(experiment / f"mnist-{run.name}" / "result.json")
        records = read_jsonl(run / "metrics.jsonl")
        assert [{k: t[k] for k in r} for t, r in zip(tune_records, records, strict=True)] == records

    # The results script reads sweep run folders as it reads train.py's.
    from training_run.report import tables

    assert [row[1] for row in tables.rows(results)] == ["`tiny-a`", "`tiny-b`"]

    # A rerun of the finished sweep starts no trial and writes nothing into the run folders.
    configs = {run: (run / "config.json").read_bytes() for run in (a, b)}
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{b}: finished (6 epochs): skipped" in rerun.stdout
    assert {run: (run / "config.json").read_bytes() for run in (a, b)} == configs
    assert len(list((results / "ray_tune").glob("tiny_*"))) == 1  # no second Tune experiment

    # Ray is shut down: no process the sweep started is left.
    deadline = time.monotonic() + 30
    while any(alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in seen if alive(p)], "processes of the sweep are still running"


# --- a sweep on a two-node Ray cluster --------------------------------------------------------------


def node_processes(node: Any) -> set[int]:
    """The processes of a node of ``ray.cluster_utils.Cluster``: its raylet and the other processes it
    started, and everything below them (the trials' workers run under the raylet)."""
    pids = {info.process.pid for infos in node.all_processes.values() for info in infos}
    return pids.union(*(descendants(p) for p in pids))


def lose(pids: Iterable[int]) -> None:
    """What a lost machine does to its processes: all stop at once (none sees another die and reacts,
    none writes another byte), then all are gone."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to find the trials' processes")
def test_a_sweep_on_a_ray_cluster_goes_on_when_a_node_is_lost(fake_data_root: Path, tmp_path: Path) -> None:
    """A Ray cluster of two nodes on this machine, one CPU each, runs two trials of the same tiny run
    (variants a and b): one trial on each node. After the first checkpoint of the trial on the worker node,
    that node is lost (its raylet and every process under it stop, then are killed). Tune restarts the
    trial on the head node once the other trial frees its CPU; it continues from its run folder's
    checkpoint, records the resume in config.json and ends with the metrics of the uninterrupted trial."""
    from ray.cluster_utils import Cluster

    epochs, runs = 2, ("cluster-a", "cluster-b")
    results = tmp_path / "results"
    path = tmp_path / "cluster.yaml"
    path.write_text(
        f"name: cluster\nout: {results}\n"
        f"flags: {TINY_FLAGS.replace('epochs: 3', f'epochs: {epochs}') % fake_data_root}\n"
        "variants: {a: {}, b: {}}\nresources: {cpu: 1}\nmax_concurrent: 2\nmax_failures: 1\n"
    )
    log_path = tmp_path / "log.txt"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        cmd = [sys.executable, "-m", "training_run.sweep", str(path), "--address", cluster.address]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 240

                def wait(condition: Callable[[], Any], what: str, every: float) -> Any:
                    while not (found := condition()):
                        assert proc.poll() is None, log_path.read_text()[-3000:]
                        assert time.monotonic() < deadline, f"{what}: not within 240 s"
                        time.sleep(every)
                    return found

                def trials_on(node: Any) -> dict[str, int]:
                    """``{run name: pid}`` of the trials whose process runs on ``node`` (Tune runs a trial
                    in a folder named ``<benchmark>-<run>``)."""
                    return {
                        run: pid
                        for pid in node_processes(node)
                        for run in runs
                        if works_in(pid, f"mnist-{run}")
                    }

                ((victim, first_pid),) = wait(
                    lambda: trials_on(worker), "a trial on the worker node", 0.2
                ).items()
                lost = results / "mnist" / victim
                wait((lost / "checkpoint" / "state.json").exists, f"{victim}'s first checkpoint", 0.02)
                # The trial stops at once: it may not train on while its node's processes are found.
                os.kill(first_pid, signal.SIGSTOP)
                gone = node_processes(worker)
                lose(gone)
                killed_at = json.loads((lost / "checkpoint" / "state.json").read_text())["epoch"]
                assert killed_at < epochs - 1, f"{victim} ended before its node was lost"
                cluster.remove_node(worker, allow_graceful=False)
                wait(lambda: not any(alive(p) for p in gone), "the lost node's processes ended", 0.1)
                # Only the head node is left: the trial goes on there.
                second_pid = wait(
                    lambda: trials_on(cluster.head_node).get(victim), f"{victim} restarted", 0.2
                )
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            finally:
                proc.kill()
                proc.wait(timeout=60)
    finally:
        cluster.shutdown()
    output = log_path.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert f"resumed {lost} after epoch {killed_at}" in output

    # The lost trial's run ends where the uninterrupted one does, epoch by epoch.
    (uninterrupted,) = {results / "mnist" / run for run in runs} - {lost}
    records = read_jsonl(lost / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(epochs))
    assert deterministic_part(records) == deterministic_part(read_jsonl(uninterrupted / "metrics.jsonl"))
    assert [r["from"] for r in json.loads((lost / "config.json").read_text())["resumed"]] == [
        f"after epoch {killed_at}"
    ]
    assert "resumed" not in json.loads((uninterrupted / "config.json").read_text())

    # Tune has every epoch once: the first ones (if any) from the process on the lost node, which it heard
    # of before the loss, the rest from the one on the head node.
    (experiment,) = (results / "ray_tune").glob("cluster_*")
    tune_records = read_jsonl(experiment / f"mnist-{victim}" / "result.json")
    assert [r["epoch"] for r in tune_records] == list(range(epochs))
    pids = [r["pid"] for r in tune_records]
    heard = pids.count(first_pid)
    assert heard <= killed_at + 1 and pids == [first_pid] * heard + [second_pid] * (epochs - heard)
