"""The results as markdown tables and figures, from results/: the run folders under
results/<benchmark>/ (README's headline, docs/results.md), the speed measurements in results/bench/*.json
(docs/speed.md) and the RL Zoo timings (docs/rl_zoo.md). :mod:`training_run.report.pages` puts them into
the pages (``python scripts/docs_pages.py``).

Every number in these tables comes from those files; the paper's Table 1 stands beside them.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from agents.route_stats import module_set_overlap
from training_run.folder import RunFolder
from training_run.report.describe import describe, run_settings, val_picked
from training_run.report.plots import plot_runs
from training_run.settings import FIRST_RUN

# Figures docs/results.md shows: (file under results/, run folders under results/), one curve per run.
FIGURES = [
    (
        "min/figure_study.png",
        [
            "min/abl30-no_readings_s0",
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
# (JSON keys, the first present is shown; label; format). benchmark.py at d006afe named LRN training's
# peak memory peak_gpu_memory_gb.
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
# The commit whose code each file in results/bench/ measured, for files written before benchmark.py
# recorded it.
BENCH_CODE = {"NVIDIA_H100_before.json": "d006afe", "NVIDIA_H100.json": "9062008"}
BENCHMARK_NAMES = {"mnist": "MNIST-MTL", "cifar": "CIFAR-MTL", "min": "MIN-MTL"}
# LRN paper, Table 1: test accuracy (%) of LRN and of the original routing network.
PAPER = {"mnist": (99.5, 99.0), "cifar": (70.0, 60.0), "min": (53.0, 35.9)}
PAPER_EPOCHS = 100  # the paper's training length (train.py's default --epochs)
# The options beyond the paper as the study set them (sweeps/ablation.yaml's *_beyond rows).
BEYOND = "crop/flip, weight decay 0.5, module dropout 0.1"


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


def _runs(results: Path, bench: str) -> list[tuple[Path, dict, list[dict]]]:
    """``(folder, config, epoch records)`` of every run of ``bench`` with at least one epoch."""
    out = []
    for folder in RunFolder.find(results / bench):
        records = folder.read_metrics()
        if records:
            out.append((folder.path, folder.read_config(), records))
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _mean_std(values: list[float], digits: int = 2) -> str:
    """``mean ± sample std``; one value alone."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


# README's headline: Table 1's benchmarks, our LRN and the baselines beside the paper's LRN and routing
# network. A cell averages the runs of the first of its patterns (under results/) that matches any: the
# 100-epoch Table 1 runs with a validation split (sweeps/table1.yaml) where they ran, else the 30-epoch
# study (sweeps/ablation.yaml), else the named earlier run of the same network (trained on every training
# pair, no validation split).
HEADLINE_COLUMNS = (
    "LRN (`--preset best`)",
    "static network",
    "static network + options",
    "routing network",
    "LRN (`--preset paper`)",
)
HEADLINE: dict[str, tuple[tuple[str, ...], ...]] = {
    "mnist": (
        ("mnist/table1-best_s*", "mnist/abl30-mnist_best_s*"),
        ("mnist/table1-static_s*", "mnist/abl30-mnist_static_s*", "mnist/final-static"),
        ("mnist/table1-static_options_s*", "mnist/abl30-mnist_static_beyond_s*"),
        ("mnist/table1-rn_s*", "mnist/abl30-mnist_rn_s*", "mnist/final-rn_wpl"),
        ("mnist/table1-paper_s*",),
    ),
    "cifar": ((), (), (), (), ()),
    "min": (
        ("min/table1-best_s*", "min/abl30-best_s*"),
        ("min/table1-static_s*", "min/abl30-static_s*"),
        ("min/table1-static_options_s*", "min/abl30-static_beyond_s*"),
        ("min/table1-rn_s*", "min/abl30-rn_s*"),
        ("min/table1-paper_s*",),
    ),
}
NOT_RUN = {"cifar": "not run (no data here)"}


@dataclasses.dataclass
class Cell:
    """One headline cell: the runs it averages and what their last epochs say."""

    pattern: str
    last: list[float]  # test accuracy % at each run's last epoch
    picked: list[float]  # at each run's validation-picked epoch (runs with a validation split)
    epochs: list[int]  # epochs each run reached
    planned: list[int]  # epochs each run planned
    overlap: list[float]  # route overlap (mean Jaccard of the tasks' module sets) at the last epoch
    shared: list[int]  # modules used by two or more tasks at the last epoch

    @property
    def seeds(self) -> int:
        return len(self.last)


def headline_cell(results: Path, patterns: tuple[str, ...]) -> Cell | None:
    """The runs of the first pattern that matches a run with metrics; None when none does."""
    for pattern in patterns:
        runs = [(f.read_config(), f.read_metrics()) for f in RunFolder.find(results, pattern)]
        runs = [(config, records) for config, records in runs if records]
        if not runs:
            continue
        overlaps = [module_set_overlap(torch.tensor(r[-1]["module_usage"])) for _, r in runs]
        return Cell(
            pattern=pattern,
            last=[100 * r[-1]["test_accuracy"] for _, r in runs],
            picked=[100 * p["test_accuracy"] for _, r in runs if (p := val_picked(r))],
            epochs=[r[-1]["epoch"] + 1 for _, r in runs],
            planned=[run_settings(c)["run.epochs"] for c, _ in runs],
            overlap=[o["route_overlap"] for o in overlaps],
            shared=[o["shared_modules"] for o in overlaps],
        )
    return None


def headline_cells(results: Path) -> dict[str, list[Cell | None]]:
    return {bench: [headline_cell(results, p) for p in cells] for bench, cells in HEADLINE.items()}


def _span(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}" if min(values) != max(values) else str(values[0])


def _runs_text(cell: Cell) -> str:
    """``3 × 30``: seeds × epochs reached, with the epochs planned where a run stopped short."""
    short = any(e < p for e, p in zip(cell.epochs, cell.planned, strict=True))
    return f"{cell.seeds} × {_span(cell.epochs)}" + (f" of {_span(cell.planned)}" if short else "")


# The headline's rows per benchmark: a label and a cell's text.
HEADLINE_ROWS: list[tuple[str, Callable[[Cell], str]]] = [
    ("test acc %, last epoch", lambda c: _mean_std(c.last, 1)),
    (
        "test acc %, val-picked epoch",
        lambda c: _mean_std(c.picked, 1) if len(c.picked) == c.seeds else "no val split",
    ),
    ("seeds × epochs", _runs_text),
    (
        "route overlap / shared modules",
        lambda c: f"{statistics.mean(c.overlap):.2f} / {statistics.mean(c.shared):.3g}",
    ),
]


def headline_table(results: Path) -> str:
    """README's headline table: per benchmark, the test accuracy at the last and the validation-picked
    epoch (mean ± std over seeds), the seeds × epochs behind it, and the route statistics of the last
    epoch, for our LRN and the baselines, beside the paper's Table 1."""
    header = ["benchmark", *HEADLINE_COLUMNS, "paper: LRN / routing network"]
    out = []
    for bench, cells in headline_cells(results).items():
        name = BENCHMARK_NAMES[bench]
        paper = f"{PAPER[bench][0]} / {PAPER[bench][1]}"
        if bench in NOT_RUN:
            out.append([f"**{name}**", *[NOT_RUN[bench]] * len(cells), paper])
            continue

        paper_column = [paper, "", f"{PAPER_EPOCHS} epochs", ""]
        for k, ((label, text), paper_cell) in enumerate(zip(HEADLINE_ROWS, paper_column, strict=True)):
            label = f"**{name}**: {label}" if k == 0 else label
            out.append([label, *(text(c) if c else "not run" for c in cells), paper_cell])
    return markdown_table(header, out)


def headline_verdict(results: Path) -> str:
    """The verdict on Table 1 in one sentence, from the headline's numbers."""
    cells = headline_cells(results)
    lrn, static, beyond = cells["min"][:3]
    lrn_mnist = cells["mnist"][0]
    if not (lrn and static and beyond and lrn_mnist):
        return "(the headline's runs are not all in results/)"
    mean = statistics.mean
    paper, paper_mnist = PAPER["min"][0], PAPER["mnist"][0]
    min_mtl = (
        f"on MIN-MTL our LRN ends {paper - mean(lrn.last):.1f} points below the paper's {paper} % after "
        f"{_span(lrn.epochs)} epochs ({paper - mean(lrn.picked):.1f} at the validation-picked epoch), and "
        f"the static network with crop/flip, weight decay and module dropout beats it by "
        f"{mean(beyond.last) - mean(lrn.last):.1f} points"
    )
    mnist = (
        f"on MNIST-MTL it is {paper_mnist - mean(lrn_mnist.last):.1f} points below {paper_mnist} % after "
        + (
            f"the paper's {PAPER_EPOCHS} epochs ({_runs_text(lrn_mnist)})"
            if min(lrn_mnist.epochs) >= PAPER_EPOCHS
            else f"{_span(lrn_mnist.epochs)} of the paper's {PAPER_EPOCHS} epochs"
        )
    )
    static_mnist = [c for c in cells["mnist"][1:3] if c and min(c.epochs) >= PAPER_EPOCHS]
    if len(static_mnist) == 2:  # both static networks ran the paper's epochs
        mnist += (
            f", where the static network reaches {mean(static_mnist[0].last):.1f} % and "
            f"{mean(static_mnist[1].last):.1f} % with the options ({_runs_text(static_mnist[0])} epochs each)"
        )
    sharing = (
        f"its tasks share almost no modules (route overlap {mean(lrn.overlap):.2f} on MIN-MTL, where the "
        f"static network's shared trunk gives {mean(static.overlap):.2f})"
    )
    paper_preset = cells["min"][4] if len(cells["min"]) > 4 else None
    if paper_preset:
        sharing += (
            f"; the paper's own setting (`--preset paper`) stays at {mean(paper_preset.last):.1f} % on "
            f"MIN-MTL ({_runs_text(paper_preset)} epochs)"
        )
    return f"**The paper's Table 1 is not reproduced**: {min_mtl}; {mnist}; and {sharing}."


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
        # one group per setting and planned length: a 3-epoch and a 100-epoch run are not seeds of one row
        groups: dict[tuple[str, int], list[tuple[dict, list[dict]]]] = defaultdict(list)
        for _, config, records in _runs(results, bench):
            groups[describe(config), run_settings(config)["run.epochs"]].append((config, records))
        for (setting, _), runs in sorted(groups.items()):
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
    return markdown_table(header, out)


def figures(results: Path) -> list[Path]:
    """Write the FIGURES whose runs are all present."""
    written = []
    for name, runs in FIGURES:
        folders = [results / r for r in runs]
        if all(RunFolder(f).metrics_path.exists() for f in folders):
            written.append(plot_runs(folders, results / name))
    return written


def results_table(results: Path) -> str:
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
    return markdown_table(header, rows(results))


def bench_table(results: Path) -> str:
    """One column per measurement in results/bench/*.json: each file's default, then its variants."""
    columns: list[tuple[str, dict]] = []
    paths = sorted((results / "bench").glob("*.json"), key=lambda p: (not p.stem.endswith("_before"), p.name))
    for path in paths:
        report = json.loads(path.read_text())
        commit = report.get("commit") or BENCH_CODE.get(path.name)
        name = report["device"] + (f", code at {commit}" if commit else "")
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
        for n in ("1", "2", "3", "4", "8", "1+mps", "2+mps", "3+mps", "4+mps", "8+mps"):
            cells = []
            for _, r in columns:
                run = _parallel(r).get(bench, {}).get(n, {})
                cells.append(
                    f"{run['total_episodes_per_second']:.0f}" if "total_episodes_per_second" in run else "-"
                )
            if any(c != "-" for c in cells):
                count, _, mps = n.partition("+")
                under = " under CUDA MPS" if mps else ""
                label = f"{count} {BENCHMARK_NAMES[bench]} LRN trainings at once{under}, total episodes/s"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parallel(report: dict) -> dict[str, dict]:
    """A benchmark report's ``parallel`` section by benchmark; reports before it had one were MNIST's."""
    parallel = report.get("parallel", {})
    return {"mnist": parallel} if all(k.isdigit() for k in parallel) else parallel


# The study of the route collapse: each row is the run folders of one setting (one per seed), MIN-MTL d10 L6
# unless named, 10 % of the training pairs held out for validation. Its first row is `--preset paper` with
# the paper's three readings undone: the whole reward at the last step, one Adam over the pool, the
# decoder's queries over every action. ABLATION is sweeps/ablation.yaml's 30-epoch study; ABLATION_20 the
# 20-epoch runs of the same rows.
NO_READINGS = "terminal reward, plain Adam, all-action queries"
ABLATION = [
    (f"{NO_READINGS}, bonus 1", "min/abl30-no_readings_s*"),
    ("+ per-step rewards (eq. 7) only", "min/abl30-per_step_s*"),
    ("+ unused modules frozen only", "min/abl30-freeze_unused_s*"),
    ("+ valid-action decoder queries only", "min/abl30-valid_decoder_s*"),
    ("+ normalised instance token only", "min/abl30-normalize_instance_s*"),
    ("+ separate critic encoder only", "min/abl30-separate_critic_s*"),
    ("all five, bonus 1", "min/abl30-all_s*"),
    ("all five, no bonus", "min/abl30-all_nobonus_s*"),
    ("all five + task prior 3, bonus 0.1", "min/abl30-all_prior_s*"),
    (f"{NO_READINGS} + task prior 3, bonus 0.1 (`--preset best`)", "min/abl30-best_s*"),
    (f"`--preset best` + {BEYOND}", "min/abl30-best_beyond_s*"),
    ("static network", "min/abl30-static_s*"),
    (f"static network + {BEYOND}", "min/abl30-static_beyond_s*"),
    ("routing network (WPL)", "min/abl30-rn_s*"),
    (f"routing network (WPL) + {BEYOND}", "min/abl30-rn_beyond_s*"),
    ("MNIST-MTL: all five + task prior 3, bonus 0.1", "mnist/abl30-mnist_all_prior_s*"),
    ("MNIST-MTL: `--preset best`", "mnist/abl30-mnist_best_s*"),
]
ABLATION_20 = [
    (f"{NO_READINGS}, bonus 1", "min/abl-no_readings_s*"),
    ("+ per-step rewards (eq. 7) only", "min/abl-per_step_s*"),
    ("+ unused modules frozen only", "min/abl-freeze_unused_s*"),
    ("+ valid-action decoder queries only", "min/abl-valid_decoder_s*"),
    ("+ normalised instance token only", "min/abl-normalize_instance_s*"),
    ("+ separate critic encoder only", "min/abl-separate_critic_s*"),
    ("all five, bonus 1", "min/abl-all_s*"),
    ("all five, no bonus", "min/abl-all_nobonus_s*"),
    ("all five + task prior 3, bonus 0.1", "min/abl-all_prior_s*"),
    (f"{NO_READINGS} + task prior 3, bonus 0.1 (`--preset best`)", "min/best-lrn_s*"),
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
    return markdown_table(header, out)


# scripts/time_zoo.py's results: on this project's CPU, and on a GPU where measured (--device cuda).
ZOO_TIMES = ["zoo_first_update.json", "zoo_first_update_gpu.json"]


def zoo_tables(results: Path) -> str:
    """A markdown table per file of :data:`ZOO_TIMES` in ``results`` that exists."""
    paths = [results / name for name in ZOO_TIMES]
    return "\n\n".join(zoo_table(json.loads(path.read_text())) for path in paths if path.is_file())


def zoo_table(results: dict) -> str:
    """The measured first update of each RL Zoo file (scripts/time_zoo.py), as a markdown table."""
    machine = results["machine"]

    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:,.1f}"

    header = ["file", "first rollout (s)", "first update (s)", "rollout + update (s)", "peak memory (GB)"]
    header.append("load (1 min) before / after")
    rows = []
    for algo, r in sorted(results["files"].items()):
        if r["finished"]:
            total = seconds(r["first_update_s"])
        else:
            total = f"not done: {r['error']}" if r["error"] else f"not done in {r['timeout_s']:.0f} s"
        load = " / ".join(f"{x:.1f}" for x in (r["load_before"][0], r["load_after"][0]))
        rows.append(
            [f"`hyperparams/{algo}.yml`", seconds(r["rollout_s"]), seconds(r["update_s"]), total]
            + [str(r["peak_rss_gb"]), load]
        )
    when = sorted(r["measured"] for r in results["files"].values())
    where = (
        f"{results['env_id']} on `{results['device']}`: {machine.get('gpu') or machine['cpu']}, "
        f"{machine['cores']} CPU cores, "
        f"torch {machine['torch']}; measured {when[0]} to {when[-1]} UTC"
    )
    return markdown_table(header, rows) + f"\n\n{where}."


def cpu_first_run_table(results: Path) -> str:
    """The quick first run train.py suggests on a CPU, as ``scripts/cpu_first_run.py`` measured it
    (``results/cpu_first_run/``): its command, the machine and its load, and every epoch's test scores."""
    folder = RunFolder(results / "cpu_first_run")
    measurement = json.loads((folder.path / "measurement.json").read_text())
    batch_size = json.loads(folder.config_path.read_text())["env"]["batch_size"]
    run, reference = measurement["first_run"], measurement["reference"]
    header = ["epoch", "batches", "test balanced accuracy %", "test accuracy %", "routes per task"]
    header += ["route overlap", "minutes (with evaluation)"]
    records = folder.read_metrics()
    rows = [
        [
            str(r["epoch"]),
            str(-(-r["episodes"] // batch_size)),
            f"{100 * r['test_balanced_accuracy']:.1f}",
            f"{100 * r['test_accuracy']:.1f}",
            f"{r['routes_per_task']:.1f}",
            f"{r['route_overlap']:.2f}",
            f"{r['wall_clock_s'] / 60:.1f}",
        ]
        for r in records
    ]
    machine = (
        f"{measurement['cores']} cores ({measurement['cpu']}, torch {measurement['torch']}), load average "
        f"{run['load_average_before'][0]:g} before the run and {run['load_average_after'][0]:g} after it"
    )
    last = rows[-1]
    routes = (
        f"Routes per task: the distinct routes a task's test pairs take; route overlap: the mean Jaccard "
        f"overlap of two tasks' module sets (the static network's route: 4 shared modules of 6, 0.67). "
        f"At the last epoch, {last[4]} and {last[5]}"
    )
    if records[-1]["routes_per_task"] == 1 and round(records[-1]["route_overlap"], 2) == 0.67:
        routes += ": every task still takes the static network's route, which the router started from"
    command = (
        f"{run['command']} --out {FIRST_RUN.out}"  # the advice's folder (the measurement used a scratch one)
    )
    return (
        f"`{command}` on {machine}: {run['process_seconds'] / 60:.1f} min in all, "
        f"{run['seconds_per_batch']:.2f} s per batch against {reference['seconds_per_batch']:.2f} s for "
        f"`python train.py`'s settings on the same machine. The time depends on the CPU and its load: "
        f"train.py times its first batches, and its advice gives the time on yours.\n\n"
        + markdown_table(header, rows)
        + f"\n\n{routes}."
    )


def checkpoint_sizes(results: Path) -> str:
    """What a checkpoint and a weights file of ``python train.py``'s settings take on disk, as
    ``scripts/checkpoint_sizes.py`` measured them (``results/checkpoints/sizes.json``)."""
    sizes = json.loads((results / "checkpoints" / "sizes.json").read_text())
    files = sizes["checkpoint_files"]

    def mb(n: int) -> str:
        return f"{n / 1e6:,.0f} MB"

    return (
        f"A checkpoint of `python train.py`'s settings ({sizes['env_id']}, {sizes['duplicates']} duplicates, "
        f"depth {sizes['max_depth']}: {sizes['pool_parameters'] / 1e6:.1f} M pool weights) takes "
        f"{mb(sizes['checkpoint_bytes'])}: `env.pt` {mb(files['env.pt'])} (the pool's weights, its Adam "
        f"moments and the data walk), `agent.zip` {mb(files['agent.zip'])} (the router and its optimizer); "
        f"its weights file (`python -m training_run.evaluate RUN --save-weights FILE`: the pool's and the "
        f"router's weights alone) takes {mb(sizes['weights_file_bytes'])} and evaluates to the same test "
        f"accuracy (`scripts/checkpoint_sizes.py`)."
    )


# What scripts/probes.py keeps of a probe run's epoch records (results/probes/<probe>.json).
PROBE_KEYS = (
    "test_accuracy",
    "val_accuracy",
    "oracle_route_rate",
    "oracle_overlap",
    "route_overlap",
    "oracle_route_overlap",
    "route_kind_information",
    "routes_per_task",
    "unused_modules",
)
PROBE_NAMES = {"router": "router alone", "share": "share or separate", "kinds": "per instance"}
PROBE_METHODS = {"static": "static network's route", "oracle": "oracle routing", "lrn": "LRN"}


def _probe_cell(runs: list[dict], where: str, key: str, scale: float = 1.0, digits: int = 2) -> str:
    values = [r[where][key] * scale for r in runs if r.get(where) and r[where].get(key) is not None]
    return _mean_std(values, digits) if values else "-"


def probes_table(results: Path) -> str:
    """docs/results.md's probe table, from results/probes/<probe>.json (``scripts/probes.py``): per probe
    and method, accuracy at the last epoch and at the validation-picked one, and the route statistics
    against the oracle routing (mean ± std over seeds)."""
    rows = []
    for probe, name in PROBE_NAMES.items():
        path = results / "probes" / f"{probe}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        for method, label in PROBE_METHODS.items():
            runs = [r for r in record["runs"] if r["method"] == method]
            if not runs:
                continue
            loads = [x for r in runs for x in (r["load_average_before"][0], r["load_average_after"][0])]
            rows.append(
                [
                    f"{name} (`{record['env_id']}`)",
                    label,
                    str(len(runs)),
                    str(record["epochs"]),
                    _probe_cell(runs, "last", "test_accuracy", 100, 1),
                    _probe_cell(runs, "val_picked", "test_accuracy", 100, 1),
                    _probe_cell(runs, "last", "oracle_route_rate", 100, 1),
                    _probe_cell(runs, "last", "oracle_overlap"),
                    f"{_probe_cell(runs, 'last', 'route_overlap')} "
                    f"({_probe_cell(runs, 'last', 'oracle_route_overlap')})",
                    _probe_cell(runs, "last", "route_kind_information"),
                    f"{statistics.mean(r['process_seconds'] for r in runs) / 60:.1f}",
                    f"{min(loads):.1f}-{max(loads):.1f}",
                ]
            )
    header = [
        "probe", "routing", "seeds", "epochs", "test % (last epoch)", "test % (val-picked epoch)",
        "oracle routes %", "overlap with oracle", "route overlap (oracle's)", "kind information",
        "min per run", "load",
    ]  # fmt: skip
    if not rows:
        return "No probe measured yet: run `python scripts/probes.py`."
    return markdown_table(header, rows)


def _probe_mean(record: dict, method: str, key: str, where: str = "last") -> float | None:
    values = [
        r[where][key]
        for r in record["runs"]
        if r["method"] == method and r.get(where) and r[where].get(key) is not None
    ]
    return statistics.mean(values) if values else None


def _target(
    name: str, value: float | None, goal: float, unit: str = "", above: bool = True, signed: bool = True
) -> str:
    """``name value: met`` or ``missed by x`` (``signed``: the value is a difference, shown with its sign)."""
    if value is None:
        return f"{name}: not measured"
    gap = (goal - value) if above else (value - goal)
    verdict = "met" if gap <= 1e-9 else f"missed by {gap:.2f}{unit}"
    shown = f"{value:+.2f}" if signed else f"{value:.2f}"
    return f"{name} {shown}{unit} (target {'>=' if above else '<='} {goal:g}{unit}): {verdict}"


def _probe_checks(probe: str, record: dict, who: str = "LRN") -> list[str]:
    """Issue 27's targets of one probe's record (``who``: what its ``"lrn"`` runs are called), each met or
    missed by how much."""

    def mean(method: str, key: str) -> float | None:
        return _probe_mean(record, method, key)

    def pct(method: str) -> float | None:
        value = mean(method, "test_accuracy")
        return None if value is None else 100 * value

    checks = []
    if probe == "router":
        rate = mean("lrn", "oracle_route_rate")
        minutes = statistics.mean(r["process_seconds"] for r in record["runs"] if r["method"] == "lrn") / 60
        checks.append(_target("oracle routes", None if rate is None else 100 * rate, 95, " %", signed=False))
        checks.append(f"{minutes:.1f} min per run, evaluations included (target <= 5)")
        return checks
    oracle_acc, static_acc, lrn_acc = pct("oracle"), pct("static"), pct("lrn")
    if oracle_acc is not None and static_acc is not None:  # the construction's own target
        goal = 0 if probe == "share" else 5
        checks.append(
            _target("the oracle routing over the static route", oracle_acc - static_acc, goal, " points")
        )
    if probe == "share":
        overlap, oracle_overlap = mean("lrn", "route_overlap"), mean("lrn", "oracle_route_overlap")
        gap = None if overlap is None or oracle_overlap is None else abs(overlap - oracle_overlap)
        checks.append(_target(f"{who}'s route overlap off the oracle's by", gap, 0.1, above=False))
    else:
        checks.append(_target("kind information", mean("lrn", "route_kind_information"), 0.8, signed=False))
        if lrn_acc is not None and static_acc is not None:
            checks.append(_target(f"{who} over the static route", lrn_acc - static_acc, 3, " points"))
    if lrn_acc is not None and oracle_acc is not None:
        checks.append(_target(f"{who} below the oracle by", oracle_acc - lrn_acc, 1, " points", above=False))
    return checks


def probes_verdict(results: Path) -> str:
    """Per probe, issue 27's targets for LRN against the probe's baselines (means over seeds, last epoch),
    each met or missed by how much, from results/probes/<probe>.json."""
    lines = []
    for probe, name in PROBE_NAMES.items():
        path = results / "probes" / f"{probe}.json"
        if not path.is_file():
            lines.append(f"* **{name}**: not measured yet (`python scripts/probes.py --probes {probe}`).")
            continue
        record = json.loads(path.read_text())
        seeds = len({r["seed"] for r in record["runs"] if r["method"] == "lrn"})
        checks = "; ".join(_probe_checks(probe, record))
        lines.append(f"* **{name}** (LRN, {seeds} seed{'s' if seeds != 1 else ''}, last epoch): {checks}.")
    return "\n".join(lines)
