"""README and the pages in docs/: every generated block is what ``python scripts/docs_pages.py`` builds from
the code and results/ (nobody edited one by hand, and no flag, kwarg or algorithm is missing), README
links the pages, and the RL Zoo timings are of the files as shipped."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from training_run.report import pages, tables

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_pages_are_current() -> None:
    assert "README.md" in pages.PAGES and len(pages.PAGES) >= 8
    for page in pages.PAGES:
        assert pages.built(page) == (ROOT / page).read_text(), f"run python scripts/docs_pages.py ({page})"


def test_check_names_a_stale_page_and_rewriting_makes_it_current(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "training.md").write_text(
        "# T\n<!-- presets-table:begin -->\nstale text\n<!-- presets-table:end -->\n"
        "<!-- flags-table:begin -->\n<!-- flags-table:end -->\n"
        "<!-- mechanisms-table:begin -->\n<!-- mechanisms-table:end -->\n"
    )
    blocks = {
        k: v for k, v in pages.PAGES["docs/training.md"].items() if k in ("presets-table", "flags-table")
    }
    monkeypatch.setattr(pages, "PAGES", {"docs/training.md": blocks})  # blocks from the code, not results/
    assert pages.stale_pages(tmp_path) == ["docs/training.md"]
    text = pages.built("docs/training.md", tmp_path)
    assert "| `best` |" in text and "| `--preset` |" in text and "stale text" not in text
    (tmp_path / "docs" / "training.md").write_text(text)
    assert pages.stale_pages(tmp_path) == []


def test_a_page_without_its_block_is_one_clear_error() -> None:
    with pytest.raises(SystemExit, match="no <!-- zoo-first-update:begin -->"):
        pages.fill("no block here", "zoo-first-update", "body")


def test_readme_is_a_front_page_that_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    linked = set(re.findall(r"\((docs/[\w.]+\.md)\)", readme))
    assert linked == {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert "(CHANGELOG.md)" in readme and (ROOT / "CHANGELOG.md").is_file()
    # the commands CI runs (.ci/run) are README's
    assert "pip install -e '.[test,sweep]' && pytest" in readme
    assert "pip install -e . && python train.py --env RoutingMNIST-v0" in readme
    picture = re.search(r"!\[[^]]*\]\((results/[\w./-]+\.png)\)", readme)
    assert picture and (ROOT / picture.group(1)).is_file()


def test_benchmarks_page_embeds_the_example() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert (ROOT / "examples" / "shapes_benchmark.py").read_text().rstrip() in page
    assert "* `data_folder`: where the loader read the data" in page  # MTLBenchmark's docstring, as a list


def test_environment_page_is_the_env_docstring() -> None:
    page = (ROOT / "docs" / "environment.md").read_text()
    assert "### Action space\n`Discrete(n_modules + 1)`" in page  # Gymnasium's sections, as markdown
    assert "``" not in page.split("<!-- env-docstring:begin -->")[1].split("<!-- env-docstring:end -->")[0]


def test_zoo_timings_are_of_the_shipped_files() -> None:
    time_zoo = script("time_zoo")
    paths = [ROOT / "results" / name for name in tables.ZOO_TIMES]
    assert paths[0].is_file()  # the CPU's; a GPU's where measured
    for path in (p for p in paths if p.is_file()):
        results = json.loads(path.read_text())
        assert sorted(results["files"]) == time_zoo.zoo_algos(), path
        for algo, record in results["files"].items():
            rerun = f"{algo}.yml changed since it was timed: python scripts/time_zoo.py --algos {algo}"
            assert record["file_sha1"] == time_zoo.file_sha1(algo), (path, rerun)
            assert record["finished"], f"{path}: {algo}.yml's first update did not finish ({record['error']})"


def test_docs_list_every_router_policy_keyword() -> None:
    """docs/algorithms.md's RouterPolicy table holds every keyword a user may pass in ``policy_kwargs``:
    the policy's own (its signature, less what SB3 passes) and the router's architecture."""
    import dataclasses
    import inspect

    from agents.config import RouterConfig
    from agents.policy import RouterPolicy

    own = [
        name
        for name, p in inspect.signature(RouterPolicy.__init__).parameters.items()
        if name not in pages.SB3_PASSES and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    table = pages.router_policy_table(ROOT / "results")
    for name in [*own, *(f.name for f in dataclasses.fields(RouterConfig))]:
        assert f"| `{name}` |" in table, name
    assert "| `task_prior_std` | `0.0` | `--task-prior-std` |" in table
    assert "<!-- router-policy-table:begin -->" in (ROOT / "docs" / "algorithms.md").read_text()
