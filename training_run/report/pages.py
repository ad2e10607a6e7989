"""The generated blocks of README.md and the pages in docs/ (``<!-- NAME:begin -->`` ...
``<!-- NAME:end -->``), each filled from the code it mirrors (a docstring, the configuration dataclasses,
the algorithm registry, an example file) or from results/ (:mod:`training_run.report.tables`). One
mechanism for every page: :data:`PAGES` says which blocks a page has and what fills each; :func:`built` is
a page with its blocks rebuilt; the figures the results page shows are redrawn beside them.

    python scripts/docs_pages.py            # rewrite every stale page, redraw the figures
    python scripts/docs_pages.py --check    # change nothing; exit 1 naming every page that is not current
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.algorithms import SB3_SETUPS
from routing_env.config import RoutingConfig
from training_run.cli import FLAGS, NO_BONUS_HELP, RESUME_HELP, default_text, field_docs
from training_run.report import speed, tables
from training_run.report.mechanisms import mechanism_verdict, mechanisms_table, min_check_table
from training_run.settings import PRESETS, flag_of

ROOT = Path(__file__).resolve().parents[2]


def markdown(text: str, cell: bool = False) -> str:
    """Docstring markup as markdown: double backticks and Sphinx roles become single backticks; in a
    table ``cell``, a ``|`` is escaped."""
    text = re.sub(r":\w+:`~?", "`", text.replace("``", "`"))
    return text.replace("|", "\\|") if cell else text


def example_file(path: str) -> Callable[[Path], str]:
    """A block that embeds the file at ``path`` (relative to the repository) as a Python code block."""
    return lambda _results: "```python\n" + (ROOT / path).read_text().rstrip() + "\n```"


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


def mtlbenchmark_fields(_results: Path) -> str:
    """``MTLBenchmark``'s fields as a list, from its docstring."""
    from routing_env.benchmarks import MTLBenchmark

    return "\n".join(f"* `{name}`: {markdown(text)}" for name, text in attributes(MTLBenchmark).items())


def env_docstring(_results: Path) -> str:
    """``RoutingEnv``'s docstring (Gymnasium's sections: description, spaces, rewards, ...) as the page."""
    from routing_env.env import RoutingEnv

    summary, _, body = inspect.getdoc(RoutingEnv).partition("\n")
    body = re.sub(r"^## ", "### ", markdown(body), flags=re.M)  # the page's sections hold them
    return f"{markdown(summary)}\n{body.rstrip()}"


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def env_kwargs_table(_results: Path) -> str:
    """Every env kwarg (``RoutingConfig``), its default and meaning."""
    docs = field_docs(RoutingConfig)
    rows = [
        [f"`{f.name}`", f"`{_default(f)}`", markdown(docs[f.name], cell=True)]
        for f in dataclasses.fields(RoutingConfig)
    ]
    return tables.markdown_table(["kwarg", "default", "meaning"], rows)


def presets_table(_results: Path) -> str:
    """What each ``--preset`` sets (before the flags, which override it)."""
    rows = [
        [f"`{name}`", ", ".join(f"`{flag_of(k)} {v}`" for k, v in settings.items())]
        for name, settings in PRESETS.items()
    ]
    return tables.markdown_table(["preset", "settings (flag value)"], rows)


def flags_table(_results: Path) -> str:
    """Every train.py flag, its default under the default preset (the field's beside it where they
    differ) and meaning (as ``training_run.cli`` generates them)."""
    rows = []
    for flag in FLAGS:
        option = "--[no-]" + flag.option[2:] if flag.parse is bool else flag.option
        default = default_text(flag, code=lambda text: f"`{text}`")
        rows.append([f"`{option}`", default, markdown(flag.doc, cell=True)])
    rows.append(["`--no-bonus`", "off", NO_BONUS_HELP.replace("--bonus-weight 0", "`--bonus-weight 0`")])
    rows.append(["`--resume`", "off", RESUME_HELP.replace("--out", "`--out`")])
    return tables.markdown_table(["flag", "default", "meaning"], rows)


def algorithms_table(_results: Path) -> str:
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
    return tables.markdown_table(header, rows)


def param_docs(obj: Any) -> dict[str, str]:
    """The ``:param name: text`` entries of a docstring, ``{name: text}`` (continuation lines joined)."""
    entries: dict[str, str] = {}
    name = None
    for line in inspect.getdoc(obj).splitlines():
        head = re.match(r"^:param (\w+): (.*)$", line)
        if head:
            name = head.group(1)
            entries[name] = head.group(2)
        elif name and line.startswith("    "):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


# RouterPolicy's arguments that SB3 itself passes (not a user's policy_kwargs).
SB3_PASSES = ("self", "observation_space", "action_space", "lr_schedule", "use_sde")


def router_policy_table(_results: Path) -> str:
    """``RouterPolicy``'s keyword arguments (``policy_kwargs``), from its signature and docstring, then the
    router's architecture it takes as ``**router_kwargs`` (``RouterConfig``'s fields), each with its
    train.py flag."""
    from agents.config import RouterConfig
    from agents.policy import RouterPolicy

    docs = param_docs(RouterPolicy)
    rows = []
    for name, param in inspect.signature(RouterPolicy.__init__).parameters.items():
        if name in SB3_PASSES or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        default = getattr(param.default, "__name__", repr(param.default))  # a class by its name
        rows.append([f"`{name}`", f"`{default}`", "", markdown(docs[name], cell=True)])
    router_docs = field_docs(RouterConfig)
    for f in dataclasses.fields(RouterConfig):
        flag = f"`{flag_of('router.' + f.name)}`"
        rows.append([f"`{f.name}`", f"`{_default(f)!r}`", flag, markdown(router_docs[f.name], cell=True)])
    return tables.markdown_table(["keyword", "default", "train.py flag", "meaning"], rows)


# page (relative to the repository) -> {block name -> what fills it, from the results folder}
PAGES: dict[str, dict[str, Callable[[Path], str]]] = {
    "README.md": {
        "headline-table": tables.headline_table,
        "headline-verdict": tables.headline_verdict,
        "cpu-first-run": tables.cpu_first_run_table,
        "probes-verdict": tables.probes_verdict,
        "mechanism-verdict": mechanism_verdict,
    },
    "docs/environment.md": {
        "env-docstring": env_docstring,
        "env-kwargs": env_kwargs_table,
        "evaluate-example": example_file("examples/evaluate_run.py"),
        "checkpoint-sizes": tables.checkpoint_sizes,
    },
    "docs/benchmarks.md": {
        "benchmark-example": example_file("examples/shapes_benchmark.py"),
        "mtlbenchmark-fields": mtlbenchmark_fields,
    },
    "docs/algorithms.md": {"algorithms-table": algorithms_table, "router-policy-table": router_policy_table},
    "docs/training.md": {
        "presets-table": presets_table,
        "flags-table": flags_table,
        "checkpoint-sizes": tables.checkpoint_sizes,
        "mechanisms-table": mechanisms_table,
        "mechanisms-min-table": min_check_table,
    },
    "docs/results.md": {
        "results-table": tables.results_table,
        "seeds-table": tables.seeds_table,
        "ablation-table": tables.ablation_table,
        "ablation20-table": lambda results: tables.ablation_table(results, tables.ABLATION_20),
        "probes-table": tables.probes_table,
        "probes-verdict": tables.probes_verdict,
        "mechanism-verdict": mechanism_verdict,
    },
    "docs/speed.md": {
        "bench-table": tables.bench_table,
        "speed-targets": speed.targets_table,
        "speed-options": speed.options_table,
        "speed-parallel": speed.parallel_table,
        "speed-targets-h100": lambda results: speed.targets_table(results, speed.H100),
        "speed-options-h100": lambda results: speed.options_table(results, speed.H100),
        "speed-parallel-h100": lambda results: speed.parallel_table(results, speed.H100),
        "speed-targets-earlier": lambda results: speed.targets_table(results, speed.EARLIER),
        "speed-options-earlier": lambda results: speed.options_table(results, speed.EARLIER),
        "speed-parallel-earlier": lambda results: speed.parallel_table(results, speed.EARLIER),
        "bank-steps": lambda results: speed.banks_table(results, speed.EARLIER),
        "profile-top": speed.profile_table,
        "profile-verdict": speed.profile_verdict,
    },
    "docs/rl_zoo.md": {"zoo-first-update": tables.zoo_tables},
}


def fill(text: str, name: str, body: str) -> str:
    """``text`` with block ``name`` holding ``body``; one clear error if the page has no such block."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"the page has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def built(page: str, root: Path = ROOT) -> str:
    """The page (a key of :data:`PAGES`) under ``root`` with every generated block rebuilt from
    ``root``'s code and results/."""
    text = (root / page).read_text()
    for name, build in PAGES[page].items():
        try:
            text = fill(text, name, build(root / "results"))
        except SystemExit as e:
            raise SystemExit(f"{page}: {e}") from None
    return text


def stale_pages(root: Path = ROOT) -> list[str]:
    """The pages whose generated blocks are not what :func:`built` makes."""
    return [page for page in PAGES if built(page, root) != (root / page).read_text()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is not current")
    args = p.parse_args()
    stale = stale_pages()
    if args.check:
        if stale:
            raise SystemExit(f"not current: {', '.join(stale)}; run python scripts/docs_pages.py")
        return
    for page in stale:
        (ROOT / page).write_text(built(page))
        print(f"rewrote {page}")
    for path in tables.figures(ROOT / "results"):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
