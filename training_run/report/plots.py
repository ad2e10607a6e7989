"""Plots of training runs, like the LRN paper's Figures 2-7: the only module that imports matplotlib.

    python -m training_run.report.plots RUN [RUN ...] [--out FILE]

draws the test accuracy (and balanced accuracy) of several run folders on one figure. Figures are drawn
with matplotlib's object API (``matplotlib.figure.Figure``), which needs no backend: plotting never
changes the backend of a process that trains (a notebook's, say).
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from training_run.folder import RunFolder
from training_run.report.describe import run_label


def plot_run(folder: RunFolder, action_names: list[str] | None = None) -> list[Path]:
    """Write the run folder's plots (accuracy, unused modules, module usage, route statistics); none before
    an epoch."""
    records = folder.read_metrics()
    if not records:
        return []
    label = run_label(folder)
    epochs = [r["epoch"] for r in records]
    written = []
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [100 * r["test_accuracy"] for r in records], marker="o", label="accuracy")
    ax.plot(
        epochs, [100 * r["test_balanced_accuracy"] for r in records], marker="s", label="balanced accuracy"
    )
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=label)
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, folder.plot_path("accuracy")))

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(epochs, [r["unused_modules"] for r in records], marker="o")
    ax.set(xlabel="epoch", ylabel="modules unused on the test set", title=label)
    ax.grid(alpha=0.3)
    written.append(_save(fig, folder.plot_path("unused_modules")))

    usage = records[-1].get("module_usage")
    if usage:
        n_tasks, n_modules = len(usage), len(usage[0])
        fig = Figure(figsize=(max(6, n_modules * 0.18), max(3, n_tasks * 0.35)))
        ax = fig.subplots()
        im = ax.imshow(usage, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(xlabel="module", ylabel="task", title=f"test routes, epoch {records[-1]['epoch']}")
        if action_names and len(action_names) >= n_modules:
            ax.set_xticks(range(n_modules), action_names[:n_modules], rotation=90, fontsize=5)
        fig.colorbar(im, ax=ax, label="uses")
        written.append(_save(fig, folder.plot_path("module_usage")))
    if "route_overlap" in records[-1]:  # runs evaluated before the route statistics existed lack them
        written.append(plot_route_statistics(records, folder.plot_path("route_statistics"), label))
    return written


def plot_route_statistics(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """The route statistics of every epoch (:func:`agents.route_stats.route_statistics`): sharing between
    tasks (overlap of their module sets, modules shared by 2+ tasks) and routing within a task (distinct
    routes, route entropy)."""
    epochs = [r["epoch"] for r in records]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else r[key] for r in records]

    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, series("route_overlap"), marker="o", label="module sets (Jaccard)")
    axes[0].plot(epochs, series("route_overlap_weighted"), marker="s", label="usage-weighted")
    axes[0].set(ylabel="overlap of two tasks' modules", ylim=(-0.02, 1.02))
    axes[0].legend()
    axes[1].plot(epochs, series("shared_modules"), marker="o")
    axes[1].set(ylabel="modules used by 2+ tasks")
    axes[2].plot(epochs, series("routes_per_task"), marker="o", label="distinct routes")
    axes[2].plot(epochs, series("route_entropy_bits"), marker="s", label="route entropy (bits)")
    axes[2].set(ylabel="per task (mean over tasks)")
    axes[2].legend()
    for ax in axes:
        ax.set(xlabel="epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(textwrap.fill(title, 160), fontsize=8)
    return _save(fig, out)


def plot_runs(runs: list[Path], out: Path, key: str = "test_accuracy") -> Path:
    """One curve per run folder, on one figure."""
    folders = [RunFolder(run) for run in runs]
    labels = [textwrap.fill(run_label(folder), 120) for folder in folders]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    # The legend goes under the axes: run labels name every setting and are too long to sit inside.
    fig = Figure(figsize=(8, 4.5 + 0.16 * legend_lines))
    ax = fig.subplots()
    for folder, label in zip(folders, labels):
        records = folder.read_metrics()
        ax.plot([r["epoch"] for r in records], [100 * r[key] for r in records], label=label)
    ax.set(xlabel="epoch", ylabel=f"{key.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    return _save(fig, out)


def plot_routes(
    columns: list[list[dict[str, Any]]], task_names: list[str], action_names: list[str], out: Path, title: str
) -> Path:
    """Routes as ``RoutingEnv(render_mode="rgb_array")`` draws them, a column per task: each frame
    (``"frame"``, ``(H, W, 3)`` uint8) with its ``"title"`` above and its ``"route"`` (module names)
    under it, and the module kinds' colours in a legend (:data:`routing_env.render.BANK_COLOURS`)."""
    from matplotlib.patches import Patch

    from routing_env.render import BANK_COLOURS, PASS_COLOUR

    n_rows = max(1, max(len(column) for column in columns))
    frames = [frame for column in columns for frame in column]
    depth = max((len(frame["route"]) for frame in frames), default=1)
    aspect = max((frame["frame"].shape[0] / frame["frame"].shape[1] for frame in frames), default=1.0)
    row_height = 1.7 * aspect + 0.5 + 0.11 * depth  # the frame, two lines above it, a line per step under it
    kinds = list(dict.fromkeys(name.split("[")[0] for name in action_names[:-1]))
    handles = [Patch(color=BANK_COLOURS[i % len(BANK_COLOURS)] / 255, label=k) for i, k in enumerate(kinds)]
    handles.append(Patch(color=PASS_COLOUR / 255, label="PASS"))
    width = 1.9 * len(columns) + 0.4
    ncol = min(len(handles), max(1, int(width / 1.2)))  # the legend in rows on a narrow figure
    legend_height = 0.2 * math.ceil(len(handles) / ncol)
    fig = Figure(figsize=(width, row_height * n_rows + 0.6 + legend_height), layout="constrained")
    axes = fig.subplots(n_rows, len(columns), squeeze=False)
    for t, column in enumerate(columns):
        for r in range(n_rows):
            ax = axes[r, t]
            ax.set_xticks([])
            ax.set_yticks([])
            if r >= len(column):
                ax.set_axis_off()
                continue
            ax.imshow(column[r]["frame"], interpolation="nearest")
            name = f" ({task_names[t]})" if len(task_names[t]) <= 16 else ""  # MIN-MTL's are lists of classes
            heading = f"task {t}{name}\n" if r == 0 else ""
            ax.set_title(heading + column[r]["title"], fontsize=7)
            ax.set_xlabel("\n".join(column[r]["route"]), fontsize=6, family="monospace")
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(textwrap.fill(title, 160), fontsize=8)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return Path(out)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training_run.report.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, help="train.py run folders")
    parser.add_argument("--out", type=Path, default=Path("runs_accuracy.png"), help="figure to write")
    parser.add_argument("--key", default="test_accuracy", help="metric to plot (test_balanced_accuracy, ...)")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not RunFolder(run).metrics_path.exists():
            sys.exit(f"error: {run} has no {RunFolder(run).metrics_path.name}: is it a train.py run folder?")
    print(plot_runs(args.runs, args.out, args.key))


if __name__ == "__main__":
    main()
