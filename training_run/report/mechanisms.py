"""docs/training.md's table of the router's mechanisms (issue 27) on the probes, from the files
``scripts/mechanisms.py`` writes: ``results/probes/mechanisms_*.json``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from training_run.folder import RunFolder
from training_run.report.describe import describe, val_picked
from training_run.report.tables import _mean_std, _probe_checks, markdown_table

# The probe settings each file measured, as the table names them (files not listed keep their stem).
SETTINGS = {
    "mechanisms_router": "router alone, `--preset probe_router`",
    "mechanisms_router_hard": "router alone, `--preset probe_router --gamma 0.99 --ent-coef 0.01`",
    "mechanisms_kinds": "per instance (`RoutingProbeKinds-v0`, 8 epochs unless `+epochs_N`)",
    "mechanisms_share": "share or separate (`RoutingProbeShare-v0`, 8 epochs)",
}
# The probe file of scripts/probes.py whose fixed-route baselines stand beside each file's rows.
BASELINES = {"mechanisms_kinds": "kinds", "mechanisms_share": "share"}
TARGET = 0.95  # the router-alone probe's target oracle-route rate


def _per_seed(runs: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 2) -> str:
    values = [run["last"].get(key) for run in runs]
    if any(v is None for v in values):
        return "—"
    return " / ".join(f"{scale * v:.{digits}f}" for v in values)


def _time_to_target(run: dict[str, Any]) -> str:
    """Seconds of the run (wall clock at the epoch's end) when the oracle-route rate first reached TARGET."""
    if not run["curve"]:
        return "—"
    for _epoch, wall, _accuracy, rate in run["curve"]:
        if rate is not None and rate >= TARGET:
            return f"{wall:.0f}"
    return "never"


def _runs_by_row(path: Path) -> dict[str, list[dict[str, Any]]]:
    """A scripts/mechanisms.py file's runs, grouped by row (in the file's order)."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for run in json.loads(path.read_text())["runs"]:
        by_row.setdefault(run["row"], []).append(run)
    return by_row


def _probe_runs(results: Path, probe: str) -> tuple[int, dict[str, list[dict[str, Any]]]] | None:
    """scripts/probes.py's file of ``probe`` (``results/probes/<probe>.json``): its epochs and its runs by
    method (``lrn``, ``oracle``, ``static``); None where it does not exist."""
    path = results / "probes" / f"{probe}.json"
    if not probe or not path.is_file():
        return None
    record = json.loads(path.read_text())
    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in record["runs"]:
        by_method.setdefault(run["method"], []).append(run)
    return int(record["epochs"]), by_method


def mechanisms_table(results: Path) -> str:
    """One row per (probe setting, mechanism): per seed, the last epoch's oracle-route rate, the share of
    the instance-kind information the route carries, the tasks' route overlap, the distinct routes per
    task, test accuracy (last epoch; and at the epoch the validation split picks, where the run has one)
    and when the oracle-route rate first reached 95 %."""
    rows = []
    for path in sorted((results / "probes").glob("mechanisms_*.json")):
        by_row: dict[str, list[dict[str, Any]]] = {}
        if fixed := _probe_runs(results, BASELINES.get(path.stem, "")):  # scripts/probes.py's, by method
            for method, runs in fixed[1].items():
                name = {"lrn": "LRN, scripts/probes.py"}.get(method, f"{method} route")
                by_row[name] = [{**run, "curve": []} for run in runs]
        for row, runs in _runs_by_row(path).items():
            by_row.setdefault(row, []).extend(runs)
        for row, runs in by_row.items():
            runs = sorted(runs, key=lambda r: r["seed"])
            picked = [r["val_picked"] for r in runs]
            val = " / ".join(f"{100 * p['test_accuracy']:.1f}" for p in picked) if all(picked) else "—"
            rows.append(
                [
                    SETTINGS.get(path.stem, path.stem),
                    f"`{row}`",
                    " ".join(str(r["seed"]) for r in runs),
                    _per_seed(runs, "oracle_route_rate"),
                    _per_seed(runs, "route_kind_information"),
                    _per_seed(runs, "route_overlap"),
                    _per_seed(runs, "routes_per_task", digits=1),
                    _per_seed(runs, "test_accuracy", 100, 1),
                    val,
                    " / ".join(_time_to_target(r) for r in runs),
                    f"{max(r['load_average_before'][0] for r in runs):.1f}",
                ]
            )
    if not rows:
        return "(no measurements yet: `python scripts/mechanisms.py`)"
    header = [
        "probe", "mechanism", "seeds", "oracle-route rate", "kind information", "route overlap",
        "routes per task", "test acc. % (last)", "test acc. % (val-picked)", "s to 95 % oracle routes",
        "load",
    ]  # fmt: skip
    return markdown_table(header, rows)


# The MIN-MTL check of the mechanisms (issue 27; one GPU, 30 epochs, 10 % validation split, augmentation,
# 3 seeds): the run folders' name before ``_s<seed>``, first the static network that stands beside them.
# ``mech-iprior_task`` is the instance prior with the per-task bonus (``--preset best --instance-prior-std 1
# --bonus-scope task``), the combination the per-instance probe liked best.
MIN_CHECK = ("mech-static", "mech-upcycle", "mech-upcycle_sc", "mech-upcycle_soft", "mech-iprior_task")


def min_check_table(results: Path) -> str:
    """One row per MIN-MTL setting of :data:`MIN_CHECK`: the card its runs trained on (their config.json's
    ``device_name``; rows of one table may come from different leases), test accuracy (last epoch, and
    where the validation split picks), its difference from the static network's, and the route statistics
    of the last epoch (routes per task, route entropy, the tasks' overlap, unused modules), mean ± std over
    seeds."""
    groups: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    for folder in RunFolder.find(results / "min"):
        stem, _, seed = folder.path.name.rpartition("_s")
        if stem in MIN_CHECK and seed.isdigit() and (records := folder.read_metrics()):
            groups.setdefault(stem, []).append((folder.read_config(), records))
    if "mech-static" not in groups:
        return "(not run yet)"
    static_last = statistics.mean(100 * r[-1]["test_accuracy"] for _, r in groups["mech-static"])
    rows = []
    for stem in MIN_CHECK:
        runs = groups.get(stem, [])
        if not runs:
            continue
        last = [100 * records[-1]["test_accuracy"] for _, records in runs]
        picked = [val_picked(records) for _, records in runs]
        stat = [records[-1] for _, records in runs]
        cards = sorted({config.get("device_name", "?") for config, _ in runs})
        rows.append(
            [
                f"`{stem}`: {describe(runs[0][0])}",
                ", ".join(cards),
                str(len(runs)),
                _mean_std(last, 1),
                _mean_std([100 * p["test_accuracy"] for p in picked], 1) if all(picked) else "-",
                f"{statistics.mean(last) - static_last:+.1f}",
                _mean_std([r["routes_per_task"] for r in stat], 1),
                _mean_std([r["route_entropy_bits"] for r in stat], 2),
                _mean_std([r["route_overlap"] for r in stat], 2),
                _mean_std([float(r["unused_modules"]) for r in stat], 0),
            ]
        )
    header = [
        "setting", "card", "seeds", "test acc. % (last)", "test acc. % (val-picked)", "last vs static",
        "routes per task", "route entropy, bits", "route overlap", "unused modules",
    ]  # fmt: skip
    return markdown_table(header, rows)


# The fixed-route baselines among scripts/mechanisms.py's rows (at the row's "+epochs_N", else the base's)
BASELINE_ROWS = {"oracle": "oracle_route", "static": "static_route"}


def _row_epochs(runs: list[dict[str, Any]]) -> int:
    return 1 + max(run["last"]["epoch"] for run in runs)


# Per trained probe: its mechanisms file, its name, and the mechanisms the verdict names: the best by
# each ranking (the mean over seeds of each key in turn).
VERDICT_PROBES = {
    "kinds": (
        "mechanisms_kinds",
        "per instance",
        {"the most accurate": ("test_accuracy",), "the most kind-informative": ("route_kind_information",)},
    ),
    "share": ("mechanisms_share", "share or separate", {"the most accurate": ("test_accuracy",)}),
}


def _probe_verdict(results: Path, probe: str, seeds: int) -> list[str]:
    stem, name, rankings = VERDICT_PROBES[probe]
    path = results / "probes" / f"{stem}.json"
    if not path.is_file():
        return [f"* **{name}**: no mechanism measured yet (`python scripts/mechanisms.py`)."]
    by_row = _runs_by_row(path)
    baselines: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row, runs in by_row.items():
        for method, baseline in BASELINE_ROWS.items():
            if row == baseline or row.startswith(f"{baseline}+"):
                baselines[(method, _row_epochs(runs))] = runs
    if fixed := _probe_runs(results, probe):
        epochs, by_method = fixed
        for method in BASELINE_ROWS:
            baselines.setdefault((method, epochs), by_method.get(method, []))
    candidates = {
        row: runs
        for row, runs in by_row.items()
        if len({r["seed"] for r in runs}) >= seeds
        and not any(b in row for b in BASELINE_ROWS.values())
        and all((method, _row_epochs(runs)) in baselines for method in BASELINE_ROWS)
    }
    if not candidates:
        return [f"* **{name}**: no mechanism with {seeds} seeds and fixed routes at its epochs yet."]
    lines, named = [], set()
    for which, keys in rankings.items():
        row = max(
            candidates,
            key=lambda r: tuple(
                statistics.mean(run["last"].get(k, 0.0) for run in candidates[r]) for k in keys
            ),
        )
        if row in named:
            continue
        named.add(row)
        runs, epochs = sorted(candidates[row], key=lambda r: r["seed"]), _row_epochs(candidates[row])
        record = {
            "runs": [{**r, "method": "lrn"} for r in runs]
            + [{**r, "method": m} for m in BASELINE_ROWS for r in baselines[(m, epochs)]]
        }
        checks = "; ".join(_probe_checks(probe, record, who="the mechanism"))
        accuracy = " / ".join(f"{100 * r['last']['test_accuracy']:.1f}" for r in runs)
        info = " / ".join(f"{r['last'].get('route_kind_information', 0.0):.2f}" for r in runs)
        seeds_said = f"test accuracy % per seed {accuracy}" + (
            f", kind information {info}" if probe == "kinds" else ""
        )
        lines.append(
            f"* **{name}, {which} mechanism** (`{row}`, {len(runs)} seeds, {epochs} epochs, the fixed routes "
            f"at the same epochs, last epoch): {checks}; {seeds_said}."
        )
    return lines


def mechanism_verdict(results: Path, seeds: int = 3) -> str:
    """Issue 27's targets for the best mechanisms measured with ``seeds`` seeds on each trained probe (per
    instance: the most accurate and the most kind-informative; share or separate: the most accurate),
    against the fixed-route baselines at the same epochs (``oracle_route+epochs_N`` rows of the same file;
    at the base's epochs, scripts/probes.py's file), each met or missed by how much."""
    return "\n".join(line for probe in VERDICT_PROBES for line in _probe_verdict(results, probe, seeds))
