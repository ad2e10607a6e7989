"""A run folder: its metrics (JSONL + TensorBoard) and its checkpoints, with the RNG states they hold."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.plot import PLOT_FILES, parse_metrics
from agents.run_plan import checkpoint_state, has_checkpoint


class MetricsLog:
    """``<out>/metrics.jsonl`` (one object per epoch) and TensorBoard scalars under ``<out>/tb``.

    Args:
        out: the run folder.
        tensorboard: also write TensorBoard scalars.
        purge_step: a resumed run's first epoch: TensorBoard drops what an earlier process logged from
            that step on (the epochs after the checkpoint), so no step shows twice.
    """

    def __init__(self, out: Path, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.path = out / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=purge_step)

    def read(self) -> list[dict[str, Any]]:
        """The records; a last line cut off by a kill is left out, with a warning."""
        if not self.path.exists():
            return []
        records, torn = parse_metrics(self.path)
        if torn is not None:
            print(
                f"warning: {self.path}: dropped its last line, cut off when the run was stopped "
                f"({len(torn)} characters)",
                file=sys.stderr,
            )
        return records

    def truncate(self, last_epoch: int) -> None:
        """Drop epochs after ``last_epoch`` (written before a kill, after the last checkpoint)."""
        kept = [r for r in self.read() if r["epoch"] <= last_epoch]
        atomic_write(self.path, "".join(json_line(r) for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's record; a non-finite number is written as null (JSON has no NaN)."""
        record = finite_or_null(record)
        with self.path.open("a") as f:
            f.write(json_line(record))
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinity inside it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, allow_nan=False) + "\n"


# What a run leaves in its folder besides config.json: a fresh start removes them.
RUN_FILES = ("metrics.jsonl", "tb", "checkpoint", "checkpoint.tmp", "checkpoint.old")


def clear_run(out: Path) -> None:
    """Remove what an earlier run left in ``out`` (metrics, TensorBoard logs, checkpoints, plots), so a
    run that starts over there does not mix with it."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for png in PLOT_FILES:
        (out / png).unlink(missing_ok=True)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoint:
    """``<out>/checkpoint/``: the agent, the env's pool and data walk, RNG states and where the run is.

    Written between two batches (after an epoch, or within one, see ``RunConfig.checkpoint_every_minutes``)
    to ``checkpoint.tmp`` and renamed into place, so a kill at any moment leaves the last complete
    checkpoint. ``state.json`` holds ``epoch`` (the last complete epoch, -1 for none), ``next_batch`` (the
    batches of the following epoch already trained) and the wall clock.
    """

    def __init__(self, out: Path) -> None:
        self.folder = out / "checkpoint"

    def exists(self) -> bool:
        return (self.folder / "state.json").exists()

    def resumable(self) -> bool:
        """A complete checkpoint is there (maybe only as ``checkpoint.old``, see :meth:`load`)."""
        return has_checkpoint(self.folder.parent)

    def epoch(self) -> int | None:
        """The last epoch the checkpoint holds, or None without one."""
        return int(checkpoint_state(self.folder.parent)["epoch"]) if self.resumable() else None

    def save(self, epoch: int, trainer: Any, env_state: dict[str, Any], extra: dict[str, Any]) -> None:
        tmp = self.folder.with_name("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainer.save(tmp)
        torch.save(env_state, tmp / "env.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "time": time.time(), **extra}))
        old = self.folder.with_name("checkpoint.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            os.replace(self.folder, old)
        os.replace(tmp, self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, trainer: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Load the agent into ``trainer``; return (state.json, env state, rng state). Tensors load on
        the CPU (the env copies them to its device), so a run may continue on another device."""
        if not self.exists():
            old = self.folder.with_name("checkpoint.old")
            if (old / "state.json").exists():  # killed between the two renames
                os.replace(old, self.folder)
            else:
                raise FileNotFoundError(f"no checkpoint in {self.folder}")
        trainer.load(self.folder)
        state = json.loads((self.folder / "state.json").read_text())
        env_state = torch.load(self.folder / "env.pt", map_location="cpu", weights_only=False)
        rng = torch.load(self.folder / "rng.pt", map_location="cpu", weights_only=False)
        return state, env_state, rng
