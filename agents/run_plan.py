"""What train.py settles before torch loads: whether ``--out`` can hold a run, whether the run starts
fresh or continues, and with which settings.

``--resume`` continues the run in ``--out`` with the settings in its ``config.json``. A flag given with
``--resume`` may change only what :data:`ALLOWED_ON_RESUME` lists (how long and where the run goes on,
not what it trains); any other setting that differs from the saved one is refused with one line that
names each difference. A run stopped before its first checkpoint starts over. Imports no torch, so all
of this fails or passes within a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path
from typing import Any

from agents.cli import SECTIONS, SettingError, config_from_settings, switch_of
from agents.config import RunConfig

# "section.field" settings a resumed run may change, and why each is safe.
ALLOWED_ON_RESUME: dict[str, str] = {
    "run.epochs": "train longer (not below the epochs already trained)",
    "run.progress": "the progress bar",
    "run.checkpoint": "whether checkpoints are written from now on",
    "run.checkpoint_every_minutes": "how often checkpoints are written",
    "run.threads": "CPU threads",
    "run.tf32": "CUDA matmul precision (results are no longer bit-identical)",
    "run.eval_batch_size": "how evaluation is batched (memory)",
    "env.device": "where it runs (results are no longer bit-identical)",
    "env.dispatch": "how modules are dispatched (results are no longer bit-identical)",
    "env.data_root": "where the same data lies",
    "env.download": "whether missing data may be downloaded",
}
CONFIG_FILE = "config.json"


def resume_command(out: Path) -> str:
    """The command that continues the run in ``out``."""
    return f"python train.py --out {shlex.quote(str(out))} --resume"


def check_out_folder(out: Path) -> None:
    """Fail at once when ``out`` cannot be a run folder: a file, or a folder that cannot be created or
    written. Leaves nothing behind (a folder created to try is removed again)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    created = []
    try:
        missing = out
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        if not missing.is_dir():
            raise ValueError(f"--out {out}: {missing} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} cannot hold a run: {e.strerror or e}") from e
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def has_checkpoint(out: Path) -> bool:
    """A complete checkpoint (or the previous one, when a save was killed between its two renames)."""
    return any((out / name / "state.json").exists() for name in ("checkpoint", "checkpoint.old"))


def checkpoint_state(out: Path) -> dict[str, Any]:
    for name in ("checkpoint", "checkpoint.old"):
        path = out / name / "state.json"
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"no checkpoint in {out}")


def has_metrics(out: Path) -> bool:
    path = out / "metrics.jsonl"
    return path.exists() and bool(path.read_text().strip())


def writes_checkpoints(out: Path) -> bool:
    """Whether the run in ``out`` was made to write checkpoints (not ``--no-checkpoint``)."""
    try:
        return bool(saved_settings(read_config(out)).get("run.checkpoint", True))
    except ValueError:  # no readable config.json: nothing says it was not
        return True


def read_config(out: Path) -> dict[str, Any]:
    path = out / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume: cannot read {path}: {e}") from e


def plan_run(cfg: RunConfig, given: dict[str, Any], resume: bool) -> tuple[RunConfig, bool]:
    """The configuration to train and whether it continues from a checkpoint.

    Args:
        cfg: the configuration the flags give.
        given: the settings the flags gave explicitly (``{"section.field": value}``).
        resume: ``--resume`` was passed.

    Returns:
        ``(config, continue_from_checkpoint)``; without a checkpoint the run starts (over) at epoch 0.

    Raises:
        ValueError: one line saying why not (a bad ``--out``, a folder holding another run, a setting a
            resume may not change).
    """
    out = cfg.out
    check_out_folder(out)
    checkpointed = has_checkpoint(out)
    if not resume:
        if checkpointed:
            raise ValueError(
                f"{out} already holds a run; pass --resume to continue it or choose another --out"
            )
        if has_metrics(out):
            if not writes_checkpoints(out):
                raise ValueError(f"{out} holds a run made with --no-checkpoint; choose another --out")
            raise ValueError(
                f"{out} holds a run stopped before its first checkpoint; pass --resume to start it over "
                "or choose another --out"
            )
        return cfg, False
    if not (out / CONFIG_FILE).exists():
        if checkpointed:
            raise ValueError(f"--resume: {out} has a checkpoint but no {CONFIG_FILE}: unknown settings")
        raise ValueError(f"--resume: no checkpoint in {out} (no run was started there)")
    saved = read_config(out)
    cfg = resumed_config(saved, given, out)
    if not checkpointed:
        if has_metrics(out) and not writes_checkpoints(out):
            raise ValueError(f"--resume: {out} was run with --no-checkpoint: there is nothing to continue")
        print(f"{out} has no checkpoint (the run stopped before its first one): starting it over")
        return cfg, False
    done = int(checkpoint_state(out)["epoch"]) + 1
    if cfg.epochs < done:
        raise ValueError(f"--resume: --epochs {cfg.epochs} is fewer than the {done} epochs {out} has trained")
    return cfg, True


def resumed_config(saved: dict[str, Any], given: dict[str, Any], out: Path) -> RunConfig:
    """The saved run's configuration with the flags given now; refuses a change not in
    :data:`ALLOWED_ON_RESUME` (one line naming every difference)."""
    settings = saved_settings(saved)
    settings["run.out"] = str(out)
    try:
        before = flat_settings(config_from_settings(settings))
    except SettingError as e:
        raise ValueError(f"--resume: {e}") from e
    # Compared before the new configuration is built: a refused change may not even make a valid one.
    refused = {k: (before[k], v) for k, v in given.items() if k in before and changed(before[k], v)}
    refused = refused_changes(refused)
    if refused:
        diffs = ", ".join(
            f"{_flag(k)} {_show(new)} (the run has {_show(old)})" for k, (old, new) in refused.items()
        )
        allowed = ", ".join(_flag(k) for k in ALLOWED_ON_RESUME)
        raise ValueError(
            f"--resume: {out} was started with other settings: {diffs}; a resumed run may change only "
            f"{allowed} (use a new --out for the others)"
        )
    try:
        return config_from_settings({**settings, **given})
    except SettingError as e:
        raise ValueError(f"--resume: {e}") from e


def resume_changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, list[Any]]:
    """``{"section.field": [saved, now]}`` for every setting of ``cfg`` that differs from ``config.json``
    (``config.json``'s ``resumed`` list records them). Raises ValueError for one a resume may not change."""
    changes = settings_changes(saved, cfg)
    refused = sorted(refused_changes(changes))
    if refused:
        raise ValueError(f"a resumed run may not change {', '.join(refused)}")
    return changes


def refused_flags(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """The changes of ``cfg`` against ``config.json`` that a resume refuses, ``--flag: old there, new here``
    (what a sweep reports for a run folder it cannot continue)."""
    refused = refused_changes(settings_changes(saved, cfg))
    return [f"{_flag(k)}: {_show(old)} there, {_show(new)} here" for k, (old, new) in refused.items()]


def settings_changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, list[Any]]:
    """``{"section.field": [saved, now]}`` for every setting ``config.json`` records that ``cfg`` changes."""
    before, now = saved_settings(saved), flat_settings(cfg)
    return {k: [before[k], now[k]] for k in now if k in before and changed(before[k], now[k])}


def refused_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``{"section.field": ...}`` that a resumed run may not change."""
    return {k: v for k, v in changes.items() if k not in ALLOWED_ON_RESUME and k != "run.out"}


def saved_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``{"section.field": value}`` of every setting a ``config.json`` records, in the nested layout
    (``RunConfig.to_dict()``) or the flat one of runs made before it; fields this code no longer has are
    left out, fields it did not have yet are absent (their defaults apply)."""
    if "env_id" in config:
        nested = {"run": config, **{s: config.get(s, {}) for s, _, _ in SECTIONS if s != "run"}}
    else:
        renamed = {"env_id": "env", "algo": "algo", "seed": "seed", "epochs": "epochs"}
        renamed.update({k: k for k in ("limit_test", "eval_batch_size", "router_lr")})
        renamed.update({"checkpoint": "no_checkpoint", "progress": "no_progress", "tf32": "no_tf32"})
        renamed.update({"task_prior_std": "task_prior", "learner": "rn_learner"})
        old = {new: config[name] for new, name in renamed.items() if name in config}
        for flag in ("checkpoint", "progress", "tf32"):
            if flag in old:
                old[flag] = not old[flag]
        nested = {
            "run": old,
            "env": config.get("env_config", {}),
            "agent": {**config.get("algo_config", {}), **old},
            "router": old,
            "routing_network": old,
        }
    settings = {}
    for section, cls, _ in SECTIONS:
        names = {f.name for f in dataclasses.fields(cls)} - {s for s, _, _ in SECTIONS}
        settings.update({f"{section}.{k}": v for k, v in nested[section].items() if k in names})
    return settings


def flat_settings(cfg: RunConfig) -> dict[str, Any]:
    """``{"section.field": value}`` of every field of ``cfg``, as JSON values."""
    nested = cfg.to_dict()
    sections = {s for s, _, _ in SECTIONS if s != "run"}
    flat = {f"run.{k}": v for k, v in nested.items() if k not in sections}
    for section in sections:
        flat.update({f"{section}.{k}": v for k, v in nested[section].items()})
    return flat


def changed(old: Any, new: Any) -> bool:
    return _canonical(old) != _canonical(new)


def _canonical(value: Any) -> str:
    if isinstance(value, (str, os.PathLike)) and str(value).startswith(("/", ".", "~")):
        value = os.path.normpath(os.path.expanduser(str(value)))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value, default=str)
    return repr(float(value))


def _flag(key: str) -> str:
    section, _, name = key.partition(".")
    return switch_of(section, name)


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value) if isinstance(value, list) else str(value)
