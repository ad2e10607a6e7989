"""docs/training.md's table of the router's mechanisms (issue 27) on the probes, from the files
``scripts/mechanisms.py`` writes: ``results/probes/mechanisms_*.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training_run.report.tables import markdown_table

# The probe settings each file measured, as the table names them (files not listed keep their stem).
SETTINGS = {
    "mechanisms_router": "router alone, `--preset probe_router`",
    "mechanisms_router_hard": "router alone, `--preset probe_router --gamma 0.99 --ent-coef 0.01`",
    "mechanisms_kinds": "per instance (`RoutingProbeKinds-v0`, 8 epochs)",
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


def mechanisms_table(results: Path) -> str:
    """One row per (probe setting, mechanism): per seed, the last epoch's oracle-route rate, the share of
    the instance-kind information the route carries, the tasks' route overlap, test accuracy (last epoch;
    and at the epoch the validation split picks, where the run has one) and when the oracle-route rate
    first reached 95 %."""
    rows = []
    for path in sorted((results / "probes").glob("mechanisms_*.json")):
        data = json.loads(path.read_text())
        by_row: dict[str, list[dict[str, Any]]] = {}
        baseline = results / "probes" / f"{BASELINES.get(path.stem, '')}.json"
        if path.stem in BASELINES and baseline.exists():  # scripts/probes.py's runs: "method" for "row"
            for run in json.loads(baseline.read_text())["runs"]:
                name = {"lrn": "LRN, scripts/probes.py"}.get(run["method"], f"{run['method']} route")
                by_row.setdefault(name, []).append({**run, "curve": []})
        for run in data["runs"]:
            by_row.setdefault(run["row"], []).append(run)
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
        "test acc. % (last)", "test acc. % (val-picked)", "s to 95 % oracle routes", "load",
    ]  # fmt: skip
    return markdown_table(header, rows)
