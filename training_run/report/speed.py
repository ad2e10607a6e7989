"""docs/speed.md's tables of the speed options (issue 28), from one GPU lease's ``scripts/benchmark.py``
files in a folder of ``results/``: ``speed.json`` (the default and each option in one process, with
MIN-MTL runs of their own), ``parallel3.json`` (three MNIST-MTL trainings at once), ``banks.json`` (the
pool's step per convolution mode and precision) and ``profile*_torch_profile.txt`` (torch-profiler tables
of LRN training); the issue's targets against the best of one lease's files. Every table names the card
its file measured, and no ratio mixes two cards."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from training_run.report.tables import BENCH_ROWS, markdown_table

CURRENT = "bench/issue28/h200"  # the newest lease's files (one H200: speed, three runs at once)
H100 = "bench/issue28/h100"  # the lease before it (one H100), whose torch profiles are the newest
EARLIER = "bench/issue28"  # the first lease (one H200), with the pool step per convolution mode
# Issue 28's targets: (what, the speed.json value it reads, at most / at least, the target).
TARGETS = [
    ("LRN MNIST-MTL epoch, s", "lrn_epoch_seconds", "max", 5.0),
    ("LRN / static network, time per MNIST-MTL epoch (each at its fastest)", "lrn_over_static", "max", 3.0),
    ("MIN-MTL d10 L6 LRN epoch, s", "min_epoch_seconds", "max", 1.5),
    ("three MNIST-MTL LRN trainings at once, episodes/s in all", "parallel3", "min", 20000.0),
]
# Kernel names that say a tensor-core kernel (cuDNN's xmma/tensorop, cuBLAS's 16816/1688, CUTLASS's wgmma).
TENSOR_CORE_MARKS = ("tensorop", "tensor16", "16816", "1688", "wgmma", "gmma", "tf32", "bf16", "h16")
# LRN training batches under the torch profiler in one ``scripts/benchmark.py --profile`` (its profile()).
PROFILE_BATCHES = 10
# The profiles docs/speed.md sets side by side: the fast setting's first, then the default's.
PROFILES = ("profile_fast", "profile")


def _load(results: Path, folder: str, name: str) -> dict[str, Any] | None:
    path = results / folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _caption(report: dict[str, Any]) -> str:
    """The card, the code and the torch a file measured."""
    device, commit, torch = (report.get(key, "?") for key in ("device", "commit", "torch"))
    return f"{device}, code at `{commit}`, torch {torch}"


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


def options_table(results: Path, folder: str = CURRENT) -> str:
    """One column per setting of ``folder``'s ``speed.json``: the MNIST-MTL rows of docs/speed.md's older
    table, the MIN-MTL run of the same settings, and each option's speed-up over the default."""
    report = _load(results, folder, "speed.json")
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
    return _caption(report) + "\n\n" + markdown_table(header, rows)


def _same_card(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two files of one folder measured the same card (a file that does not say counts as such)."""
    return (
        a is not None
        and b is not None
        and a.get("device", b.get("device")) == b.get("device", a.get("device"))
    )


def _alone(report: dict[str, Any] | None, settings: list[str]) -> dict[str, Any] | None:
    """The column of ``speed.json`` whose settings are ``settings`` (``--parallel-set``'s), if measured."""
    if report is None:
        return None
    wanted = " ".join(sorted(settings))
    return next((r for _, r in _columns(report) if r["settings"] == wanted), None)


def parallel_table(results: Path, folder: str = CURRENT) -> str:
    """One row per group of ``folder``'s ``parallel3.json`` (N trainings at once, with or without MPS):
    episodes/s in all and per run, each run's time per epoch and card memory, and the total against one
    run alone of the same settings in the same lease's ``speed.json`` (same card only)."""
    parallel = _load(results, folder, "parallel3.json")
    if parallel is None:
        return "(not measured yet)"
    report = _load(results, folder, "speed.json")
    settings = list(parallel.get("parallel_settings", []))
    alone = _alone(report, settings) if _same_card(report, parallel) else None
    rows = []
    for benchmark, groups in parallel.get("parallel", {}).items():
        for group, run in groups.items():
            over = "-"
            if alone is not None and benchmark == "mnist" and "lrn_episodes_per_second" in alone:
                over = f"{run['total_episodes_per_second'] / alone['lrn_episodes_per_second']:.2f}x"
            rows.append(
                [
                    benchmark,
                    group.partition("+")[0],
                    "on" if run.get("mps") else "off",
                    f"{run['total_episodes_per_second']:.0f}",
                    f"{run['per_run_episodes_per_second']:.0f}",
                    f"{run['epoch_seconds_per_run']:.1f}",
                    f"{run['card_gb_per_run']:.1f}" if "card_gb_per_run" in run else "-",
                    over,
                ]
            )
    header = [
        "benchmark", "runs at once", "MPS", "episodes/s in all", "episodes/s per run", "s per epoch per run",
        "card GB per run (nvidia-smi)", "in all / one run alone",
    ]  # fmt: skip
    setting = f"`{' '.join(settings)}`" if settings else "the dataclasses' defaults"
    caption = f"{_caption(parallel)}; every run with {setting}"
    return caption + "\n\n" + markdown_table(header, rows)


def _tensor_cores(kernel: str) -> bool:
    return any(mark in kernel.lower() for mark in TENSOR_CORE_MARKS)


def _kernel_name(kernel: str, width: int = 60) -> str:
    """A kernel's name without ``void``, anonymous namespaces or template arguments, at most ``width``."""
    name = kernel.removeprefix("void ").replace("(anonymous namespace)::", "")
    return name.split("<")[0].split("(")[0][:width]


def banks_table(results: Path, folder: str = CURRENT) -> str:
    """The pool's training step alone per benchmark, mode and precision, with its top kernel."""
    report = _load(results, folder, "banks.json")
    if report is None:
        return "(not measured yet)"
    rows = []
    for bank in report["banks"]:
        kernel, share, launches = bank["top_kernels"][0] if bank.get("top_kernels") else ("-", 0.0, 0)
        rows.append(
            [
                bank["benchmark"],
                f"`{bank['mode']}`",
                bank["precision"],
                f"{bank['ms_per_step']:.2f}",
                f"{bank['epoch_seconds']:.2f}",
                f"{bank['peak_gpu_memory_gb']:.2f}",
                f"`{_kernel_name(kernel)}` ({100 * share:.0f} %, {launches} launches, "
                + ("tensor cores" if _tensor_cores(kernel) else "no tensor cores")
                + ")",
            ]
        )
    header = ["benchmark", "mode", "precision", "ms per step", "s per epoch", "peak GB", "top kernel"]
    return f"{report['device']}, code at `{report.get('commit', '?')}`\n\n" + markdown_table(header, rows)


def _best(results: Path, folder: str, key: str) -> tuple[float, str] | None:
    """The best value of a target's key in ``folder``'s files and the setting that gave it."""
    report = _load(results, folder, "speed.json")
    found: list[tuple[float, str]] = []
    if report is not None and key == "min_epoch_seconds":
        # every MIN-MTL run of the file, named as the column of its settings or by its own settings
        names = {r["settings"]: name for name, r in _columns(report)}
        for memory_key, run in report.get("memory", {}).items():
            settings = " ".join(sorted(memory_key.partition(":")[2].split(","))).strip()
            found.append((run["epoch_seconds"], names.get(settings, f"`{memory_key}`")))
    elif report is not None:
        found += [(r[key], name) for name, r in _columns(report) if key in r]
    if key == "lrn_over_static" and found:
        # each at its fastest setting: an option that slows the static network must not make the ratio
        lrn, static = (
            _best(results, folder, "lrn_epoch_seconds"),
            _best(results, folder, "static_epoch_seconds"),
        )
        if lrn and static:
            return lrn[0] / static[0], f"LRN {lrn[1]} / static {static[1]}"
    parallel = _load(results, folder, "parallel3.json")
    if key == "parallel3" and parallel is not None and (report is None or _same_card(report, parallel)):
        setting = " ".join(parallel.get("parallel_settings", []))
        for group, run in parallel.get("parallel", {}).get("mnist", {}).items():
            if group.partition("+")[0] == "3":
                mps = "MPS" if run.get("mps") else "no MPS"
                found.append((run["total_episodes_per_second"], f"{mps}, `{setting}`" if setting else mps))
    if not found:
        return None
    return (max if key == "parallel3" else min)(found)


def targets_table(results: Path, folder: str = CURRENT) -> str:
    """Issue 28's targets, each against the best setting of one lease's files (``folder``): met, or missed
    by how much."""
    rows = []
    for label, key, sense, target in TARGETS:
        best = _best(results, folder, key)
        if best is None:
            rows.append([label, f"{target:g}", "-", "not measured"])
            continue
        value, setting = best
        met = value <= target if sense == "max" else value >= target
        ratio = value / target if sense == "max" else target / value
        verdict = "met" if met else f"missed: {ratio:.2f}x off"
        bound = "≤" if sense == "max" else "≥"
        shown = f"{value:.0f}" if value >= 1000 else f"{value:.4g}"
        rows.append([label, f"{bound} {target:g}", f"{shown} ({setting})", verdict])
    report = _load(results, folder, "speed.json") or _load(results, folder, "parallel3.json")
    caption = f"{_caption(report)}, `results/{folder}/`\n\n" if report is not None else ""
    return caption + markdown_table(
        ["target (issue 28)", "wanted", "best measured (setting)", "verdict"], rows
    )


def read_torch_profile(path: Path) -> tuple[list[dict[str, Any]], float]:
    """The rows of a torch-profiler table as ``key_averages().table()`` writes it on a GPU (``name``,
    ``share``: the row's "Self CUDA %" as a fraction, ``calls``) and its "Self CUDA time total" in ms.

    The table is fixed-width: the dashed rule above the titles gives where each column starts (a long name
    is cut to the column's width and ends in ``...``; names hold spaces), so the lines are cut there."""
    lines = path.read_text().splitlines()
    rule = next((line for line in lines if line.startswith("---")), None)
    if rule is None:
        raise SystemExit(f"{path}: not a torch profiler table (no dashed rule)")
    starts = [m.start() for m in re.finditer(r"-+", rule)]
    spans = list(zip(starts, [*starts[1:], None]))  # a title may run a character past its dashes
    header = next(line for line in lines if line.strip() and line != rule)
    names = [header[a:b].strip() for a, b in spans]
    share_title = next((t for t in ("Self CUDA %", "Self Device %") if t in names), "Self CUDA %")
    missing = [title for title in ("Name", share_title, "# of Calls") if title not in names]
    if missing:
        raise SystemExit(f"{path}: no {', '.join(missing)} column (a CPU profile?)")
    name_at, share_at, calls_at = names.index("Name"), names.index(share_title), names.index("# of Calls")
    rows = []
    for line in lines[lines.index(header) + 2 :]:
        if line == rule:
            break
        cells = [line[a:b].strip() for a, b in spans]
        rows.append(
            {
                "name": cells[name_at],
                "share": float(cells[share_at].rstrip("%")) / 100,
                "calls": int(cells[calls_at]),
            }
        )
    total = re.search(r"Self (?:CUDA|Device) time total: ([\d.]+)(us|ms|s)\b", path.read_text())
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return rows, float(total.group(1)) * scale[total.group(2)] if total else float("nan")


def _profile_setting(report: dict[str, Any] | None) -> str:
    """The setting a ``--profile`` run profiled: ``--profile-set``'s, else the dataclasses' defaults (the
    profile takes no ``--set``)."""
    settings = (report or {}).get("settings", {}).get("profile_set") or "[]"
    values = ast.literal_eval(settings) if isinstance(settings, str) else settings
    return " ".join(values) or "default"


def _profiles(results: Path, folder: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]], float]]:
    """Each of :data:`PROFILES` measured in ``folder``: its setting, JSON, kernel rows and GPU ms in all."""
    found = []
    for stem in PROFILES:
        path = results / folder / f"{stem}_torch_profile.txt"
        if path.exists():
            report = _load(results, folder, f"{stem}.json") or {}
            found.append((_profile_setting(report), report, *read_torch_profile(path)))
    return found


def profile_table(results: Path, folder: str = H100, top: int = 8) -> str:
    """The ``top`` kernels of each profile of :data:`PROFILES` side by side: share of the GPU time and
    launches per training batch (:data:`PROFILE_BATCHES` batches were profiled)."""
    profiles = _profiles(results, folder)
    if not profiles:
        return "(not profiled yet)"
    if len({report.get("device") for _, report, _, _ in profiles}) > 1:
        raise SystemExit(f"results/{folder}: the profiles measured different cards")
    header = ["#"]
    for setting, *_ in profiles:
        header += [f"`{setting}`: kernel", "% of GPU time", "calls per batch"]
    rows = []
    for i in range(top):
        row = [str(i + 1)]
        for _, _, kernels, _ in profiles:
            k = kernels[i] if i < len(kernels) else None
            if k is None:
                row += ["-"] * 3
            else:
                row += [
                    f"`{_kernel_name(k['name'])}`",
                    f"{100 * k['share']:.1f}",
                    f"{k['calls'] / PROFILE_BATCHES:g}",
                ]
        rows.append(row)
    report = profiles[0][1]
    totals = ", ".join(f"{ms / PROFILE_BATCHES:.1f} ms with `{setting}`" for setting, _, _, ms in profiles)
    caption = (
        f"{_caption(report)}; LRN training on MNIST-MTL, batches of "
        f"{report.get('settings', {}).get('batch_size', '?')} episodes, {PROFILE_BATCHES} batches profiled; "
        f"GPU time per batch (the kernels' self time in all): {totals}"
    )
    return caption + "\n\n" + markdown_table(header, rows)


def profile_verdict(results: Path, folder: str = H100) -> str:
    """What the profiles' top kernel is, in words, from the files: its name, whether its name marks tensor
    cores, its launches per batch and per episode of a batch, and its share of the GPU time in each."""
    profiles = _profiles(results, folder)
    if not profiles:
        return "(not profiled yet)"
    setting, report, kernels, _ = profiles[0]
    top = kernels[0]
    batch = int(report.get("settings", {}).get("batch_size", 0)) or None
    per_batch = top["calls"] / PROFILE_BATCHES
    cores = "a tensor-core kernel" if _tensor_cores(top["name"]) else "no tensor-core kernel (fp32 FFMA)"
    text = (
        f"On the {report.get('device', '?')}, the top kernel with `{setting}` is "
        f"`{_kernel_name(top['name'])}`, "
        f"{cores}, at {100 * top['share']:.1f} % of the GPU time and {per_batch:g} launches per batch"
    )
    if "fprop" in top["name"] and batch and per_batch % batch == 0:
        text += (
            f", {per_batch / batch:g} per episode of a {batch}-episode batch: the forward of the pool's "
            "`gathered` convolution (a grouped convolution, one group per sample), which cuDNN runs one "
            "sample at a time"
        )
    others = []
    for other_setting, _, other_kernels, _ in profiles[1:]:
        same = next((i for i, k in enumerate(other_kernels) if k["name"] == top["name"]), None)
        if same is not None:
            k = other_kernels[same]
            others.append(
                f"with `{other_setting}` the same kernel is number {same + 1}, at {100 * k['share']:.1f} % "
                f"and {k['calls'] / PROFILE_BATCHES:g} launches per batch"
            )
    return text + (f"; {'; '.join(others)}." if others else ".")
