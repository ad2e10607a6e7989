"""Sweeps on Ray Tune: every combination a sweep file lists runs as a trial of
:func:`training_run.loop.train`.

    python -m training_run.sweep sweeps/min_grid.yaml             # local Ray, or $RAY_ADDRESS's cluster
    python -m training_run.sweep sweeps/min_grid.yaml --dry-run   # list the trials; Ray not needed

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

Each trial's keys become settings (``{"section.field": value}``, checked as train.py checks its flags)
and a :class:`~training_run.settings.RunConfig`, all before Ray starts; the trial plans its run as
``train.py --resume`` does (:func:`~training_run.resume.plan_run`) and writes the run folder train.py
would (``config.json``, ``metrics.jsonl``, ``tb/``, plots, ``checkpoint/``); Tune gets each epoch's
metrics record as it is written. The run folder's checkpoint is the trial's state: Tune keeps only a
small checkpoint that names the run folder and the epoch, and a restarted trial (a failure, a lost node)
or a rerun of the sweep continues every run from its run-folder checkpoint; a rerun skips the runs that
are finished before Ray starts. ``gpu`` is ignored on a Ray cluster without GPUs, so one file runs on a
laptop, a GPU machine and a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
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

from training_run.cli import OneLineParser, command_line, names, settings_from_names
from training_run.folder import RunFolder
from training_run.mps import cuda_mps
from training_run.resume import RunPlan, plan_run
from training_run.settings import RunConfig, SettingError

KEYS = ("name", "out", "flags", "grid", "variants", "resources", "max_concurrent", "max_failures", "storage")
RESOURCES = ("cpu", "gpu", "memory_gb")
SWEEP_MANAGED = {
    "out": "the sweep names each run folder (set `out` and `name`)",
    "resume": "a trial resumes by itself",
}
# Short names for a run folder's settings, as results/ names its runs (``lrn_d5_L4_s0``).
SHORT = {"duplicates": "d", "max_depth": "L", "seed": "s", "task_prior_std": "p", "bonus_weight": "bonus"}
# Tune's status table shows the first four numbers of a result: these.
TABLE_COLUMNS = ("epoch", "test_accuracy", "test_balanced_accuracy", "train_accuracy")
# Environment variables of the sweep's shell that its trials get too.
FORWARDED_ENV = (
    "ROUTING_ENV_DATA",
    "PYTORCH_CUDA_ALLOC_CONF",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
)
INSTALL_HINT = "Ray Tune is not installed: pip install -e '.[sweep]'"


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Trial:
    """One run of a sweep.

    Attributes:
        key: ``<benchmark>/<run name>``, the run folder under the sweep's ``out`` (Tune's trial name).
        settings: the run's settings (``{"section.field": value}``, ``run.out`` included): what it gives
            explicitly; the rest is the preset's and the defaults.
        out: the run folder.
    """

    key: str
    settings: dict[str, Any]
    out: Path

    def config(self) -> RunConfig:
        return RunConfig.from_settings(self.settings)

    def command(self) -> str:
        """The train.py command that runs this trial alone."""
        return " ".join(["python train.py", *command_line(self.settings)])


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
    """Read and check a sweep file: every trial's settings go through train.py's checks here, so a bad
    file fails at once with one :class:`SweepError`, before Ray starts."""
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
    for where, keys in [
        ("flags", flags),
        ("grid", grid),
        *((f"variants: {v}", d or {}) for v, d in variants.items()),
    ]:
        for key in keys:
            _check_name(key, where)
    trials = []
    for label, variant in variants.items():
        variant = variant or {}
        for point in itertools.product(*grid.values()):
            varied = dict(zip(grid, point))
            values = _merge(flags, variant, varied, label)
            trials.append(_trial(name, label, varied, values, out))
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


def _check_name(key: Any, where: str) -> None:
    """One error for a sweep file's key that is no flag of train.py (``max_depth`` or ``max-depth``)."""
    name = str(key).replace("-", "_")
    if name in SWEEP_MANAGED:
        raise SweepError(f"{where}: {key} is not set in a sweep file: {SWEEP_MANAGED[name]}")
    if name not in names():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise SweepError(f"{where}: unknown flag {key!r} (train.py has no --{name.replace('_', '-')}){hint}")


def _merge(flags: dict, variant: dict, varied: dict, label: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for where, part in (("flags", flags), (f"variant {label}", variant), ("grid", varied)):
        for key, value in part.items():
            norm = str(key).replace("-", "_")
            if norm in values:
                raise SweepError(f"{key} is set twice (in {values[norm][0]} and {where}): set it once")
            values[norm] = (where, value)
    return {k: v for k, (_, v) in values.items()}


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


def _trial(name: str, label: str, varied: dict, values: dict, out: Path) -> Trial:
    run = _run_name(name, label, varied)
    try:
        settings = settings_from_names(values)
        cfg = RunConfig.from_settings(settings)
    except SettingError as e:
        raise SweepError(f"trial {run}: {e}") from e
    key = f"{cfg.env.benchmark}/{run}"
    # Trials share one terminal, where Tune shows their progress: no progress bar unless asked for.
    settings = {"run.progress": False, **settings, "run.out": str(out / key)}
    return Trial(key=key, settings=settings, out=out / key)


# --- running on Ray Tune ------------------------------------------------------------------------------


def plan_trial(trial: Trial) -> RunPlan:
    """The trial's run as ``train.py --resume`` plans it: it continues its folder's run (with the trial's
    settings, where a resume may change them; a run past the trial's epochs is finished), starts over one
    stopped before its first checkpoint, or starts one in an empty folder.

    Raises:
        ValueError: the folder holds a run the trial cannot continue (one line).
    """
    folder, settings = RunFolder(trial.out), trial.settings
    epoch = folder.checkpoint.epoch()
    if epoch is not None and epoch + 1 > trial.config().epochs:
        settings = {**settings, "run.epochs": epoch + 1}  # it ran more epochs than the file asks now: done
    cfg = RunConfig.from_settings(settings)
    return plan_run(cfg, settings, resume=folder.has_config() or folder.has_checkpoint())


def check_run_folders(sweep: Sweep) -> dict[Path, RunPlan]:
    """The plan of each trial whose run folder already holds a run; one :class:`SweepError` for folders a
    trial cannot continue: a run without a checkpoint (a rerun would mix two runs in one folder) or a run
    of other settings."""
    plans, problems = {}, []
    for t in sweep.trials:
        folder = RunFolder(t.out)
        if not (folder.has_config() or folder.has_checkpoint()):
            continue
        try:
            plan = plan_trial(t)
        except ValueError as e:
            problems.append(f"{t.out}: {str(e).removeprefix('--resume: ')}")
            continue
        if plan.resume:
            plans[t.out] = plan
        elif folder.has_metrics():
            problems.append(f"{t.out}: holds a run without a checkpoint")
    if problems:
        listed = "\n  ".join(problems)
        raise SweepError(f"move these run folders or rename the sweep:\n  {listed}")
    return plans


def describe_plan(plan: RunPlan) -> str:
    """What a trial does with its run folder (``"resumes after epoch 3"``)."""
    if plan.finished:
        return f"finished ({plan.done_epochs} epochs): skipped"
    return f"resumes after epoch {plan.done_epochs - 1}"


def run_trial(config: dict[str, Any], trials: dict[str, Trial]) -> None:
    """A Tune trial: ``train`` the trial's plan (continuing the run folder's checkpoint if there is one),
    reporting every epoch's record (those already in the run folder first) to Tune."""
    from ray import tune

    from training_run.loop import train

    trial = trials[config["run"]]
    plan = plan_trial(trial)
    report = _reporter(trial.out, with_checkpoint=plan.config.checkpoint)
    if plan.note:
        print(plan.note)
    if plan.resume:
        reported = _restored_epoch(tune.get_checkpoint())
        if reported >= 0:
            print(f"{trial.out}: Tune restarts it after epoch {reported}")
        for record in plan.folder.read_metrics():
            if reported < record["epoch"] < plan.done_epochs:
                report(record)
    train(plan, on_epoch=report)


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
    sweep: Sweep,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    mps: bool = True,
) -> int:
    """Run every trial of ``sweep`` that is not finished on Ray Tune; 0 when all finished, 1 when one
    failed for good. Finished runs (a rerun of the sweep) are skipped before Ray starts: no trial, no
    write into their folder.

    Args:
        sweep: the checked sweep.
        address: a Ray cluster's address; None: ``$RAY_ADDRESS``, a cluster started on this machine, or
            a new local Ray.
        num_cpus, num_gpus: the size of a new local Ray (default: the machine's).
        mps: where trials share a card (``gpu`` below 1), run them under CUDA MPS on this machine
            (:mod:`training_run.mps`: started before Ray, so Ray's workers are its clients; without MPS
            they share the card by time slicing). False: never.
    """
    try:
        from ray import tune  # noqa: F401 (installed? the trials run in _run_on_ray)
    except ImportError as e:
        raise SweepError(INSTALL_HINT) from e
    plans = check_run_folders(sweep)
    for out, plan in plans.items():
        print(f"{out}: {describe_plan(plan)}")
    todo = [t for t in sweep.trials if not (t.out in plans and plans[t.out].finished)]
    if not todo:
        return _summary(sweep, [])
    shared_card = 0 < sweep.resources.get("gpu", 0) < 1
    with cuda_mps(mps) if shared_card else contextlib.nullcontext():
        # Workers of a cluster started by `ray start` have that shell's environment, not this one's (read
        # inside cuda_mps: with MPS off beside a running daemon it points the runs away from it).
        forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if shared_card:
            # Trials that share a card return freed memory to it instead of each keeping a cache.
            forwarded.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        return _run_on_ray(sweep, todo, address, num_cpus, num_gpus, forwarded)


def _run_on_ray(
    sweep: Sweep,
    todo: list[Trial],
    address: str | None,
    num_cpus: int | None,
    num_gpus: int | None,
    forwarded: dict[str, str],
) -> int:
    """The trials ``todo`` of ``sweep`` on Ray Tune (:func:`run_sweep`)."""
    import ray
    from ray import tune

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
            tune.with_parameters(run_trial, trials={t.key: t for t in todo}), resources
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search([t.key for t in todo])},
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
        return _summary(sweep, list(results))
    finally:
        ray.shutdown()


def _trial_name(trial: Any) -> str:
    return trial.config["run"]


def _trial_dirname(trial: Any) -> str:
    return trial.config["run"].replace("/", "-")


def _summary(sweep: Sweep, results: list[Any]) -> int:
    """Print one line per trial (its run folder, epochs, last test accuracy); 1 if any failed. A trial
    without a Tune result was finished before the sweep started (or did not run)."""
    by_key = {r.config["run"]: r for r in results}
    failed = 0
    print(f"\nsweep {sweep.name}: {len(sweep.trials)} trials")
    for t in sweep.trials:
        result = by_key.get(t.key)
        if result is None:
            records = RunFolder(t.out).read_metrics()
            if records and records[-1]["epoch"] + 1 >= t.config().epochs:
                epoch, accuracy = records[-1]["epoch"], 100 * records[-1]["test_accuracy"]
                print(f"  done    {t.out}: finished before, epoch {epoch}, test accuracy {accuracy:.2f}%")
                continue
            failed += 1
            print(f"  FAILED  {t.out}: did not run")
        elif result.error is not None:
            failed += 1
            why = str(result.error).strip().splitlines()[-1]
            print(f"  FAILED  {t.out}: {why} (Tune's log: {result.path})")
        elif "epoch" in result.metrics:
            accuracy = 100 * result.metrics["test_accuracy"]
            print(f"  done    {t.out}: epoch {result.metrics['epoch']}, test accuracy {accuracy:.2f}%")
        else:
            print(f"  done    {t.out}: no epoch to run")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="-m training_run.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="the sweep file (YAML)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the trials' run folders and commands, run nothing"
    )
    parser.add_argument("--address", help="a Ray cluster's address (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray (default: all)")
    parser.add_argument("--num-gpus", type=int, help="GPUs of a new local Ray (default: all)")
    parser.add_argument(
        "--no-mps", action="store_true", help="trials that share a card do not use CUDA MPS (time slicing)"
    )
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.file)
        if args.dry_run:
            for t in sweep.trials:
                print(f"{t.out}: {t.command()}")
            print(f"{len(sweep.trials)} trials, each {sweep.resources}")
            return 0
        return run_sweep(sweep, args.address, args.num_cpus, args.num_gpus, mps=not args.no_mps)
    except SweepError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    sys.exit(main())
