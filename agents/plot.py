"""Plots of training runs, like the LRN paper's Figures 2-7.

    python -m agents.plot RUN [RUN ...] [--out FILE]

draws the test accuracy (and balanced accuracy) of several run folders on one figure.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# What plot_run writes into a run folder.
PLOT_FILES = ("accuracy.png", "unused_modules.png", "module_usage.png", "route_statistics.png")
ACCURACY_PNG, UNUSED_PNG, USAGE_PNG, ROUTE_STATS_PNG = PLOT_FILES


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run} has no metrics.jsonl: is it a train.py run folder?")
    return parse_metrics(path)[0]


def parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a ``metrics.jsonl`` and its last line when a kill cut it off (else None), which
    is left out. Any other line that is not JSON raises ValueError."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                return records, line
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e})") from e
    return records, None


# What runs made before a setting existed did: the behaviour of the code that made them.
BEFORE_OPTIONS = {
    "reward_timing": "terminal",
    "freeze_unused": False,
    "decoder_queries": "all",
    "normalize_instance": False,
    "critic_encoder": "shared",
    "task_prior_std": 0.0,
    "task_prior_steps": "all",
    "static_start": 0.0,
    "bonus_scope": "pool",
    "val_fraction": 0.0,
    "augment": False,
    "weight_decay": 0.0,
    "module_dropout": 0.0,
    "bonus_warmup": 0,
}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings from its config.json, flat: ``algo``, ``seed``, ``epochs``, the env's fields, the
    agent's and the router's, and ``rn_learner``. Reads both the nested layout train.py writes and the
    flat one of runs made before it (``env_config``, ``algo_config``, ``task_prior``); a setting a run's
    code did not have yet reads as what that code did (:data:`BEFORE_OPTIONS`)."""
    if "env_id" in config:  # nested: RunConfig.to_dict()
        flat = {**config["env"], **config["agent"], **config["router"]}
        flat["rn_learner"] = config["routing_network"]["learner"]
    else:
        flat = {**config.get("algo_config", {}), **config.get("env_config", {})}
        flat["task_prior_std"] = config.get("task_prior", 0.0)
        flat["router_lr"] = config.get("router_lr")
        flat["rn_learner"] = config.get("rn_learner", "wpl")
        flat.setdefault("bonus_warmup", config.get("bonus_warmup", 0))
        for key in ("duplicates", "max_depth", "bonus_weight", "ent_coef", "minibatch_unit"):
            flat.setdefault(key, config.get(key))
    for key, value in BEFORE_OPTIONS.items():
        flat.setdefault(key, value)
    for key in ("algo", "seed", "epochs"):
        flat[key] = config.get(key)
    return flat


def describe(config: dict[str, Any]) -> str:
    """A run's setting in words, from its config.json (README's tables and the figures' legends)."""
    s = settings(config)
    algo = s["algo"]
    beyond = [
        text
        for text, on in (
            ("augmentation", s["augment"]),
            (f"weight decay {s['weight_decay']:g}", s["weight_decay"]),
            (f"module dropout {s['module_dropout']:g}", s["module_dropout"]),
        )
        if on
    ]
    split = [f"val split {s['val_fraction']:g}"] if s.get("val_fraction") else []
    if algo == "static":
        return ", ".join(["static network", *split, *beyond])
    if algo == "routing_network":
        name = f"routing network ({s['rn_learner']}, {s['duplicates']} modules/depth)"
        return ", ".join([name, *split, *beyond])
    bonus = s.get("bonus_weight", 1.0)
    parts = [f"LRN ({algo})", f"d{s['duplicates']} L{s['max_depth']}"]
    parts.append("no bonus" if bonus == 0 else f"bonus {bonus:g}")
    if bonus > 0 and s["bonus_scope"] != "pool":
        parts.append(f"bonus per {s['bonus_scope']}")
    if s.get("bonus_warmup") and bonus > 0:
        parts.append(f"bonus from epoch {s['bonus_warmup']}")
    parts.append("per-step rewards" if s["reward_timing"] == "per_step" else "terminal reward")
    parts.append("unused modules frozen" if s["freeze_unused"] else "plain Adam")
    if s["decoder_queries"] == "valid":
        parts.append("valid-action queries")
    if s["normalize_instance"]:
        parts.append("normalised instance token")
    if s["critic_encoder"] == "separate":
        parts.append("separate critic")
    if s.get("task_prior_std"):
        parts.append(
            f"task prior {s['task_prior_std']:g}"
            + (" on the head" if s["task_prior_steps"] == "head" else "")
        )
    if s["static_start"]:
        parts.append(f"static start {s['static_start']:g}")
    if s.get("ent_coef"):
        parts.append(f"entropy {s['ent_coef']:g}")
    if s.get("router_lr"):
        parts.append(f"router lr {s['router_lr']:g}")
    if s.get("minibatch_unit") == "transitions":
        parts.append("minibatch 64 transitions")
    return ", ".join(parts + split + beyond)


def run_label(run: Path) -> str:
    config_path = Path(run) / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        return f"{describe(config)}, seed {config.get('seed')}"
    return Path(run).name


def plot_run(run: Path, action_names: list[str] | None = None) -> list[Path]:
    """Write :data:`PLOT_FILES` (accuracy, unused modules, module usage) into the run folder."""
    run = Path(run)
    records = read_metrics(run)
    if not records:
        return []
    epochs = [r["epoch"] for r in records]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [100 * r["test_accuracy"] for r in records], marker="o", label="accuracy")
    ax.plot(
        epochs, [100 * r["test_balanced_accuracy"] for r in records], marker="s", label="balanced accuracy"
    )
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=run_label(run))
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, run / ACCURACY_PNG))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["unused_modules"] for r in records], marker="o")
    ax.set(xlabel="epoch", ylabel="modules unused on the test set", title=run_label(run))
    ax.grid(alpha=0.3)
    written.append(_save(fig, run / UNUSED_PNG))

    usage = records[-1].get("module_usage")
    if usage:
        n_tasks, n_modules = len(usage), len(usage[0])
        fig, ax = plt.subplots(figsize=(max(6, n_modules * 0.18), max(3, n_tasks * 0.35)))
        im = ax.imshow(usage, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(xlabel="module", ylabel="task", title=f"test routes, epoch {records[-1]['epoch']}")
        if action_names and len(action_names) >= n_modules:
            ax.set_xticks(range(n_modules), action_names[:n_modules], rotation=90, fontsize=5)
        fig.colorbar(im, ax=ax, label="uses")
        written.append(_save(fig, run / USAGE_PNG))
    if "route_overlap" in records[-1]:  # runs evaluated before the route statistics existed lack them
        written.append(plot_route_statistics(records, run / ROUTE_STATS_PNG, run_label(run)))
    return written


def plot_route_statistics(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """The route statistics of every epoch (:func:`agents.route_stats.route_statistics`): sharing between
    tasks (overlap of their module sets, modules shared by 2+ tasks) and routing within a task (distinct
    routes, route entropy)."""
    epochs = [r["epoch"] for r in records]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else r[key] for r in records]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
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
    labels = [textwrap.fill(run_label(Path(run)), 120) for run in runs]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    # The legend goes under the axes: run labels name every setting and are too long to sit inside.
    fig, ax = plt.subplots(figsize=(8, 4.5 + 0.16 * legend_lines))
    for run, label in zip(runs, labels):
        records = read_metrics(Path(run))
        ax.plot([r["epoch"] for r in records], [100 * r[key] for r in records], label=label)
    ax.set(xlabel="epoch", ylabel=f"{key.replace('_', ' ')} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    return _save(fig, out)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="train.py run folders")
    parser.add_argument("--out", type=Path, default=Path("runs_accuracy.png"), help="figure to write")
    parser.add_argument("--key", default="test_accuracy", help="metric to plot (test_balanced_accuracy, ...)")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not (run / "metrics.jsonl").exists():
            parser.error(f"{run} has no metrics.jsonl")
    print(plot_runs(args.runs, args.out, args.key))


if __name__ == "__main__":
    main()
