"""The pages in docs/: their generated blocks are what scripts/docs_pages.py builds from the code and
results/ (nobody edited them by hand), and the RL Zoo timings are of the files as shipped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docs_pages():
    return script("docs_pages")


def test_committed_pages_are_current(docs_pages) -> None:
    for page in docs_pages.PAGES:
        assert docs_pages.built(page) == (ROOT / page).read_text(), (
            f"run python scripts/docs_pages.py ({page})"
        )


def test_benchmarks_page_embeds_the_example_and_readme_links_it(docs_pages) -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert (ROOT / "examples" / "shapes_benchmark.py").read_text().rstrip() in page
    assert "* `data_folder`: where the loader read the data" in page  # MTLBenchmark's docstring, as a list
    readme = (ROOT / "README.md").read_text()
    assert "(docs/benchmarks.md)" in readme and "benchmark-example" not in readme


def test_a_page_without_its_block_is_one_clear_error(docs_pages) -> None:
    with pytest.raises(SystemExit, match="no <!-- zoo-first-update:begin -->"):
        docs_pages.fill("no block here", "zoo-first-update", "body")


def test_zoo_timings_are_of_the_shipped_files(docs_pages) -> None:
    time_zoo = script("time_zoo")
    assert docs_pages.ZOO_TIMES[0].is_file()  # the CPU's; a GPU's where measured
    for path in (p for p in docs_pages.ZOO_TIMES if p.is_file()):
        results = json.loads(path.read_text())
        assert sorted(results["files"]) == time_zoo.zoo_algos(), path
        for algo, record in results["files"].items():
            rerun = f"{algo}.yml changed since it was timed: python scripts/time_zoo.py --algos {algo}"
            assert record["file_sha1"] == time_zoo.file_sha1(algo), (path, rerun)
            assert record["finished"], f"{path}: {algo}.yml's first update did not finish ({record['error']})"
