"""README's generated blocks: the results tables and figures from the run folders under
results/<benchmark>/ and results/bench/*.json, the tables of env kwargs and train.py flags from the
configuration dataclasses and the algorithm table from :mod:`agents.algorithms` (docs/ pages:
scripts/docs_pages.py).

    python scripts/readme_tables.py            # rewrite the blocks in README.md, redraw the figures
    python scripts/readme_tables.py --print    # print them only

Every number in the results tables comes from those files; the paper's Table 1 stands beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from agents.algorithms import SB3_SETUPS
from routing_env.config import RoutingConfig
from training_run.cli import FLAGS, NO_BONUS_HELP, RESUME_HELP, field_docs
from training_run.folder import RunFolder
from training_run.report.describe import describe, run_settings
from training_run.report.plots import plot_runs
from training_run.settings import PRESETS, flag_of

ROOT = Path(__file__).resolve().parents[2]
# Figures README shows: (file under results/, run folders under results/), one curve per run.
FIGURES = [
    (
        "min/figure_study.png",
        [
            "min/abl30-as_before_s0",
            "min/abl30-per_step_s0",
            "min/abl30-all_s0",
            "min/abl30-all_prior_s0",
            "min/abl30-best_s0",
            "min/abl30-best_beyond_s0",
            "min/abl30-static_beyond_s0",
        ],
    ),
    (
        "min/figure_task_prior.png",
        [
            "min/sweep1-lrn_default",
            "min/sweep1-lrn_nobonus",
            "min/prior-lrn_d10_L6_p3_bonus",
            "min/prior-lrn_d10_L6_p3_nobonus",
            "min/grid-lrn_d10_L6_p3_bonus0.3",
            "min/long-lrn_d10_L6_p3_bonus0.1_s0",
            "min/sweep1-static",
            "min/final-rn_wpl",
        ],
    ),
    (
        "min/figure_grid.png",
        [
            "min/grid-lrn_d1_L6_p3_bonus0.1",
            "min/grid-lrn_d5_L6_p3_bonus0.1",
            "min/long-lrn_d10_L6_p3_bonus0.1_s0",
            "min/grid-lrn_d5_L4_p3_bonus0.1",
            "min/grid-lrn_d5_L4_p3_nobonus",
        ],
    ),
    (
        "mnist/figure_task_prior.png",
        [
            "mnist/sweep1-lrn_default",
            "mnist/final-lrn_d10_L6_nobonus",
            "mnist/long-lrn_d10_L6_p3_nobonus",
            "mnist/grid-lrn_d10_L6_p3_bonus0.1",
            "mnist/grid-lrn_d5_L4_p3_bonus0.1",
            "mnist/grid-lrn_d5_L4_p3_nobonus",
            "mnist/final-static",
        ],
    ),
]
# (JSON keys, the first present is shown; label; format). The script of before this session named
# LRN training's peak memory peak_gpu_memory_gb.
BENCH_ROWS = [
    (["env_episodes_per_second"], "env alone, episodes/s (random valid actions, module training)", "{:.0f}"),
    (["env_epoch_seconds"], "env alone, s per MNIST-MTL epoch (100k episodes)", "{:.1f}"),
    (["lrn_epoch_seconds"], "LRN training (MaskablePPO + router + modules), s per epoch", "{:.1f}"),
    (["static_epoch_seconds"], "static network, same engine, s per epoch", "{:.1f}"),
    (["lrn_over_static"], "LRN / static time per epoch", "{:.2f}x"),
    (["eval_seconds"], "evaluation pass (all test pairs), s", "{:.2f}"),
    (["lrn_peak_gpu_memory_gb", "peak_gpu_memory_gb"], "MNIST-MTL LRN peak GPU memory, GB", "{:.2f}"),
    (["checkpoint_mb"], "MNIST-MTL checkpoint, MB", "{:.0f}"),
]
BENCHMARK_NAMES = {"mnist": "MNIST-MTL", "cifar": "CIFAR-MTL", "min": "MIN-MTL"}
# LRN paper, Table 1: test accuracy (%) of LRN and of the original routing network.
PAPER = {"mnist": (99.5, 99.0), "cifar": (70.0, 60.0), "min": (53.0, 35.9)}


def rows(results: Path) -> list[list[str]]:
    out = []
    for bench in ("mnist", "cifar", "min"):
        for run, config, records in _runs(results, bench):
            last, picked = records[-1], val_picked(records)
            out.append(
                [
                    BENCHMARK_NAMES[bench],
                    f"`{run.name}`",
                    describe(config),
                    f"{100 * last['test_accuracy']:.2f}",
                    f"{100 * last['test_balanced_accuracy']:.2f}",
                    f"{100 * picked['test_accuracy']:.2f} (ep {picked['epoch']})" if picked else "-",
                    str(last["unused_modules"]),
                    f"{last['epoch'] + 1}/{run_settings(config)['run.epochs']}",
                    f"{last['wall_clock_s'] / 60:.1f}",
                    config.get("device_name", "?"),
                    f"{PAPER[bench][0]} / {PAPER[bench][1]}",
                ]
            )
    return out


def val_picked(records: list[dict]) -> dict | None:
    """The epoch the validation split picks (highest validation accuracy, the earliest of ties); None for
    runs without a validation split. Never the best test epoch."""
    with_val = [r for r in records if r.get("val_accuracy") is not None]
    return max(with_val, key=lambda r: (r["val_accuracy"], -r["epoch"])) if with_val else None


def _runs(results: Path, bench: str) -> list[tuple[Path, dict, list[dict]]]:
    """``(folder, config, epoch records)`` of every run of ``bench`` with at least one epoch."""
    out = []
    for folder in RunFolder.find(results / bench):
        records = folder.read_metrics()
        if records:
            out.append((folder.path, folder.read_config(), records))
    return out


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seeds_table(results: Path) -> str:
    """Settings run with several seeds: mean ± std (sample std) over the seeds."""
    header = [
        "benchmark",
        "setting",
        "seeds",
        "test acc % (last)",
        "test acc % (val-picked epoch)",
        "epochs",
        "paper LRN %",
    ]
    out = []
    for bench in ("mnist", "cifar", "min"):
        groups: dict[str, list[tuple[dict, list[dict]]]] = defaultdict(list)
        for _, config, records in _runs(results, bench):
            groups[describe(config)].append((config, records))
        for setting, runs in sorted(groups.items()):
            seeds = sorted({c["seed"] for c, _ in runs})
            if len(seeds) < 2:
                continue
            last = [100 * r[-1]["test_accuracy"] for _, r in runs]
            picked = [100 * p["test_accuracy"] for _, r in runs if (p := val_picked(r))]
            epochs = sorted({r[-1]["epoch"] + 1 for _, r in runs})
            out.append(
                [
                    BENCHMARK_NAMES[bench],
                    setting,
                    ", ".join(map(str, seeds)),
                    _mean_std(last),
                    _mean_std(picked) if len(picked) == len(runs) else "-",
                    "-".join(map(str, (epochs[0], epochs[-1]))) if len(epochs) > 1 else str(epochs[0]),
                    str(PAPER[bench][0]),
                ]
            )
    return _markdown(header, out)


def figures(results: Path) -> list[Path]:
    """Write the FIGURES whose runs are all present."""
    written = []
    for name, runs in FIGURES:
        folders = [results / r for r in runs]
        if all(RunFolder(f).metrics_path.exists() for f in folders):
            written.append(plot_runs(folders, results / name))
    return written


def table(results: Path) -> str:
    header = [
        "benchmark",
        "run",
        "setting",
        "test acc % (last)",
        "balanced %",
        "test acc % (val-picked epoch)",
        "unused modules",
        "epochs",
        "minutes",
        "card",
        "paper LRN / RN %",
    ]
    return _markdown(header, rows(results))


def bench_table(results: Path) -> str:
    """One column per measurement in results/bench/*.json: each file's default, then its variants."""
    columns: list[tuple[str, dict]] = []
    paths = sorted((results / "bench").glob("*.json"), key=lambda p: (not p.stem.endswith("_before"), p.name))
    for path in paths:
        report = json.loads(path.read_text())
        name = report["device"] + (" (code before this session)" if path.stem.endswith("_before") else "")
        columns.append((name, report))
        for variant, values in report.get("variants", {}).items():
            columns.append(
                (f"{report['device']}, {variant}", {**report, **values, "memory": {}, "parallel": {}})
            )
    if not columns:
        return "(no benchmark results yet)"
    lines = ["| measure | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for keys, label, fmt in BENCH_ROWS:
        cells = []
        for _, r in columns:
            key = next((k for k in keys if k in r), None)
            cells.append(fmt.format(r[key]) if key else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    memory_rows = [
        ("min", "epoch_seconds", "MIN-MTL d10 L6 LRN, s per epoch (alone)", "{:.1f}"),
        ("min", "peak_gpu_memory_gb", "MIN-MTL d10 L6 LRN, peak GPU memory, GB", "{:.2f}"),
        (
            "min:dispatch=dense",
            "epoch_seconds",
            "MIN-MTL d10 L6 LRN with dense dispatch, s per epoch",
            "{:.1f}",
        ),
        (
            "min:dispatch=dense",
            "peak_gpu_memory_gb",
            "MIN-MTL d10 L6 LRN with dense dispatch, peak GB",
            "{:.2f}",
        ),
    ]
    for spec, key, label, fmt in memory_rows:
        cells = [
            fmt.format(r["memory"][spec][key]) if key in r.get("memory", {}).get(spec, {}) else "-"
            for _, r in columns
        ]
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for bench in ("mnist", "min"):
        for n in ("1", "2", "4", "8"):
            cells = []
            for _, r in columns:
                run = _parallel(r).get(bench, {}).get(n, {})
                cells.append(
                    f"{run['total_episodes_per_second']:.0f}" if "total_episodes_per_second" in run else "-"
                )
            if any(c != "-" for c in cells):
                label = f"{n} {BENCHMARK_NAMES[bench]} LRN trainings at once, total episodes/s"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parallel(report: dict) -> dict[str, dict]:
    """A benchmark report's ``parallel`` section by benchmark; reports before it had one were MNIST's."""
    parallel = report.get("parallel", {})
    return {"mnist": parallel} if all(k.isdigit() for k in parallel) else parallel


# The study (issue 12): each row is the run folders of one setting (one per seed), MIN-MTL d10 L6 unless
# named, 10 % of the training pairs held out for validation. "As before" is the code before the study:
# the whole reward at the last step, one Adam over the pool, the decoder's queries over every action.
# ABLATION is sweeps/ablation.yaml's 30-epoch study; ABLATION_20 the earlier 20-epoch runs of the same rows.
BEYOND = "crop/flip, weight decay 0.5, module dropout 0.1"
ABLATION = [
    (
        "paper's router as before (terminal reward, plain Adam, all-action queries), bonus 1",
        "min/abl30-as_before_s*",
    ),
    ("+ per-step rewards (eq. 7) only", "min/abl30-per_step_s*"),
    ("+ unused modules frozen only", "min/abl30-freeze_unused_s*"),
    ("+ valid-action decoder queries only", "min/abl30-valid_decoder_s*"),
    ("+ normalised instance token only", "min/abl30-normalize_instance_s*"),
    ("+ separate critic encoder only", "min/abl30-separate_critic_s*"),
    ("all five, bonus 1", "min/abl30-all_s*"),
    ("all five, no bonus", "min/abl30-all_nobonus_s*"),
    ("all five + task prior 3, bonus 0.1", "min/abl30-all_prior_s*"),
    ("as before + task prior 3, bonus 0.1 (`--preset best`)", "min/abl30-best_s*"),
    (f"`--preset best` + {BEYOND}", "min/abl30-best_beyond_s*"),
    ("static network", "min/abl30-static_s*"),
    (f"static network + {BEYOND}", "min/abl30-static_beyond_s*"),
    ("routing network (WPL)", "min/abl30-rn_s*"),
    (f"routing network (WPL) + {BEYOND}", "min/abl30-rn_beyond_s*"),
    ("MNIST-MTL: all five + task prior 3, bonus 0.1", "mnist/abl30-mnist_all_prior_s*"),
    ("MNIST-MTL: `--preset best`", "mnist/abl30-mnist_best_s*"),
]
ABLATION_20 = [
    ("paper's router as before, bonus 1", "min/abl-paper_before_s*"),
    ("+ per-step rewards (eq. 7) only", "min/abl-per_step_s*"),
    ("+ unused modules frozen only", "min/abl-freeze_unused_s*"),
    ("+ valid-action decoder queries only", "min/abl-valid_decoder_s*"),
    ("+ normalised instance token only", "min/abl-normalize_instance_s*"),
    ("+ separate critic encoder only", "min/abl-separate_critic_s*"),
    ("all five, bonus 1", "min/abl-all_s*"),
    ("all five, no bonus", "min/abl-all_nobonus_s*"),
    ("all five + task prior 3, bonus 0.1", "min/abl-all_prior_s*"),
    ("as before + task prior 3, bonus 0.1 (`--preset best`)", "min/best-lrn_s*"),
    ("static network", "min/abl-static_s*"),
    (f"static network + {BEYOND}", "min/abl-static_beyond_s*"),
    ("MNIST-MTL: all five, bonus 1", "mnist/abl-all_s*"),
    ("MNIST-MTL: all five + task prior 3, bonus 0.1", "mnist/abl-all_prior_s*"),
    ("MNIST-MTL: `--preset best`", "mnist/best-lrn_s*"),
]


def ablation_table(results: Path, ablation: list[tuple[str, str]] = ABLATION) -> str:
    """The study's rows: mean ± std over seeds of the last epoch's and the validation-picked epoch's test
    accuracy."""
    header = [
        "setting",
        "seeds",
        "epochs",
        "test acc % (last)",
        "balanced % (last)",
        "test acc % (val-picked)",
    ]
    out = []
    for label, pattern in ablation:
        runs = [folder.read_metrics() for folder in RunFolder.find(results, pattern)]
        runs = [r for r in runs if r]
        if not runs:
            continue
        epochs = sorted({r[-1]["epoch"] + 1 for r in runs})
        out.append(
            [
                label,
                str(len(runs)),
                "-".join(map(str, (epochs[0], epochs[-1]))) if len(epochs) > 1 else str(epochs[0]),
                _mean_std([100 * r[-1]["test_accuracy"] for r in runs]),
                _mean_std([100 * r[-1]["test_balanced_accuracy"] for r in runs]),
                _mean_std([100 * val_picked(r)["test_accuracy"] for r in runs]),
            ]
        )
    return _markdown(header, out)


def presets_table(_results: Path | None = None) -> str:
    """What each ``--preset`` sets (before the flags, which override it)."""
    rows = [
        [f"`{name}`", ", ".join(f"`{flag_of(k)} {v}`" for k, v in settings.items())]
        for name, settings in PRESETS.items()
    ]
    return _markdown(["preset", "settings (flag value)"], rows)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def env_kwargs_table(_results: Path | None = None) -> str:
    """Every env kwarg (``RoutingConfig``), its default and meaning."""
    docs = field_docs(RoutingConfig)
    rows = [[f"`{f.name}`", f"`{_default(f)}`", _md(docs[f.name])] for f in dataclasses.fields(RoutingConfig)]
    return _markdown(["kwarg", "default", "meaning"], rows)


def flags_table(_results: Path | None = None) -> str:
    """Every train.py flag, its default and meaning (as ``training_run.cli`` generates them)."""
    rows = []
    for flag in FLAGS:
        option, default = flag.option, flag.default
        if flag.parse is bool:
            option, default = "--[no-]" + option[2:], "on" if default else "off"
        rows.append([f"`{option}`", f"`{default}`", _md(flag.doc)])
    rows.append(["`--no-bonus`", "off", NO_BONUS_HELP.replace("--bonus-weight 0", "`--bonus-weight 0`")])
    rows.append(["`--resume`", "off", RESUME_HELP.replace("--out", "`--out`")])
    return _markdown(["flag", "default", "meaning"], rows)


def algorithms_table(_results: Path | None = None) -> str:
    """Every SB3 / sb3-contrib algorithm that takes the env's spaces, with its policy
    (``agents.algorithms``, which ``tests/test_algorithms.py`` runs)."""
    rows = [
        [
            f"`{a.name}`",
            a.library,
            a.policy_text(),
            a.masks,
            f"`hyperparams/{a.zoo}.yml`" if a.zoo else "not in the zoo",
            "yes (`tests/test_algorithms.py`" + (", `tests/test_rl_zoo.py`)" if a.zoo else ")"),
        ]
        for a in SB3_SETUPS
    ]
    header = ["algorithm", "library", "policy / features extractor", "action mask", "RL Zoo", "tested"]
    return _markdown(header, rows)


def _md(doc: str) -> str:
    """A docstring's text as a markdown table cell."""
    return doc.replace("``", "`").replace("|", "\\|")


# README's generated blocks: <!-- NAME:begin --> ... <!-- NAME:end -->, and what fills each.
BLOCKS = {
    "results-table": lambda results: table(results),
    "seeds-table": lambda results: seeds_table(results),
    "bench-table": lambda results: bench_table(results),
    "ablation-table": ablation_table,
    "ablation20-table": lambda results: ablation_table(results, ABLATION_20),
    "presets-table": presets_table,
    "env-kwargs": env_kwargs_table,
    "flags-table": flags_table,
    "algorithms-table": algorithms_table,
}


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--print", action="store_true", help="print the blocks, leave README alone")
    args = p.parse_args()
    bodies = {name: build(args.results) for name, build in BLOCKS.items()}
    if args.print:
        print("\n\n".join(bodies.values()))
        return
    readme = args.readme.read_text()
    for name, body in bodies.items():
        readme = replace_block(readme, name, body)
    args.readme.write_text(readme)
    print(f"rewrote the generated blocks of {args.readme}")
    for path in figures(args.results):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
