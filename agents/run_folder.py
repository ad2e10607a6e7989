"""A run folder: its metrics (JSONL + TensorBoard) and its checkpoints, with the RNG states they hold."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


class MetricsLog:
    """``<out>/metrics.jsonl`` (one object per epoch) and TensorBoard scalars under ``<out>/tb``."""

    def __init__(self, out: Path, tensorboard: bool = True) -> None:
        self.path = out / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, last_epoch: int) -> None:
        """Drop epochs after ``last_epoch`` (written before a kill, after the last checkpoint)."""
        kept = [r for r in self.read() if r["epoch"] <= last_epoch]
        _atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _atomic_write(path: Path, text: str) -> None:
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
    """``<out>/checkpoint/``: the agent, the env's pool and data walk, RNG states and the epoch.

    Written to ``checkpoint.tmp`` and renamed into place, so a kill at any moment leaves the last
    complete checkpoint: a killed run loses at most the epoch in progress.
    """

    def __init__(self, out: Path) -> None:
        self.folder = out / "checkpoint"

    def exists(self) -> bool:
        return (self.folder / "state.json").exists()

    def resumable(self) -> bool:
        """A complete checkpoint is there (maybe only as ``checkpoint.old``, see :meth:`load`)."""
        return self.exists() or (self.folder.with_name("checkpoint.old") / "state.json").exists()

    def epoch(self) -> int | None:
        """The last epoch the checkpoint holds, or None without one."""
        for folder in (self.folder, self.folder.with_name("checkpoint.old")):
            if (folder / "state.json").exists():
                return int(json.loads((folder / "state.json").read_text())["epoch"])
        return None

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
        """Load the agent into ``trainer``; return (state.json, env state, rng state)."""
        if not self.exists():
            old = self.folder.with_name("checkpoint.old")
            if (old / "state.json").exists():  # killed between the two renames
                os.replace(old, self.folder)
            else:
                raise FileNotFoundError(f"no checkpoint in {self.folder}")
        trainer.load(self.folder)
        state = json.loads((self.folder / "state.json").read_text())
        env_state = torch.load(self.folder / "env.pt", weights_only=False)
        rng = torch.load(self.folder / "rng.pt", weights_only=False)
        return state, env_state, rng
