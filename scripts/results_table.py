"""Rebuild README's results table from results/<benchmark>/<run>/{metrics.jsonl,config.json}.

    python scripts/results_table.py            # rewrite the table in README.md
    python scripts/results_table.py --print    # print it only

Every number in the table comes from those files; the paper's Table 1 stands beside them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
BENCH_BEGIN, BENCH_END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
BENCH_ROWS = [
    ("env_episodes_per_second", "env alone, episodes/s (random valid actions, module training)", "{:.0f}"),
    ("env_epoch_seconds", "env alone, s per MNIST-MTL epoch (100k episodes)", "{:.1f}"),
    ("vec_env_episodes_per_second", "SB3 VecEnv (numpy in/out), episodes/s", "{:.0f}"),
    ("lrn_epoch_seconds", "LRN training (MaskablePPO + router + modules), s per epoch", "{:.1f}"),
    ("static_epoch_seconds", "static network, same engine, s per epoch", "{:.1f}"),
    ("lrn_over_static", "LRN / static time per epoch", "{:.2f}x"),
    ("eval_seconds", "evaluation pass (all test pairs), s", "{:.2f}"),
    ("peak_gpu_memory_gb", "peak GPU memory, GB", "{:.2f}"),
]
BENCHMARK_NAMES = {"mnist": "MNIST-MTL", "cifar": "CIFAR-MTL", "min": "MIN-MTL"}
# LRN paper, Table 1: test accuracy (%) of LRN and of the original routing network.
PAPER = {"mnist": (99.5, 99.0), "cifar": (70.0, 60.0), "min": (53.0, 35.9)}


def describe(config: dict) -> str:
    algo = config["algo"]
    if algo == "static":
        return "static network"
    if algo == "routing_network":
        learner = config.get("rn_learner", "wpl")
        return f"routing network ({learner}, {config.get('duplicates')} modules/depth)"
    env = config.get("env_config", {})
    bonus = env.get("bonus_weight", config.get("bonus_weight", 1.0))
    parts = [f"LRN ({algo})", f"d{env.get('duplicates')} L{env.get('max_depth')}"]
    parts.append("no bonus" if bonus == 0 else f"bonus {bonus:g}")
    if config.get("bonus_warmup") and bonus > 0:
        parts.append(f"bonus from epoch {config['bonus_warmup']}")
    if config.get("task_prior"):
        parts.append(f"task prior {config['task_prior']:g}")
    if config.get("ent_coef"):
        parts.append(f"entropy {config['ent_coef']:g}")
    if config.get("router_lr"):
        parts.append(f"router lr {config['router_lr']:g}")
    if config.get("minibatch_unit") == "transitions":
        parts.append("minibatch 64 transitions")
    return ", ".join(parts)


def rows(results: Path) -> list[list[str]]:
    out = []
    for bench in ("mnist", "cifar", "min"):
        for run in sorted((results / bench).glob("*/metrics.jsonl")):
            records = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
            if not records:
                continue
            config = json.loads((run.parent / "config.json").read_text())
            last = records[-1]
            best = max(records, key=lambda r: r["test_accuracy"])
            out.append(
                [
                    BENCHMARK_NAMES[bench],
                    f"`{run.parent.name}`",
                    describe(config),
                    f"{100 * last['test_accuracy']:.2f}",
                    f"{100 * last['test_balanced_accuracy']:.2f}",
                    f"{100 * best['test_accuracy']:.2f} (ep {best['epoch']})",
                    str(last["unused_modules"]),
                    f"{last['epoch'] + 1}/{config['epochs']}",
                    f"{last['wall_clock_s'] / 60:.1f}",
                    config.get("device_name", "?"),
                    f"{PAPER[bench][0]} / {PAPER[bench][1]}",
                ]
            )
    return out


def table(results: Path) -> str:
    header = [
        "benchmark",
        "run",
        "setting",
        "test acc % (last)",
        "balanced %",
        "best test acc %",
        "unused modules",
        "epochs",
        "minutes",
        "card",
        "paper LRN / RN %",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines)


def bench_table(results: Path) -> str:
    """One column per device in results/bench/*.json."""
    reports = [json.loads(p.read_text()) for p in sorted((results / "bench").glob("*.json"))]
    if not reports:
        return "(no benchmark results yet)"
    header = (
        "| measure | "
        + " | ".join(f"{r['device']}, {r.get('dispatch', '?')} dispatch" for r in reports)
        + " |"
    )
    lines = [header, "|---|" + "---|" * len(reports)]
    for key, label, fmt in BENCH_ROWS:
        cells = [fmt.format(r[key]) if key in r else "-" for r in reports]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for n in ("1", "2", "4", "8"):
        cells = [
            f"{r['parallel'][n]['total_episodes_per_second']:.0f}" if n in r.get("parallel", {}) else "-"
            for r in reports
        ]
        if any(c != "-" for c in cells):
            lines.append(f"| {n} LRN trainings at once, total episodes/s | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--print", action="store_true", help="print the table, leave README alone")
    args = p.parse_args()
    text, bench = table(args.results), bench_table(args.results)
    if args.print:
        print(text + "\n\n" + bench)
        return
    readme = replace_block(args.readme.read_text(), BEGIN, END, text)
    args.readme.write_text(replace_block(readme, BENCH_BEGIN, BENCH_END, bench))
    print(f"rewrote the tables in {args.readme}")


if __name__ == "__main__":
    main()
