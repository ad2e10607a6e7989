"""The results tables (:mod:`training_run.report.tables`, written into README and docs/results.md by
``python scripts/docs_pages.py``) come from results/ files: seeds are aggregated right, the headline picks
its runs by its rule, and an epoch is picked by validation, never by test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_run.report import tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results_table():
    return tables


def _write_run(
    folder: Path,
    seed: int,
    accuracies: list[float],
    task_prior: float = 3.0,
    val: list[float] | None = None,
    usage: list[list[int]] | None = None,
) -> None:
    folder.mkdir(parents=True)
    config = {
        "algo": "maskable_ppo",
        "seed": seed,
        "epochs": 100,
        "device_name": "test card",
        "task_prior": task_prior,
        "env_config": {"duplicates": 10, "max_depth": 6, "bonus_weight": 0.1},
    }
    (folder / "config.json").write_text(json.dumps(config))
    records = [
        {
            "epoch": e,
            "test_accuracy": a,
            "test_balanced_accuracy": a,
            "unused_modules": 3,
            "wall_clock_s": 60.0 * (e + 1),
            "module_usage": usage or [[1, 1, 0], [1, 0, 1]],
            **({"val_accuracy": val[e]} if val else {}),
        }
        for e, a in enumerate(accuracies)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_tables_and_seed_aggregation(results_table, tmp_path: Path) -> None:
    results = tmp_path / "results"
    # test accuracy 0.2, 0.5, 0.4; validation peaks at epoch 2 (not the best test epoch 1)
    _write_run(results / "min" / "a_s0", 0, [0.2, 0.5, 0.4], val=[0.1, 0.3, 0.35])
    _write_run(results / "min" / "a_s1", 1, [0.3, 0.6], val=[0.5, 0.5])  # a tie: the earlier epoch
    _write_run(results / "min" / "single", 0, [0.25], task_prior=0.0)  # one seed: no seeds row

    table = results_table.results_table(results)
    setting = "LRN (maskable_ppo), d10 L6, bonus 0.1, terminal reward, plain Adam, task prior 3"
    assert f"| MIN-MTL | `a_s0` | {setting} | 40.00 | 40.00 | 40.00 (ep 2) |" in table
    assert f"| MIN-MTL | `a_s1` | {setting} | 60.00 | 60.00 | 30.00 (ep 0) |" in table
    assert "| 3/100 |" in table and "test card" in table
    assert "| 25.00 | 25.00 | - |" in table  # no validation split: no val-picked value, never the best test

    seeds = results_table.seeds_table(results).splitlines()
    assert len(seeds) == 3  # header, rule, one setting
    # last 40 / 60 -> 50 ± 14.14; val-picked 40 / 30 -> 35 ± 7.07; epochs reached 2 and 3
    assert seeds[2] == f"| MIN-MTL | {setting} | 0, 1 | 50.00 ± 14.14 | 35.00 ± 7.07 | 2-3 | 53.0 |"


def test_figures_only_where_every_run_exists(results_table, tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    _write_run(results / "min" / "a_s0", 0, [0.2, 0.5])
    _write_run(results / "min" / "a_s1", 1, [0.3, 0.6])
    monkeypatch.setattr(
        results_table,
        "FIGURES",
        [("min/both.png", ["min/a_s0", "min/a_s1"]), ("min/missing.png", ["min/a_s0", "min/absent"])],
    )
    assert results_table.figures(results) == [results / "min" / "both.png"]
    assert (results / "min" / "both.png").stat().st_size > 0
    assert not (results / "min" / "missing.png").exists()


def test_headline_cells_follow_their_rule(results_table, tmp_path: Path, monkeypatch) -> None:
    """A cell averages the runs of its first pattern that has any; the route statistics come from the last
    epoch's module_usage (runs without route-statistics keys); a benchmark without data reads "not run"."""
    results = tmp_path / "results"
    disjoint = [[1, 0, 0, 1], [0, 1, 0, 1]]  # module sets {0, 3} and {1, 3}: Jaccard 1/3, 1 shared module
    _write_run(results / "min" / "lrn_s0", 0, [0.2, 0.4], val=[0.5, 0.4], usage=disjoint)
    _write_run(results / "min" / "lrn_s1", 1, [0.3, 0.6], val=[0.1, 0.2], usage=[[1, 1, 1, 0], [1, 1, 1, 0]])
    _write_run(results / "min" / "old_static", 0, [0.7] * 5)  # no validation split, 5 of 100 epochs
    _write_run(results / "min" / "new_static_s0", 0, [0.1], task_prior=0.0)
    monkeypatch.setattr(
        results_table,
        "HEADLINE",
        {
            "cifar": ((), (), (), ()),
            "min": (("min/lrn_s*",), ("min/absent_s*", "min/old_static"), ("min/absent_s*",), ()),
        },
    )
    lrn, static, beyond, rn = results_table.headline_cells(results)["min"]
    assert lrn.last == pytest.approx([40.0, 60.0]) and lrn.picked == pytest.approx([20.0, 60.0])
    assert lrn.overlap == pytest.approx([1 / 3, 1.0]) and lrn.shared == [1, 3]
    assert static.pattern == "min/old_static" and static.picked == [] and beyond is None and rn is None

    table = results_table.headline_table(results).splitlines()
    assert table[2].startswith("| **CIFAR-MTL** | not run (no data here) |") and table[2].endswith(
        "70.0 / 60.0 |"
    )
    assert (
        table[3]
        == "| **MIN-MTL**: test acc %, last epoch | 50.0 ± 14.1 | 70.0 | not run | not run | 53.0 / 35.9 |"
    )
    assert table[4] == "| test acc %, val-picked epoch | 40.0 ± 28.3 | no val split | not run | not run |  |"
    assert table[5] == "| seeds × epochs | 2 × 2 of 100 | 1 × 5 of 100 | not run | not run | 100 epochs |"
    assert table[6] == "| route overlap / shared modules | 0.67 / 2 | 0.33 / 1 | not run | not run |  |"


def test_headline_verdict_says_by_how_much(results_table, tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    _write_run(results / "min" / "lrn_s0", 0, [0.48], val=[0.5])
    _write_run(results / "min" / "static_s0", 0, [0.45], val=[0.5])
    _write_run(results / "min" / "beyond_s0", 0, [0.56], val=[0.5])
    _write_run(results / "mnist" / "lrn_s0", 0, [0.97, 0.98], val=[0.5, 0.6])
    monkeypatch.setattr(
        results_table,
        "HEADLINE",
        {
            "mnist": (("mnist/lrn_s*",), (), (), ()),
            "min": (("min/lrn_s*",), ("min/static_s*",), ("min/beyond_s*",), ()),
        },
    )
    verdict = results_table.headline_verdict(results)
    assert "not reproduced" in verdict
    assert "on MIN-MTL our LRN ends 5.0 points below the paper's 53.0 % after 1 epochs" in verdict
    assert "beats it by 8.0 points" in verdict and "1.5 points below 99.5 % after 2 of" in verdict
    assert "--preset paper" not in verdict  # no paper-preset column: no clause

    _write_run(results / "min" / "paper_s0", 0, [0.2, 0.21], val=[0.2, 0.2])
    headline = dict(results_table.HEADLINE)
    headline["min"] = (*headline["min"], ("min/paper_s*",))
    monkeypatch.setattr(results_table, "HEADLINE", headline)
    verdict = results_table.headline_verdict(results)
    assert (
        "the paper's own setting (`--preset paper`) stays at 21.0 % on MIN-MTL (1 × 2 of 100 epochs)"
        in verdict
    )


def _write_speed(results: Path, lrn: dict[str, float], static: dict[str, float], parallel3: float) -> None:
    """A speed.json (the default and a ``fast`` variant) and a parallel3.json as scripts/benchmark.py
    writes them."""
    folder = results / "bench" / "issue28"
    folder.mkdir(parents=True)

    def measure(name: str) -> dict:
        return {"lrn_epoch_seconds": lrn[name], "static_epoch_seconds": static[name],
                "lrn_over_static": lrn[name] / static[name]}  # fmt: skip

    speed = {
        "device": "test card",
        **measure("default"),
        "variants": {"fast": {"settings": {"compile": True}, **measure("fast")}},
        "memory": {"min": {"epoch_seconds": 2.0, "peak_gpu_memory_gb": 1.0, "process_gpu_memory_gb": 2.0},
                   "min:compile=true": {"epoch_seconds": 1.2, "peak_gpu_memory_gb": 1.0,
                                        "process_gpu_memory_gb": 2.0}},
    }  # fmt: skip
    (folder / "speed.json").write_text(json.dumps(speed))
    parallel = {"parallel": {"mnist": {"3+mps": {"total_episodes_per_second": parallel3, "mps": True}}}}
    (folder / "parallel3.json").write_text(json.dumps(parallel))


def test_speed_targets_take_each_side_at_its_fastest(tmp_path: Path) -> None:
    """The LRN/static target divides the fastest LRN by the fastest static network: an option that slows
    the static network (as compile did on an H200) must not meet the target by itself."""
    from training_run.report import speed

    _write_speed(tmp_path, {"default": 12.0, "fast": 6.0}, {"default": 1.5, "fast": 3.0}, 25000.0)
    rows = {line.split(" | ")[0].strip("| "): line for line in speed.targets_table(tmp_path).splitlines()}
    ratio = next(line for label, line in rows.items() if label.startswith("LRN / static"))
    assert "4 (LRN fast / static default)" in ratio and "missed: 1.33x off" in ratio  # 6 / 1.5, not 2
    epoch = next(line for label, line in rows.items() if label.startswith("LRN MNIST-MTL epoch"))
    assert "6 (fast)" in epoch and "missed: 1.20x off" in epoch
    assert (
        "1.2 (fast)" in rows["MIN-MTL d10 L6 LRN epoch, s"] and "met" in rows["MIN-MTL d10 L6 LRN epoch, s"]
    )
    three = next(line for label, line in rows.items() if label.startswith("three"))
    assert three.rstrip(" |").endswith("met")
    options = speed.options_table(tmp_path)
    assert "fast (`compile=true`)" in options and "| 2.00 | 1.20 |" in options  # MIN-MTL per column


def test_min_mechanism_check_compares_with_the_static_network(tmp_path: Path) -> None:
    """docs/training.md's MIN-MTL check: each setting's last-epoch accuracy against the static network's,
    with the last epoch's route statistics, mean over the seeds of its folders."""
    from training_run.report.mechanisms import min_check_table

    for stem, accuracy, routes in (("mech-static", 0.5, 1.0), ("mech-upcycle", 0.45, 2.0)):
        for seed in (0, 1):
            folder = tmp_path / "min" / f"{stem}_s{seed}"
            _write_run(folder, seed, [0.1, accuracy + 0.02 * seed], val=[0.3, 0.2])
            records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            for r in records:
                r.update(
                    routes_per_task=routes, route_entropy_bits=routes - 1, route_overlap=0.5, unused_modules=3
                )
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = min_check_table(tmp_path).splitlines()
    assert (
        len(lines) == 4 and lines[2].startswith("| `mech-static`") and lines[3].startswith("| `mech-upcycle`")
    )
    # last epochs 50 / 52 against 45 / 47: -5.0; the validation split picks epoch 0 (10 %) in each
    assert (
        "| 2 | 46.0 ± 1.4 | 10.0 ± 0.0 | -5.0 | 2.0 ± 0.0 | 1.00 ± 0.00 | 0.50 ± 0.00 | 3 ± 0 |" in lines[3]
    )
