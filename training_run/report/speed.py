"""docs/speed.md's tables of the speed options (issue 28), from one GPU lease's ``scripts/benchmark.py``
files in ``results/bench/issue28/``: ``speed.json`` (the default and each option in one process, with
MIN-MTL runs of their own), ``parallel3.json`` (three MNIST-MTL trainings at once) and ``banks.json`` (the
pool's step per convolution mode and precision); and the issue's targets against the best of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training_run.report.tables import BENCH_ROWS, markdown_table

FOLDER = "bench/issue28"
# Issue 28's targets: (what, the speed.json value it reads, at most / at least, the target).
TARGETS = [
    ("LRN MNIST-MTL epoch, s", "lrn_epoch_seconds", "max", 5.0),
    ("LRN / static network, time per MNIST-MTL epoch (each at its fastest)", "lrn_over_static", "max", 3.0),
    ("MIN-MTL d10 L6 LRN epoch, s", "min_epoch_seconds", "max", 1.5),
    ("three MNIST-MTL LRN trainings at once, episodes/s in all", "parallel3", "min", 20000.0),
]
# Kernel names that say a tensor-core kernel (cuDNN's xmma/tensorop, cuBLAS's 16816/1688, CUTLASS's wgmma).
TENSOR_CORE_MARKS = ("tensorop", "tensor16", "16816", "1688", "wgmma", "gmma", "tf32", "bf16", "h16")


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / FOLDER / name
    return json.loads(path.read_text()) if path.exists() else None


def _settings(values: dict[str, Any]) -> str:
    """A variant's settings as ``--variant`` takes them (``compile=true router.precision=bf16``)."""
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(values.items()))


def _columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The default measurement and each variant (its ``settings`` as text), each with the MIN-MTL run
    (``--memory min:SETTINGS``) of the same settings."""
    memory = {
        " ".join(sorted(key.partition(":")[2].split(","))) if ":" in key else "": run
        for key, run in report.get("memory", {}).items()
    }
    columns = [("default", {**report, "settings": "", "min": memory.get("")})]
    for name, values in report.get("variants", {}).items():
        settings = _settings(values.get("settings", {}))
        columns.append((name, {**values, "settings": settings, "min": memory.get(settings)}))
    return columns


def options_table(results: Path) -> str:
    """One column per setting of ``speed.json``: the MNIST-MTL rows of docs/speed.md's older table, the
    MIN-MTL run of the same settings, and each option's speed-up over the default."""
    report = _load(results, "speed.json")
    if report is None:
        return "(not measured yet)"
    columns = _columns(report)
    header = ["measure"] + [name + (f" (`{r['settings']}`)" if r["settings"] else "") for name, r in columns]
    rows = []
    for keys, label, fmt in BENCH_ROWS:
        key = keys[0]
        if any(key in r for _, r in columns):
            rows.append([label] + [fmt.format(r[key]) if key in r else "-" for _, r in columns])
    base = columns[0][1]["lrn_epoch_seconds"]
    rows.append(
        ["LRN training, speed-up over the default"]
        + [f"{base / r['lrn_epoch_seconds']:.2f}x" for _, r in columns]
    )
    for key, label, fmt in (
        ("epoch_seconds", "MIN-MTL d10 L6 LRN, s per epoch (alone)", "{:.2f}"),
        ("peak_gpu_memory_gb", "MIN-MTL d10 L6 LRN, peak GPU memory, GB", "{:.2f}"),
        ("process_gpu_memory_gb", "MIN-MTL d10 L6 LRN, the card's memory per run (nvidia-smi), GB", "{:.1f}"),
    ):
        rows.append([label] + [fmt.format(r["min"][key]) if r.get("min") else "-" for _, r in columns])
    caption = f"{report['device']}, code at `{report.get('commit', '?')}`, torch {report.get('torch', '?')}"
    return caption + "\n\n" + markdown_table(header, rows)


def _tensor_cores(kernel: str) -> bool:
    return any(mark in kernel.lower() for mark in TENSOR_CORE_MARKS)


def banks_table(results: Path) -> str:
    """The pool's training step alone per benchmark, mode and precision, with its top kernel."""
    report = _load(results, "banks.json")
    if report is None:
        return "(not measured yet)"
    rows = []
    for bank in report["banks"]:
        kernel, share, launches = bank["top_kernels"][0] if bank.get("top_kernels") else ("-", 0.0, 0)
        name = kernel.removeprefix("void ").replace("(anonymous namespace)::", "")
        name = name.split("<")[0].split("(")[0][:60]
        rows.append(
            [
                bank["benchmark"],
                f"`{bank['mode']}`",
                bank["precision"],
                f"{bank['ms_per_step']:.2f}",
                f"{bank['epoch_seconds']:.2f}",
                f"{bank['peak_gpu_memory_gb']:.2f}",
                f"`{name}` ({100 * share:.0f} %, {launches} launches, "
                + ("tensor cores" if _tensor_cores(kernel) else "no tensor cores")
                + ")",
            ]
        )
    header = ["benchmark", "mode", "precision", "ms per step", "s per epoch", "peak GB", "top kernel"]
    return f"{report['device']}, code at `{report.get('commit', '?')}`\n\n" + markdown_table(header, rows)


def _best(results: Path, key: str) -> tuple[float, str] | None:
    """The best measured value of a target's key and the setting that gave it."""
    report = _load(results, "speed.json")
    found: list[tuple[float, str]] = []
    if report is not None:
        for name, r in _columns(report):
            if key == "min_epoch_seconds" and r.get("min"):
                found.append((r["min"]["epoch_seconds"], name))
            elif key in r:
                found.append((r[key], name))
    if key == "lrn_over_static" and found:
        # each at its fastest setting: an option that slows the static network must not make the ratio
        lrn, static = _best(results, "lrn_epoch_seconds"), _best(results, "static_epoch_seconds")
        if lrn and static:
            return lrn[0] / static[0], f"LRN {lrn[1]} / static {static[1]}"
    if key == "parallel3" and (parallel := _load(results, "parallel3.json")) is not None:
        for group, run in parallel.get("parallel", {}).get("mnist", {}).items():
            if group.partition("+")[0] == "3":
                found.append((run["total_episodes_per_second"], "MPS" if run.get("mps") else "default"))
    if not found:
        return None
    return (max if key == "parallel3" else min)(found)


def targets_table(results: Path) -> str:
    """Issue 28's targets, each against the best setting measured: met, or missed by how much."""
    rows = []
    for label, key, sense, target in TARGETS:
        best = _best(results, key)
        if best is None:
            rows.append([label, f"{target:g}", "-", "not measured"])
            continue
        value, setting = best
        met = value <= target if sense == "max" else value >= target
        ratio = value / target if sense == "max" else target / value
        verdict = "met" if met else f"missed: {ratio:.2f}x off"
        bound = "≤" if sense == "max" else "≥"
        rows.append([label, f"{bound} {target:g}", f"{value:.4g} ({setting})", verdict])
    return markdown_table(["target (issue 28)", "wanted", "best measured (setting)", "verdict"], rows)
