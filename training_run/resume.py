"""What a run settles before torch loads: whether its folder can hold it, whether it starts fresh or
continues, and with which settings: :func:`plan_run` -> :class:`RunPlan`, which
:func:`training_run.loop.train` consumes.

``--resume`` continues the run in ``--out`` with the settings in its ``config.json``. A setting given with
``--resume`` may change only what :data:`ALLOWED_ON_RESUME` lists (how long and where the run goes on, not
what it trains); any other that differs from the saved one is refused with one line that names each
difference. A run stopped before its first checkpoint starts over with ``--resume``; a plain start never
overwrites a folder that holds a run. Imports no torch, so all of this fails or passes within a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training_run.folder import CONFIG_FILE, RunFolder
from training_run.settings import (
    RunConfig,
    SettingError,
    changed,
    given_as,
    settings_of_dict,
    show,
    switch_of,
)

# "section.field" settings a resumed run may change, and why each is safe.
ALLOWED_ON_RESUME: dict[str, str] = {
    "run.epochs": "train longer (not below the epochs already trained)",
    "run.progress": "the progress bar",
    "run.checkpoint": "whether checkpoints are written from now on",
    "run.checkpoint_every_minutes": "how often checkpoints are written",
    "run.save_weights": "whether the weights alone are written when the run ends",
    "run.threads": "CPU threads",
    "run.tf32": "CUDA matmul precision (results are no longer bit-identical)",
    "run.eval_batch_size": "how evaluation is batched (memory)",
    "env.device": "where it runs (results are no longer bit-identical)",
    "env.dispatch": "how modules are dispatched (results are no longer bit-identical)",
    "env.data_root": "where the same data lies",
    "env.download": "whether missing data may be downloaded",
}


@dataclass
class RunPlan:
    """A run settled by :func:`plan_run`, to be trained once by :func:`training_run.loop.train`.

    Attributes:
        config: the configuration to train.
        folder: its run folder.
        resume: continue from the folder's checkpoint; else start at epoch 0 (over what the folder holds).
        saved: the folder's ``config.json`` when the run continues ({} otherwise).
        changes: ``{"section.field": [saved, now]}``: what a resumed run changes (recorded in
            ``config.json``'s ``resumed`` list).
        done_epochs: the epochs the checkpoint holds complete (0 for a run that starts).
        note: a line for the user (a run that starts over), or None.
    """

    config: RunConfig
    folder: RunFolder
    resume: bool = False
    saved: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    done_epochs: int = 0
    note: str | None = None
    used: bool = field(default=False, init=False, repr=False)

    @property
    def finished(self) -> bool:
        """The checkpoint holds every epoch: continuing trains nothing."""
        return self.resume and self.done_epochs >= self.config.epochs

    def take(self) -> None:
        """Mark the plan as trained; a plan is trained once (the folder it checked has changed since)."""
        if self.used:
            raise ValueError(f"this plan of {self.folder.path} was trained already: plan the run again")
        self.used = True


def plan_run(cfg: RunConfig, given: dict[str, Any], resume: bool) -> RunPlan:
    """The run to train in ``cfg.out``: with ``resume``, the folder's run with the settings ``given``;
    else ``cfg`` from epoch 0 in a folder that holds no run.

    Args:
        cfg: the configuration the settings give (its defaults where ``given`` says nothing).
        given: the settings given explicitly (``{"section.field": value}``); with ``resume``, these
            override the saved ones, where a resume may change them.
        resume: continue the run in the folder (``--resume``); one stopped before its first checkpoint
            starts over.

    Raises:
        ValueError: one line saying why not (a bad ``--out``, a folder holding another run, a setting a
            resume may not change).
    """
    folder = RunFolder(cfg.out)
    folder.check_writable()
    if not resume:
        refuse_plain_start(folder)
        return RunPlan(cfg, folder)
    plan = plan_resume(folder, given)
    if "run.out" not in given:  # the folder the other flags name: say which
        which = f"--resume without --out: the run in {folder.path}, train.py's folder for these flags"
        plan.note = which if plan.note is None else f"{which}\n{plan.note}"
    return plan


def plan_resume(folder: RunFolder, given: dict[str, Any]) -> RunPlan:
    """The plan of ``--resume`` in ``folder`` (see :func:`plan_run`)."""
    if not folder.has_config():
        if folder.has_checkpoint():
            raise ValueError(
                f"--resume: {folder.path} has a checkpoint but no {CONFIG_FILE}: unknown settings"
            )
        raise ValueError(f"--resume: no checkpoint in {folder.path} (no run was started there)")
    try:
        saved = folder.read_config()
    except ValueError as e:
        raise ValueError(f"--resume: {e}") from e
    cfg = resumed_config(folder, given)
    state = folder.checkpoint_state()
    if state is None:
        if folder.has_metrics() and not folder.writes_checkpoints():
            raise ValueError(
                f"--resume: {folder.path} was run with --no-checkpoint: there is nothing to continue"
            )
        note = f"{folder.path} has no checkpoint (the run stopped before its first one): starting it over"
        return RunPlan(cfg, folder, note=note)
    done = int(state["epoch"]) + 1
    if cfg.epochs < done:
        raise ValueError(
            f"--resume: --epochs {cfg.epochs} is fewer than the {done} epochs {folder.path} has trained"
        )
    changes = settings_changes(saved, cfg)
    plan = RunPlan(cfg, folder, resume=True, saved=saved, changes=changes, done_epochs=done)
    if plan.finished:
        plan.note = (
            f"{folder.path} is complete: its checkpoint holds every epoch ({done}), so nothing trains and "
            f"nothing is written (--epochs N above {done} trains it longer)"
        )
    return plan


def refuse_plain_start(folder: RunFolder) -> None:
    """A run that starts (no ``--resume``) never overwrites one: refuse a folder that holds a run, even one
    stopped before it wrote anything but ``config.json``, with the one line that says how to go on."""
    if folder.has_checkpoint():
        raise ValueError(
            f"{folder.path} already holds a run; pass --resume to continue it or choose another --out"
        )
    if not (folder.has_config() or folder.has_metrics()):
        return
    if not folder.writes_checkpoints():
        raise ValueError(f"{folder.path} holds a run made with --no-checkpoint; choose another --out")
    raise ValueError(
        f"{folder.path} holds a run stopped before its first checkpoint; pass --resume to start it over "
        "or choose another --out"
    )


def resumed_config(folder: RunFolder, given: dict[str, Any]) -> RunConfig:
    """The saved run's configuration with the settings ``given`` now; refuses a change not in
    :data:`ALLOWED_ON_RESUME` (one line naming every difference)."""
    settings = folder.saved_settings()
    settings["run.out"] = str(folder.path)
    try:
        before = RunConfig.from_settings(settings).to_settings()
    except SettingError as e:
        raise ValueError(f"--resume: {e}") from e
    # Compared before the new configuration is built: a refused change may not even make a valid one.
    refused = refused_changes(
        {k: (before[k], v) for k, v in given.items() if k in before and changed(before[k], v)}
    )
    if refused:
        diffs = ", ".join(
            f"{given_as(k, new)} (the run has {had(k, old)})" for k, (old, new) in refused.items()
        )
        allowed = ", ".join(switch_of(k) for k in ALLOWED_ON_RESUME)
        raise ValueError(
            f"--resume: {folder.path} was started with other settings: {diffs}; a resumed run may change "
            f"only {allowed} (use a new --out for the others)"
        )
    try:
        return RunConfig.from_settings({**settings, **given})
    except SettingError as e:
        raise ValueError(f"--resume: {e}") from e


def settings_changes(saved: dict[str, Any], cfg: RunConfig) -> dict[str, list[Any]]:
    """``{"section.field": [saved, now]}`` for every setting ``config.json`` records that ``cfg`` changes."""
    before, now = settings_of_dict(saved), cfg.to_settings()
    return {k: [before[k], now[k]] for k in now if k in before and changed(before[k], now[k])}


def refused_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``{"section.field": ...}`` that a resumed run may not change."""
    return {k: v for k, v in changes.items() if k not in ALLOWED_ON_RESUME and k != "run.out"}


def had(key: str, value: Any) -> str:
    """A saved setting as a refusal names it: ``--no-freeze-unused`` for a switch, its value else."""
    return given_as(key, value) if isinstance(value, bool) else show(value)
