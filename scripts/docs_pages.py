"""Rebuild the generated blocks of the pages in docs/: ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``,
each filled from the code or a results/ file it mirrors (the example file, a docstring, measured times).

    python scripts/docs_pages.py            # rewrite the blocks
    python scripts/docs_pages.py --check    # exit 1 naming every block that is not current
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the packages of this checkout
    sys.path.insert(0, str(ROOT))


def example_file(path: str) -> Callable[[], str]:
    """A block that embeds the file at ``path`` (relative to the repository) as a Python code block."""
    return lambda: "```python\n" + (ROOT / path).read_text().rstrip() + "\n```"


def markdown(text: str) -> str:
    """Docstring markup as markdown: double backticks and Sphinx roles become single backticks."""
    return re.sub(r":\w+:`", "`", text.replace("``", "`"))


def attributes(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a class's docstring, ``{name: text}`` (continuation lines joined)."""
    section = inspect.getdoc(cls).split("Attributes:", 1)[1]
    entries: dict[str, str] = {}
    for line in section.splitlines():
        head = re.match(r"^ {4}(\w+): (.*)$", line)
        if head:
            entries[head.group(1)] = head.group(2)
        elif line.startswith(" " * 8) and entries:
            last = next(reversed(entries))
            entries[last] += " " + line.strip()
        elif line.strip():
            break  # the section ended
    return entries


def mtlbenchmark_fields() -> str:
    from routing_env.benchmarks import MTLBenchmark

    return "\n".join(f"* `{name}`: {markdown(text)}" for name, text in attributes(MTLBenchmark).items())


# scripts/time_zoo.py's results: on this project's CPU, and on a GPU where measured (--device cuda).
ZOO_TIMES = [ROOT / "results" / "zoo_first_update.json", ROOT / "results" / "zoo_first_update_gpu.json"]


def zoo_first_update() -> str:
    """A markdown table per results file of :data:`ZOO_TIMES` that exists."""
    return "\n\n".join(zoo_table(json.loads(path.read_text())) for path in ZOO_TIMES if path.is_file())


def zoo_table(results: dict) -> str:
    """The measured first update of each RL Zoo file (scripts/time_zoo.py), as a markdown table."""
    machine = results["machine"]

    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:,.1f}"

    header = ["file", "first rollout (s)", "first update (s)", "rollout + update (s)", "peak memory (GB)"]
    header.append("load (1 min) before / after")
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for algo, r in sorted(results["files"].items()):
        if r["finished"]:
            total = seconds(r["first_update_s"])
        else:
            total = f"not done: {r['error']}" if r["error"] else f"not done in {r['timeout_s']:.0f} s"
        load = " / ".join(f"{x:.1f}" for x in (r["load_before"][0], r["load_after"][0]))
        rows.append(
            f"| `hyperparams/{algo}.yml` | {seconds(r['rollout_s'])} | {seconds(r['update_s'])} | {total} "
            f"| {r['peak_rss_gb']} | {load} |"
        )
    when = sorted(r["measured"] for r in results["files"].values())
    where = (
        f"{results['env_id']} on `{results['device']}`: {machine.get('gpu') or machine['cpu']}, "
        f"{machine['cores']} CPU cores, "
        f"torch {machine['torch']}; measured {when[0]} to {when[-1]} UTC"
    )
    return "\n".join(rows) + f"\n\n{where}."


# docs page -> {block name -> what fills it}
PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "docs/benchmarks.md": {
        "benchmark-example": example_file("examples/shapes_benchmark.py"),
        "mtlbenchmark-fields": mtlbenchmark_fields,
    },
    "docs/rl_zoo.md": {"zoo-first-update": zoo_first_update},
}


def fill(text: str, name: str, body: str) -> str:
    """``text`` with block ``name`` holding ``body``; one clear error if the page has no such block."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"the page has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def built(page: str) -> str:
    """The page with every generated block rebuilt."""
    text = (ROOT / page).read_text()
    for name, build in PAGES[page].items():
        text = fill(text, name, build())
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is not current")
    args = p.parse_args()
    stale = [page for page in PAGES if built(page) != (ROOT / page).read_text()]
    if args.check:
        if stale:
            raise SystemExit(f"not current: {', '.join(stale)}; run python scripts/docs_pages.py")
        return
    for page in stale:
        (ROOT / page).write_text(built(page))
        print(f"rewrote {page}")


if __name__ == "__main__":
    main()
