"""Sweeps on Ray Tune: every combination a sweep file lists runs as a trial of ``agents.training.train``.

    python -m agents.sweep sweeps/min_grid.yaml                 # local Ray, or $RAY_ADDRESS's cluster
    python -m agents.sweep sweeps/min_grid.yaml --dry-run       # list the trials; Ray not needed

A sweep file (YAML) names train.py's flags without their dashes (``max_depth`` or ``max-depth``)::

    name: min_grid                  # required; run folders are <out>/<benchmark>/<name>-<settings>
    out: results                    # root of the run folders (default results)
    flags: {env: RoutingMIN-v0}     # every trial; a switch takes true/false (no_bonus: true)
    grid:                           # every combination of these values
      duplicates: [1, 5, 10]
      max_depth: [4, 6]
    variants:                       # named flag sets, each crossed with the grid
      bonus: {}
      nobonus: {no_bonus: true}
    resources: {cpu: 2, gpu: 0.25}  # per trial: cpu, gpu (a fraction shares a card), memory_gb
    max_concurrent: 8               # trials at once (default: as many as the resources allow)
    max_failures: 3                 # retries of a failed trial, each from its last checkpoint
    storage: results/ray_tune       # Tune's own state (default <out>/ray_tune)

Each trial parses its flags with train.py's parser and writes the run folder train.py would
(``config.json``, ``metrics.jsonl``, ``tb/``, plots, ``checkpoint/``); Tune gets each epoch's metrics
record as it is written. The run folder's checkpoint is the trial's state: Tune keeps only a small
checkpoint that names the run folder and the epoch, and a restarted trial (a failure, a lost node) or a
rerun of the sweep continues every run from its run-folder checkpoint. ``gpu`` is ignored on a Ray
cluster without GPUs, so one file runs on a laptop, a GPU machine and a cluster.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.cli import SettingError, build_parser, config_from_flags

KEYS = ("name", "out", "flags", "grid", "variants", "resources", "max_concurrent", "max_failures", "storage")
RESOURCES = ("cpu", "gpu", "memory_gb")
SWEEP_MANAGED = {
    "--out": "the sweep names each run folder (set `out` and `name`)",
    "--resume": "a trial resumes by itself",
}
# Short names for a run folder's settings, as in our earlier runs (``lrn_d5_L4_s0``).
SHORT = {"duplicates": "d", "max_depth": "L", "seed": "s", "task_prior_std": "p", "bonus_weight": "bonus"}
# Tune's status table shows the first four numbers of a result: these.
TABLE_COLUMNS = ("epoch", "test_accuracy", "test_balanced_accuracy", "train_accuracy")
# Environment variables of the sweep's shell that its trials get too.
FORWARDED_ENV = ("ROUTING_ENV_DATA", "PYTORCH_CUDA_ALLOC_CONF")
INSTALL_HINT = "Ray Tune is not installed: pip install -e '.[sweep]'"


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Trial:
    """One run of a sweep.

    Attributes:
        key: ``<benchmark>/<run name>``, the run folder under the sweep's ``out`` (Tune's trial name).
        flags: train.py's flags of the run, ``--out`` included.
        out: the run folder.
    """

    key: str
    flags: tuple[str, ...]
    out: Path


@dataclass
class Sweep:
    """A parsed, checked sweep file.

    Attributes:
        name: the sweep's name (first part of each run name, Tune's experiment name).
        trials: the runs, in file order (variants, then the grid's combinations).
        resources: per trial, in Ray's names (``cpu``, ``gpu``, ``memory`` in bytes).
        max_concurrent: trials at once; None: as many as the resources allow.
        max_failures: how often a failed trial is restarted from its checkpoint.
        storage: Tune's experiment folder root.
    """

    name: str
    trials: list[Trial]
    resources: dict[str, float]
    max_concurrent: int | None
    max_failures: int
    storage: Path


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file: every trial's flags go through train.py's parser and config checks
    here, so a bad file fails at once with one :class:`SweepError`, before Ray starts."""
    path = Path(path)
    try:
        import yaml
    except ImportError as e:
        raise SweepError(INSTALL_HINT) from e
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SweepError(f"{path}: cannot read the sweep file: {e}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SweepError(f"{path}: not YAML: {where}{getattr(e, 'problem', None) or e}") from e
    try:
        return _parse(spec, base=Path.cwd())
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from e


def _parse(spec: Any, base: Path) -> Sweep:
    if not isinstance(spec, dict):
        raise SweepError(f"a sweep file is a mapping of {', '.join(KEYS)}; got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise SweepError(f"unknown key(s) {unknown}; known: {', '.join(KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise SweepError(f"`name` is required: letters, digits, '-', '_', '.' (got {name!r})")
    out = (base / str(spec.get("out", "results"))).resolve()
    flags = _mapping(spec, "flags")
    grid = _mapping(spec, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid: {key} needs a non-empty list of values, got {values!r}")
    variants = _mapping(spec, "variants") or {"": {}}
    for label, variant in variants.items():
        if not isinstance(variant, dict) and variant is not None:
            raise SweepError(f"variants: {label} needs a mapping of flags, got {variant!r}")

    actions = _flag_actions()
    for where, keys in [
        ("flags", flags),
        ("grid", grid),
        *((f"variants: {v}", d or {}) for v, d in variants.items()),
    ]:
        for key in keys:
            _flag(key, actions, where)
    trials = []
    for label, variant in variants.items():
        variant = variant or {}
        for point in itertools.product(*grid.values()):
            varied = dict(zip(grid, point))
            settings = _merge(flags, variant, varied, label)
            trials.append(_trial(name, label, varied, settings, actions, out))
    seen: dict[Path, str] = {}
    for t in trials:
        if t.out in seen:
            raise SweepError(f"two trials write {t.out}: give their variants different names")
        seen[t.out] = t.key
    return Sweep(
        name=name,
        trials=trials,
        resources=_resources(spec.get("resources", {"cpu": 1})),
        max_concurrent=_count(spec, "max_concurrent", None, minimum=1),
        max_failures=_count(spec, "max_failures", 3, minimum=0),
        storage=(base / str(spec.get("storage", out / "ray_tune"))).resolve(),
    )


def _mapping(spec: dict[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise SweepError(f"`{key}` needs a mapping, got {value!r}")
    return value


def _count(spec: dict[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = spec.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise SweepError(f"`{key}` needs a whole number >= {minimum}, got {value!r}")
    return value


def _resources(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or set(value) - set(RESOURCES):
        raise SweepError(f"`resources` takes {', '.join(RESOURCES)}, got {value!r}")
    for key, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise SweepError(f"resources: {key} needs a number >= 0, got {amount!r}")
    resources = {k: float(v) for k, v in value.items() if k != "memory_gb"}
    if "memory_gb" in value:
        resources["memory"] = float(value["memory_gb"]) * 2**30  # Ray counts memory in bytes
    return resources


def _flag_actions() -> dict[str, argparse.Action]:
    """train.py's options by flag string (argparse keeps no public map of them)."""
    return {s: a for a in build_parser()._actions for s in a.option_strings if s.startswith("--")}


def _flag(key: Any, actions: dict[str, argparse.Action], where: str) -> str:
    """The option string of a sweep file's key (``max_depth`` -> ``--max-depth``)."""
    flag = "--" + str(key).replace("_", "-")
    if flag in SWEEP_MANAGED:
        raise SweepError(f"{where}: {key} is not set in a sweep file: {SWEEP_MANAGED[flag]}")
    if flag not in actions or flag == "--help":
        close = difflib.get_close_matches(flag, list(actions), n=1)
        hint = f"; did you mean {close[0][2:]}?" if close else ""
        raise SweepError(f"{where}: unknown flag {key!r} (train.py has no {flag}){hint}")
    return flag


def _merge(flags: dict, variant: dict, varied: dict, label: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for where, part in (("flags", flags), (f"variant {label}", variant), ("grid", varied)):
        for key, value in part.items():
            norm = str(key).replace("-", "_")
            if norm in settings:
                raise SweepError(f"{key} is set twice (in {settings[norm][0]} and {where}): set it once")
            settings[norm] = (where, value)
    return {k: v for k, (_, v) in settings.items()}


def _argv(settings: dict[str, Any], actions: dict[str, argparse.Action]) -> list[str]:
    argv: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        action = actions[flag]
        if action.nargs == 0:  # a switch (--no-bonus) or an on/off pair (--freeze-unused/--no-freeze-unused)
            if not isinstance(value, bool):
                raise SweepError(f"{key} is a switch: true or false, got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(flag if value else "--no-" + flag[2:])
            elif value:
                argv.append(flag)
        elif action.nargs == 2:
            if not isinstance(value, list) or len(value) != 2:
                raise SweepError(f"{key} takes a pair [a, b], got {value!r}")
            argv += [flag, *map(str, value)]
        elif isinstance(value, (list, dict)):
            raise SweepError(f"{key} takes one value, got {value!r} (several values go in `grid`)")
        elif value is not None:  # null: train.py's default
            argv += [flag, str(value)]
    return argv


def _run_name(name: str, label: str, varied: dict[str, Any]) -> str:
    parts = [label] if label else []
    for key, value in varied.items():
        key = key.replace("-", "_")
        if key == "env":
            continue  # the benchmark names the folder above
        short = SHORT.get(key, key.replace("_", "-"))
        if isinstance(value, bool):
            parts += [short] if value else []
        elif isinstance(value, float):
            parts.append(f"{short}{value:g}")
        else:
            parts.append(f"{short}{value}".replace("/", "-").replace(" ", ""))
    return "-".join([name, "_".join(parts)]) if parts else name


def _trial(name: str, label: str, varied: dict, settings: dict, actions: dict, out: Path) -> Trial:
    run = _run_name(name, label, varied)
    try:
        argv = _argv(settings, actions)
        cfg = config_from_flags(argv)
    except (SweepError, SettingError) as e:
        raise SweepError(f"trial {run}: {e}") from e
    key = f"{cfg.env.benchmark}/{run}"
    return Trial(key=key, flags=(*argv, "--out", str(out / key)), out=out / key)


# --- running on Ray Tune ------------------------------------------------------------------------------


def check_run_folders(sweep: Sweep) -> dict[Path, str]:
    """What each run folder that already holds a run will do (``"resumes after epoch 3"``); one
    :class:`SweepError` for folders a trial cannot continue: a run without a checkpoint (a rerun would
    mix two runs in one folder) or a run of other settings."""
    from agents.run_folder import Checkpoint
    from agents.run_plan import refused_flags

    plans, problems = {}, []
    for t in sweep.trials:
        if not (t.out / "metrics.jsonl").exists() and not Checkpoint(t.out).resumable():
            continue
        epoch = Checkpoint(t.out).epoch()
        cfg = config_from_flags(list(t.flags))
        saved = t.out / "config.json"
        differ = refused_flags(json.loads(saved.read_text()), cfg) if saved.exists() else []
        if epoch is None:
            problems.append(f"{t.out}: holds a run without a checkpoint")
        elif differ:
            problems.append(f"{t.out}: holds a run of other settings ({'; '.join(differ[:3])})")
        elif epoch + 1 >= cfg.epochs:
            plans[t.out] = f"finished ({epoch + 1} epochs): reports them, trains nothing"
        else:
            plans[t.out] = f"resumes after epoch {epoch}"
    if problems:
        listed = "\n  ".join(problems)
        raise SweepError(f"move these run folders or rename the sweep:\n  {listed}")
    return plans


def run_trial(config: dict[str, Any], flags: dict[str, list[str]]) -> None:
    """A Tune trial: ``train`` on the trial's flags, resuming the run folder's checkpoint if there is one,
    reporting every epoch's record (those already in the run folder first) to Tune."""
    from ray import tune

    from agents.run_folder import Checkpoint, MetricsLog
    from agents.training import train

    cfg = config_from_flags(flags[config["run"]])
    cfg.progress = False  # trials share one terminal; Tune shows their progress
    report = _reporter(cfg.out, with_checkpoint=cfg.checkpoint)
    done = Checkpoint(cfg.out).epoch()
    if done is not None:  # train() starts a run without a checkpoint again, clearing its folder
        log = MetricsLog(cfg.out, tensorboard=False)
        reported = _restored_epoch(tune.get_checkpoint())
        if reported >= 0:
            print(f"{cfg.out}: Tune restarts it after epoch {reported}")
        for record in log.read():
            if reported < record["epoch"] <= done:
                report(record)
    train(cfg, resume=done is not None, on_epoch=report)


def _restored_epoch(checkpoint: Any) -> int:
    """The last epoch Tune was told of (its checkpoint of this trial), -1 for none."""
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / "run.json").read_text())["epoch"])


def _reporter(out: Path, with_checkpoint: bool) -> Callable[[dict[str, Any]], None]:
    """``on_epoch`` for ``train``: the record to Tune, with a checkpoint of a few bytes that names the run
    folder and epoch (the run folder's own checkpoint, up to ~7 GB, stays where it is)."""
    from ray import tune

    def report(record: dict[str, Any]) -> None:
        record = {**{k: record[k] for k in TABLE_COLUMNS if k in record}, **record}  # first: in the table
        if not with_checkpoint:
            tune.report(record)
            return
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "run.json").write_text(
                json.dumps({"run_folder": str(out), "epoch": record["epoch"]})
            )
            tune.report(record, checkpoint=tune.Checkpoint.from_directory(folder))

    return report


def run_sweep(
    sweep: Sweep, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> int:
    """Run every trial of ``sweep`` on Ray Tune; 0 when all finished, 1 when one failed for good.

    Args:
        sweep: the checked sweep.
        address: a Ray cluster's address; None: ``$RAY_ADDRESS``, a cluster started on this machine, or
            a new local Ray.
        num_cpus, num_gpus: the size of a new local Ray (default: the machine's).
    """
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise SweepError(INSTALL_HINT) from e
    for out, plan in check_run_folders(sweep).items():
        print(f"{out}: {plan}")
    # Workers of a cluster started by `ray start` have that shell's environment, not this one's.
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if 0 < sweep.resources.get("gpu", 0) < 1:
        # Trials that share a card return freed memory to it instead of each keeping a cache.
        forwarded.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            runtime_env={"env_vars": forwarded} if forwarded else None,
        )
    except (ValueError, ConnectionError) as e:
        raise SweepError(f"cannot start or reach Ray: {e}") from e
    try:
        resources = dict(sweep.resources)
        if resources.get("gpu") and not ray.cluster_resources().get("GPU"):
            print(
                f"no GPU in the Ray cluster: trials run on the CPU (the sweep asks gpu {resources['gpu']:g})"
            )
            resources["gpu"] = 0
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, flags={t.key: list(t.flags) for t in sweep.trials}), resources
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search([t.key for t in sweep.trials])},
            tune_config=tune.TuneConfig(
                metric="test_accuracy",
                mode="max",
                max_concurrent_trials=sweep.max_concurrent,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=f"{sweep.name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}",
                storage_path=str(sweep.storage),
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                verbose=1,
            ),
        )
        results = tuner.fit()
        return _summary(sweep, results)
    finally:
        ray.shutdown()


def _trial_name(trial: Any) -> str:
    return trial.config["run"]


def _trial_dirname(trial: Any) -> str:
    return trial.config["run"].replace("/", "-")


def _summary(sweep: Sweep, results: Any) -> int:
    """Print one line per trial (its run folder, epochs, last test accuracy); 1 if any failed."""
    by_key = {r.config["run"]: r for r in results}
    failed = 0
    print(f"\nsweep {sweep.name}: {len(sweep.trials)} trials")
    for t in sweep.trials:
        result = by_key.get(t.key)
        metrics = result.metrics if result is not None else {}
        if result is None or result.error is not None:
            failed += 1
            why = str(result.error).strip().splitlines()[-1] if result is not None else "did not run"
            where = f" (Tune's log: {result.path})" if result is not None else ""
            print(f"  FAILED  {t.out}: {why}{where}")
        elif "epoch" in metrics:
            accuracy = 100 * metrics["test_accuracy"]
            print(f"  done    {t.out}: epoch {metrics['epoch']}, test accuracy {accuracy:.2f}%")
        else:
            print(f"  done    {t.out}: no epoch to run")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path, help="the sweep file (YAML)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the trials' run folders and flags, run nothing"
    )
    parser.add_argument("--address", help="a Ray cluster's address (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray (default: all)")
    parser.add_argument("--num-gpus", type=int, help="GPUs of a new local Ray (default: all)")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.file)
        if args.dry_run:
            for t in sweep.trials:
                print(f"{t.out}: {' '.join(t.flags[:-2])}")
            print(f"{len(sweep.trials)} trials, each {sweep.resources}")
            return 0
        return run_sweep(sweep, args.address, args.num_cpus, args.num_gpus)
    except SweepError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    sys.exit(main())
