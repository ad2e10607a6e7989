"""A run folder (``--out``): the one owner of its format.

A run folder holds:

* ``config.json``: the run's settings (:meth:`RunConfig.to_dict`, nested by section; runs made before
  that layout have a flat one, read by :func:`training_run.settings.settings_of_dict`) and facts of the
  run (``device_name``, ``train_pairs``, ``test_pairs``, ``val_pairs``, ``batches_per_epoch``,
  ``torch``, and ``resumed``: one entry per resume);
* ``metrics.jsonl``: one JSON object per epoch (:class:`MetricsLog`), and ``tb/``: the same as
  TensorBoard scalars;
* ``checkpoint/``: the agent, the env's pool and data walk, RNG states and where the run stands
  (:class:`Checkpoint`), written as ``checkpoint.tmp`` and renamed into place (``checkpoint.old`` holds
  the one before while the renames run);
* the plots of :data:`PLOT_FILES`;
* with ``--save-weights``, ``weights.pt`` (:data:`WEIGHTS_FILE`), written when the run ends;
* what ``python -m training_run.evaluate`` writes: ``evaluation-<split>.json`` and ``routes-<split>.png``.

A *weights file* (:func:`save_weights`; ``weights.pt``, or ``python -m training_run.evaluate RUN
--save-weights FILE``) is one file that holds a trained model to share: the run's ``config.json``, the
pool's weights and the agent's, without the optimizers' state, data walk or RNG states (about a third of a
checkpoint); it evaluates, it does not resume.

Every write is atomic (a temporary file or folder renamed into place), so a kill at any moment leaves
the previous complete state. Imports neither torch nor matplotlib (torch loads inside the checkpoint's
and TensorBoard's methods), so train.py checks a folder before torch loads.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from training_run.settings import settings_of_dict

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
CHECKPOINT_DIR = "checkpoint"
WEIGHTS_FILE = "weights.pt"
# What plot_run writes into a run folder, by what it shows.
PLOT_FILES = {
    "accuracy": "accuracy.png",
    "unused_modules": "unused_modules.png",
    "module_usage": "module_usage.png",
    "route_statistics": "route_statistics.png",
}


class RunFolder:
    """The run folder at ``path``: what it holds and how each part is read and written.

    Args:
        path: the folder (it need not exist yet).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def find(cls, root: Path, pattern: str = "*") -> list[RunFolder]:
        """The run folders under ``root`` whose path matches ``pattern`` (a glob) and that hold metrics,
        sorted by path."""
        return [cls(p.parent) for p in sorted(Path(root).glob(f"{pattern}/{METRICS_FILE}"))]

    # ----------------------------------------------------------------- paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard_path(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def plot_path(self, name: str) -> Path:
        """Where the plot ``name`` (a key of :data:`PLOT_FILES`) goes."""
        return self.path / PLOT_FILES[name]

    @property
    def weights_path(self) -> Path:
        """The weights file a run made with ``--save-weights`` writes when it ends."""
        return self.path / WEIGHTS_FILE

    def evaluation_path(self, split: str) -> Path:
        """Where ``python -m training_run.evaluate`` writes its scores of ``split``."""
        return self.path / f"evaluation-{split}.json"

    def routes_path(self, split: str) -> Path:
        """Where ``python -m training_run.evaluate --render N`` draws the routes of ``split``."""
        return self.path / f"routes-{split}.png"

    def resume_command(self) -> str:
        """The command that continues the run here."""
        return f"python train.py --out {shlex.quote(str(self.path))} --resume"

    # ----------------------------------------------------------------- the folder
    def check_writable(self) -> None:
        """Fail at once when the folder cannot hold a run: a file, or a folder that cannot be created or
        written. Leaves nothing behind (a folder created to try is removed again).

        Raises:
            ValueError: one line saying why.
        """
        out = self.path
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

    def clear(self) -> None:
        """Remove what a run left here (metrics, TensorBoard logs, checkpoints, weights, plots,
        evaluations), so a run that starts over does not mix with it; ``config.json`` is rewritten by the
        run that starts."""
        for name in (METRICS_FILE, TENSORBOARD_DIR, WEIGHTS_FILE, *Checkpoint.FOLDERS):
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for png in PLOT_FILES.values():
            (self.path / png).unlink(missing_ok=True)
        for evaluated in (*self.path.glob("evaluation-*.json"), *self.path.glob("routes-*.png")):
            evaluated.unlink()

    # ----------------------------------------------------------------- config.json
    def has_config(self) -> bool:
        return self.config_path.exists()

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as written.

        Raises:
            ValueError: one line when it is missing or not JSON.
        """
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {self.config_path}: {e}") from e

    def saved_settings(self) -> dict[str, Any]:
        """``{"section.field": value}`` of every setting ``config.json`` records (either layout)."""
        return settings_of_dict(self.read_config())

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config_path, json.dumps(config, indent=2, default=str))

    def writes_checkpoints(self) -> bool:
        """Whether the run here was made to write checkpoints (not ``--no-checkpoint``)."""
        try:
            return bool(self.saved_settings().get("run.checkpoint", True))
        except ValueError:  # no readable config.json: nothing says it was not
            return True

    # ----------------------------------------------------------------- metrics
    def has_metrics(self) -> bool:
        return self.metrics_path.exists() and bool(self.metrics_path.read_text().strip())

    def read_metrics(self, warn: bool = False) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl`` ([] without one). A last line cut off by a kill is left
        out (with ``warn``, saying so on stderr); any other line that is not JSON raises ValueError."""
        if not self.metrics_path.exists():
            return []
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i < len(lines) - 1:
                    raise ValueError(f"{self.metrics_path}: line {i + 1} is not JSON ({e})") from e
                if warn:
                    print(
                        f"warning: {self.metrics_path}: dropped its last line, cut off when the run was "
                        f"stopped ({len(line)} characters)",
                        file=sys.stderr,
                    )
        return records

    def metrics_log(self, tensorboard: bool = True, purge_step: int | None = None) -> MetricsLog:
        return MetricsLog(self, tensorboard, purge_step)

    # ----------------------------------------------------------------- checkpoint
    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.path / CHECKPOINT_DIR)

    def has_checkpoint(self) -> bool:
        """A complete checkpoint (or the previous one, when a save was killed between its two renames)."""
        return self.checkpoint.resumable()

    def checkpoint_state(self) -> dict[str, Any] | None:
        """The checkpoint's ``state.json`` (where the run stands), None without a checkpoint."""
        return self.checkpoint.state()


class MetricsLog:
    """A run folder's ``metrics.jsonl`` (one object per epoch) and its TensorBoard scalars under ``tb/``.

    Args:
        folder: the run folder.
        tensorboard: also write TensorBoard scalars.
        purge_step: a resumed run's first epoch: TensorBoard drops what an earlier process logged from
            that step on (the epochs after the checkpoint), so no step shows twice.
    """

    def __init__(self, folder: RunFolder, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.folder = folder
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder.tensorboard_path), purge_step=purge_step)

    def truncate(self, last_epoch: int) -> None:
        """Drop epochs after ``last_epoch`` (written before a kill, after the last checkpoint)."""
        kept = [r for r in self.folder.read_metrics(warn=True) if r["epoch"] <= last_epoch]
        atomic_write(self.folder.metrics_path, "".join(json_line(r) for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's record; a non-finite number is written as null (JSON has no NaN)."""
        record = finite_or_null(record)
        with self.folder.metrics_path.open("a") as f:
            f.write(json_line(record))
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Checkpoint:
    """A run folder's ``checkpoint/``: the agent (``trainer.save``), the env's pool and data walk
    (``env.pt``), RNG states (``rng.pt``) and ``state.json``: ``epoch`` (the last complete epoch, -1 for
    none), ``next_batch`` (the batches of the following epoch already trained), the wall clock and what
    the loop adds.

    Written to ``checkpoint.tmp`` and renamed into place, the previous one moved to ``checkpoint.old``
    meanwhile, so a kill at any moment leaves the last complete checkpoint.
    """

    FOLDERS = (CHECKPOINT_DIR, CHECKPOINT_DIR + ".tmp", CHECKPOINT_DIR + ".old")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tmp = folder.with_name(folder.name + ".tmp")
        self.old = folder.with_name(folder.name + ".old")

    def resumable(self) -> bool:
        """A complete checkpoint is there (maybe only as ``checkpoint.old``, see :meth:`load`)."""
        return any((f / "state.json").exists() for f in (self.folder, self.old))

    def state(self) -> dict[str, Any] | None:
        for folder in (self.folder, self.old):
            path = folder / "state.json"
            if path.exists():
                return json.loads(path.read_text())
        return None

    def epoch(self) -> int | None:
        """The last complete epoch the checkpoint holds (-1: none), or None without a checkpoint."""
        state = self.state()
        return None if state is None else int(state["epoch"])

    def save(
        self, epoch: int, trainer: Any, env_state: dict[str, Any], rng: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        import torch

        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        trainer.save(self.tmp)
        torch.save(env_state, self.tmp / "env.pt")
        torch.save(rng, self.tmp / "rng.pt")
        (self.tmp / "state.json").write_text(json.dumps({"epoch": epoch, "time": time.time(), **extra}))
        shutil.rmtree(self.old, ignore_errors=True)
        if self.folder.exists():
            os.replace(self.folder, self.old)
        os.replace(self.tmp, self.folder)
        shutil.rmtree(self.old, ignore_errors=True)

    def complete(self) -> Path:
        """The folder that holds the last complete checkpoint (``checkpoint.old`` when a save was killed
        between its two renames), without moving anything.

        Raises:
            FileNotFoundError: there is none.
        """
        for folder in (self.folder, self.old):
            if (folder / "state.json").exists():
                return folder
        raise FileNotFoundError(f"no checkpoint in {self.folder}")

    def load_for_evaluation(self, trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load the agent into ``trainer``; return (state.json, the pool's state dict). Reads only; the
        optimizers' state, data walk and RNG states are left where they are."""
        import torch

        folder = self.complete()
        trainer.load(folder)
        state = json.loads((folder / "state.json").read_text())
        env_state = torch.load(folder / "env.pt", map_location="cpu", weights_only=False)
        return state, env_state["pool"]

    def load(self, trainer: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Load the agent into ``trainer``; return (state.json, env state, rng state). Tensors load on
        the CPU (the env copies them to its device), so a run may continue on another device."""
        import torch

        if not (self.folder / "state.json").exists():
            if (self.old / "state.json").exists():  # killed between the two renames
                os.replace(self.old, self.folder)
            else:
                raise FileNotFoundError(f"no checkpoint in {self.folder}")
        trainer.load(self.folder)
        state = json.loads((self.folder / "state.json").read_text())
        env_state = torch.load(self.folder / "env.pt", map_location="cpu", weights_only=False)
        rng = torch.load(self.folder / "rng.pt", map_location="cpu", weights_only=False)
        return state, env_state, rng


# A weights file's ``format`` (what :func:`read_weights` reads).
WEIGHTS_FORMAT = "lrn-weights-1"


def save_weights(
    path: Path, config: dict[str, Any], state: dict[str, Any], pool: dict[str, Any], agent: dict[str, Any]
) -> Path:
    """Write a weights file (module docstring) through a temporary file renamed into place.

    Args:
        path: the file.
        config: the run's ``config.json``.
        state: where the run stood (the checkpoint's ``state.json``).
        pool: the pool's state dict.
        agent: the agent's weights (``Trainer.weights()``).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    content = {"format": WEIGHTS_FORMAT, "config": config, "state": state, "pool": pool, "agent": agent}
    torch.save(content, tmp)
    os.replace(tmp, path)
    return path


def read_weights(path: Path) -> dict[str, Any]:
    """A weights file's content (``config``, ``state``, ``pool``, ``agent``); tensors on the CPU.

    Raises:
        ValueError: one line when it is not a weights file.
    """
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged or foreign file: one line, not the unpickler's traceback
        raise ValueError(f"{path} is not a weights file ({type(e).__name__}: {e})") from e
    if not isinstance(content, dict) or content.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a weights file (python -m training_run.evaluate RUN --save-weights)")
    return content


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


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
