"""README's tables (``python scripts/readme_tables.py``, :mod:`training_run.report.tables`) come from
results/ files and the config dataclasses, seeds are aggregated right."""

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
    folder: Path, seed: int, accuracies: list[float], task_prior: float = 3.0, val: list[float] | None = None
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

    table = results_table.table(results)
    setting = "LRN (maskable_ppo), d10 L6, bonus 0.1, terminal reward, plain Adam, task prior 3"
    assert f"| MIN-MTL | `a_s0` | {setting} | 40.00 | 40.00 | 40.00 (ep 2) |" in table
    assert f"| MIN-MTL | `a_s1` | {setting} | 60.00 | 60.00 | 30.00 (ep 0) |" in table
    assert "| 3/100 |" in table and "test card" in table
    assert "| 25.00 | 25.00 | - |" in table  # no validation split: no val-picked value, never the best test

    seeds = results_table.seeds_table(results).splitlines()
    assert len(seeds) == 3  # header, rule, one setting
    # last 40 / 60 -> 50 ± 14.14; val-picked 40 / 30 -> 35 ± 7.07; epochs reached 2 and 3
    assert seeds[2] == f"| MIN-MTL | {setting} | 0, 1 | 50.00 ± 14.14 | 35.00 ± 7.07 | 2-3 | 53.0 |"


def test_readme_blocks_are_replaced_and_missing_ones_refused(results_table) -> None:
    text = "intro\n<!-- seeds-table:begin -->\nold\n<!-- seeds-table:end -->\nrest\n"
    out = results_table.replace_block(text, "seeds-table", "new")
    assert out == "intro\n<!-- seeds-table:begin -->\nnew\n<!-- seeds-table:end -->\nrest\n"
    with pytest.raises(SystemExit, match="no <!-- results-table:begin"):
        results_table.replace_block(text, "results-table", "x")


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


def test_committed_readme_matches_committed_results(results_table) -> None:
    """README's generated blocks are what the script builds from results/ and the config dataclasses
    (nobody edited them by hand, and no flag or kwarg is missing)."""
    readme = (ROOT / "README.md").read_text()
    for name, build in results_table.BLOCKS.items():
        body = build(ROOT / "results")
        assert f"<!-- {name}:begin -->\n{body}\n<!-- {name}:end -->" in readme, name
