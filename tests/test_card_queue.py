"""scripts/card_queue.py: runs start in list order where they fit under the card's budget, and a run too
big for the card is refused before anything starts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _card_queue():
    spec = importlib.util.spec_from_file_location("card_queue", ROOT / "scripts" / "card_queue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_start_in_order_where_they_fit() -> None:
    admit = _card_queue().admit
    jobs = [
        {"name": n, "gb": gb}
        for n, gb in [("lrn0", 20), ("lrn1", 20), ("lrn2", 20), ("static0", 5), ("rn0", 14)]
    ]
    assert [j["name"] for j in admit(jobs, 0, 78)] == ["lrn0", "lrn1", "lrn2", "static0"]
    assert [j["name"] for j in admit(jobs[3:], 60, 78)] == ["static0"]  # rn0 waits: 60 + 5 + 14 > 78
    assert [j["name"] for j in admit(jobs[4:], 60, 78)] == ["rn0"]
    assert admit(jobs, 70, 78) == [jobs[3]]  # a later, smaller run passes a waiting larger one


def test_a_run_larger_than_the_budget_is_refused(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"name": "huge", "gb": 100, "args": ["--help"]}]))
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "card_queue.py"),
            str(jobs),
            "--budget-gb",
            "78",
            "--logs",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode != 0 and "huge need more than the budget of 78 GB" in proc.stderr
    assert not (tmp_path / "huge.log").exists()
