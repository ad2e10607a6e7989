"""A run in words: its setting, from its ``config.json`` (the results tables, the figures' legends), and
what it reached (:func:`run_summary`, which train.py prints when a run ends)."""

from __future__ import annotations

from typing import Any

from training_run.folder import PLOT_FILES, RunFolder
from training_run.settings import settings_of_dict

# What runs made before a setting existed did: the behaviour of the code that made them.
BEFORE_OPTIONS = {
    "agent.reward_timing": "terminal",
    "env.freeze_unused": False,
    "router.decoder_queries": "all",
    "router.normalize_instance": False,
    "router.critic_encoder": "shared",
    "router.task_prior_std": 0.0,
    "router.task_prior_steps": "all",
    "router.static_start": 0.0,
    "router.instance_prior_std": 0.0,
    "router.instance_prior_grid": 4,
    "router.instance_prior_steps": "all",
    "env.bonus_scope": "pool",
    "env.val_fraction": 0.0,
    "env.augment": False,
    "env.weight_decay": 0.0,
    "env.module_dropout": 0.0,
    "env.bonus_warmup": 0,
    "env.bonus_until": None,
    "env.task_heads": False,
    "routing_network.learner": "wpl",
    "run.upcycle_epochs": 0,
    "agent.advantage": "gae",
    "agent.explore_epsilon": 0.0,
    "agent.self_imitation": 0.0,
    "agent.ent_coef_end": None,
}


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's ``{"section.field": value}`` from its config.json (either layout); a setting the run's code
    did not have yet reads as what that code did (:data:`BEFORE_OPTIONS`)."""
    return {**BEFORE_OPTIONS, **settings_of_dict(config)}


def describe(config: dict[str, Any]) -> str:
    """A run's setting in words, from its config.json."""
    s = run_settings(config)
    algo = s.get("run.algo")
    beyond = [
        text
        for text, on in (
            ("augmentation", s["env.augment"]),
            (f"weight decay {s['env.weight_decay']:g}", s["env.weight_decay"]),
            (f"module dropout {s['env.module_dropout']:g}", s["env.module_dropout"]),
        )
        if on
    ]
    split = [f"val split {s['env.val_fraction']:g}"] if s.get("env.val_fraction") else []
    if s.get("env.precision") == "bf16":  # the pool's numerics change what it learns; compile does not
        split.append("pool bf16")
    if algo == "static":
        return ", ".join(["static network", *split, *beyond])
    if algo == "routing_network":
        name = f"routing network ({s['routing_network.learner']}, {s.get('env.duplicates')} modules/depth)"
        return ", ".join([name, *split, *beyond])
    bonus = s.get("env.bonus_weight", 1.0)
    parts = [f"LRN ({algo})", f"d{s.get('env.duplicates')} L{s.get('env.max_depth')}"]
    parts.append("no bonus" if bonus == 0 else f"bonus {bonus:g}")
    if bonus > 0 and s["env.bonus_scope"] != "pool":
        parts.append(f"bonus per {s['env.bonus_scope']}")
    if s.get("env.bonus_warmup") and bonus > 0:
        parts.append(f"bonus from epoch {s['env.bonus_warmup']}")
    if s.get("env.bonus_until") is not None and bonus > 0:
        parts.append(f"bonus until epoch {s['env.bonus_until']}")
    if s["env.task_heads"]:
        parts.append("a head per task")
    parts.append("per-step rewards" if s["agent.reward_timing"] == "per_step" else "terminal reward")
    parts.append("unused modules frozen" if s["env.freeze_unused"] else "plain Adam")
    if s["router.decoder_queries"] == "valid":
        parts.append("valid-action queries")
    if s["router.normalize_instance"]:
        parts.append("normalised instance token")
    if s["router.critic_encoder"] == "separate":
        parts.append("separate critic")
    if s.get("router.task_prior_std"):
        head = " on the head" if s["router.task_prior_steps"] == "head" else ""
        parts.append(f"task prior {s['router.task_prior_std']:g}{head}")
    if s["router.instance_prior_std"]:
        first = ", first step" if s["router.instance_prior_steps"] == "first" else ""
        grid = s["router.instance_prior_grid"]
        parts.append(f"instance prior {s['router.instance_prior_std']:g} ({grid}x{grid} grid{first})")
    if s["router.static_start"]:
        parts.append(f"static start {s['router.static_start']:g}")
    if s["run.upcycle_epochs"]:
        parts.append(f"upcycled after {s['run.upcycle_epochs']} epochs")
    if s["agent.advantage"] == "self_critical":
        parts.append(f"self-critical against the {s.get('agent.baseline_route')} route")
    if s["agent.explore_epsilon"]:
        parts.append(f"epsilon {s['agent.explore_epsilon']:g}")
    if s["agent.self_imitation"]:
        parts.append(f"self-imitation {s['agent.self_imitation']:g}")
    if s.get("agent.ent_coef"):
        end = s["agent.ent_coef_end"]
        parts.append(f"entropy {s['agent.ent_coef']:g}" + (f" to {end:g}" if end is not None else ""))
    if s.get("agent.router_lr"):
        parts.append(f"router lr {s['agent.router_lr']:g}")
    if s.get("agent.minibatch_unit") == "transitions":
        parts.append("minibatch 64 transitions")
    return ", ".join(parts + split + beyond)


def run_label(folder: RunFolder) -> str:
    """A run's setting and seed (its folder's name without a config.json)."""
    if not folder.has_config():
        return folder.path.name
    config = folder.read_config()
    return f"{describe(config)}, seed {run_settings(config).get('run.seed')}"


def val_picked(records: list[dict]) -> dict | None:
    """The epoch the validation split picks (highest validation accuracy, the earliest of ties); None for
    runs without a validation split. Never the best test epoch."""
    with_val = [r for r in records if r.get("val_accuracy") is not None]
    return max(with_val, key=lambda r: (r["val_accuracy"], -r["epoch"])) if with_val else None


def run_summary(folder: RunFolder) -> str:
    """What a finished run reached, in a few lines: its folder and time, the last epoch's test scores, the
    epoch its validation split picks, its plots and the command that evaluates it."""
    records = folder.read_metrics()
    if not records:
        return f"{folder.path}: no epoch finished"
    last, picked = records[-1], val_picked(records)

    def scores(r: dict) -> str:
        balanced = 100 * r["test_balanced_accuracy"]
        return f"test accuracy {100 * r['test_accuracy']:.2f}% (balanced {balanced:.2f}%)"

    lines = [
        f"finished: {folder.path}, epochs: {len(records)}, {last['wall_clock_s'] / 60:.1f} min",
        f"  last epoch {last['epoch']}: {scores(last)}",
    ]
    if picked is not None:
        lines.append(
            f"  the validation split picks epoch {picked['epoch']} (val accuracy "
            f"{100 * picked['val_accuracy']:.2f}%): {scores(picked)}"
        )
    else:
        lines.append("  no validation split picks an epoch (--val-fraction 0.1 holds one out)")
    plots = [name for name in PLOT_FILES.values() if (folder.path / name).exists()]
    if plots:
        lines.append(f"  plots in {folder.path}: {', '.join(plots)}")
    lines.append(
        f"  evaluate it and draw its routes: python -m training_run.evaluate {folder.path} --render 3"
    )
    return "\n".join(lines)
