"""The results tables (:mod:`training_run.report.tables`, written into README and docs/results.md by
``python scripts/docs_pages.py``) come from results/ files: seeds are aggregated right, the headline picks
its runs by its rule, and an epoch is picked by validation, never by test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_run.report import speed, tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results_table():
    return tables


def _write_run(
    folder: Path,
    seed: int,
    accuracies: list[float],
    task_prior: float = 3.0,
    val: list[float] | None = None,
    usage: list[list[int]] | None = None,
    epochs: int = 100,
) -> None:
    folder.mkdir(parents=True)
    config = {
        "algo": "maskable_ppo",
        "seed": seed,
        "epochs": epochs,
        "device_name": "test card",
        "task_prior": task_prior,
        "env_config": {"duplicates": 10, "max_depth": 6, "bonus_weight": 0.1},
    }
    (folder / "config.json").write_text(json.dumps(config))
    records = [
        {
            "epoch": e,
            "test_accuracy": a,
            "test_balanced_accuracy": a,
            "unused_modules": 3,
            "wall_clock_s": 60.0 * (e + 1),
            "module_usage": usage or [[1, 1, 0], [1, 0, 1]],
            **({"val_accuracy": val[e]} if val else {}),
        }
        for e, a in enumerate(accuracies)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_tables_and_seed_aggregation(results_table, tmp_path: Path) -> None:
    results = tmp_path / "results"
    # test accuracy 0.2, 0.5, 0.4; validation peaks at epoch 2 (not the best test epoch 1)
    _write_run(results / "min" / "a_s0", 0, [0.2, 0.5, 0.4], val=[0.1, 0.3, 0.35])
    _write_run(results / "min" / "a_s1", 1, [0.3, 0.6], val=[0.5, 0.5])  # a tie: the earlier epoch
    _write_run(results / "min" / "single", 0, [0.25], task_prior=0.0)  # one seed: no seeds row

    table = results_table.results_table(results)
    setting = "LRN (maskable_ppo), d10 L6, bonus 0.1, terminal reward, plain Adam, task prior 3"
    assert f"| MIN-MTL | `a_s0` | {setting} | 40.00 | 40.00 | 40.00 (ep 2) |" in table
    assert f"| MIN-MTL | `a_s1` | {setting} | 60.00 | 60.00 | 30.00 (ep 0) |" in table
    assert "| 3/100 |" in table and "test card" in table
    assert "| 25.00 | 25.00 | - |" in table  # no validation split: no val-picked value, never the best test

    seeds = results_table.seeds_table(results).splitlines()
    assert len(seeds) == 3  # header, rule, one setting
    # last 40 / 60 -> 50 ± 14.14; val-picked 40 / 30 -> 35 ± 7.07; epochs reached 2 and 3
    assert seeds[2] == f"| MIN-MTL | {setting} | 0, 1 | 50.00 ± 14.14 | 35.00 ± 7.07 | 2-3 | 53.0 |"

    # runs planned for another length are another row, not more seeds of this one
    _write_run(results / "min" / "short_s0", 0, [0.1], epochs=3)
    _write_run(results / "min" / "short_s1", 1, [0.3], epochs=3)
    seeds = results_table.seeds_table(results).splitlines()
    assert len(seeds) == 4
    assert f"| MIN-MTL | {setting} | 0, 1 | 20.00 ± 14.14 | - | 1 | 53.0 |" in seeds
    assert seeds.count(f"| MIN-MTL | {setting} | 0, 1 | 50.00 ± 14.14 | 35.00 ± 7.07 | 2-3 | 53.0 |") == 1


def test_figures_only_where_every_run_exists(results_table, tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    _write_run(results / "min" / "a_s0", 0, [0.2, 0.5])
    _write_run(results / "min" / "a_s1", 1, [0.3, 0.6])
    monkeypatch.setattr(
        results_table,
        "FIGURES",
        [("min/both.png", ["min/a_s0", "min/a_s1"]), ("min/missing.png", ["min/a_s0", "min/absent"])],
    )
    assert results_table.figures(results) == [results / "min" / "both.png"]
    assert (results / "min" / "both.png").stat().st_size > 0
    assert not (results / "min" / "missing.png").exists()


def test_headline_cells_follow_their_rule(results_table, tmp_path: Path, monkeypatch) -> None:
    """A cell averages the runs of its first pattern that has any; the route statistics come from the last
    epoch's module_usage (runs without route-statistics keys); a benchmark without data reads "not run"."""
    results = tmp_path / "results"
    disjoint = [[1, 0, 0, 1], [0, 1, 0, 1]]  # module sets {0, 3} and {1, 3}: Jaccard 1/3, 1 shared module
    _write_run(results / "min" / "lrn_s0", 0, [0.2, 0.4], val=[0.5, 0.4], usage=disjoint)
    _write_run(results / "min" / "lrn_s1", 1, [0.3, 0.6], val=[0.1, 0.2], usage=[[1, 1, 1, 0], [1, 1, 1, 0]])
    _write_run(results / "min" / "old_static", 0, [0.7] * 5)  # no validation split, 5 of 100 epochs
    _write_run(results / "min" / "new_static_s0", 0, [0.1], task_prior=0.0)
    monkeypatch.setattr(
        results_table,
        "HEADLINE",
        {
            "cifar": ((), (), (), ()),
            "min": (("min/lrn_s*",), ("min/absent_s*", "min/old_static"), ("min/absent_s*",), ()),
        },
    )
    lrn, static, beyond, rn = results_table.headline_cells(results)["min"]
    assert lrn.last == pytest.approx([40.0, 60.0]) and lrn.picked == pytest.approx([20.0, 60.0])
    assert lrn.overlap == pytest.approx([1 / 3, 1.0]) and lrn.shared == [1, 3]
    assert static.pattern == "min/old_static" and static.picked == [] and beyond is None and rn is None

    table = results_table.headline_table(results).splitlines()
    assert table[2].startswith("| **CIFAR-MTL** | not run (no data here) |") and table[2].endswith(
        "70.0 / 60.0 |"
    )
    assert (
        table[3]
        == "| **MIN-MTL**: test acc %, last epoch | 50.0 ± 14.1 | 70.0 | not run | not run | 53.0 / 35.9 |"
    )
    assert table[4] == "| test acc %, val-picked epoch | 40.0 ± 28.3 | no val split | not run | not run |  |"
    assert table[5] == "| seeds × epochs | 2 × 2 of 100 | 1 × 5 of 100 | not run | not run | 100 epochs |"
    assert table[6] == "| route overlap / shared modules | 0.67 / 2 | 0.33 / 1 | not run | not run |  |"


def test_headline_verdict_says_by_how_much(results_table, tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "results"
    _write_run(results / "min" / "lrn_s0", 0, [0.48], val=[0.5])
    _write_run(results / "min" / "static_s0", 0, [0.45], val=[0.5])
    _write_run(results / "min" / "beyond_s0", 0, [0.56], val=[0.5])
    _write_run(results / "mnist" / "lrn_s0", 0, [0.97, 0.98], val=[0.5, 0.6])
    monkeypatch.setattr(
        results_table,
        "HEADLINE",
        {
            "mnist": (("mnist/lrn_s*",), (), (), ()),
            "min": (("min/lrn_s*",), ("min/static_s*",), ("min/beyond_s*",), ()),
        },
    )
    verdict = results_table.headline_verdict(results)
    assert "not reproduced" in verdict
    assert "on MIN-MTL our LRN ends 5.0 points below the paper's 53.0 % after 1 epochs" in verdict
    assert "beats it by 8.0 points" in verdict and "1.5 points below 99.5 % after 2 of" in verdict
    assert "--preset paper" not in verdict  # no paper-preset column: no clause

    _write_run(results / "min" / "paper_s0", 0, [0.2, 0.21], val=[0.2, 0.2])
    headline = dict(results_table.HEADLINE)
    headline["min"] = (*headline["min"], ("min/paper_s*",))
    monkeypatch.setattr(results_table, "HEADLINE", headline)
    verdict = results_table.headline_verdict(results)
    assert (
        "the paper's own setting (`--preset paper`) stays at 21.0 % on MIN-MTL (1 × 2 of 100 epochs)"
        in verdict
    )

    # MNIST-MTL's static networks join the verdict once both ran the paper's 100 epochs
    _write_run(results / "mnist" / "static_s0", 0, [0.996] * 100, val=[0.5] * 100)
    _write_run(results / "mnist" / "beyond_s0", 0, [0.999] * 99, val=[0.5] * 99)
    headline["mnist"] = (("mnist/lrn_s*",), ("mnist/static_s*",), ("mnist/beyond_s*",), ())
    assert "where the static network reaches" not in results_table.headline_verdict(results)  # 99 epochs
    _write_run(results / "mnist" / "beyond_s1", 1, [0.999] * 100, val=[0.5] * 100)
    headline["mnist"] = (("mnist/lrn_s*",), ("mnist/static_s*",), ("mnist/beyond_s1",), ())
    assert (
        "where the static network reaches 99.6 % and 99.9 % with the options (1 × 100 epochs each)"
        in results_table.headline_verdict(results)
    )


def _write_speed(
    results: Path,
    lrn: dict[str, float],
    static: dict[str, float],
    parallel3: dict[str, float],
    folder: str = speed.CURRENT,
    card: str = "test card",
    parallel_card: str | None = None,
) -> Path:
    """A speed.json (the default and a ``fast`` variant, with MIN-MTL runs of both) and a parallel3.json
    (``parallel3``: total episodes/s per group, ``"3"`` without MPS, ``"3+mps"`` with) as
    scripts/benchmark.py writes them, in ``results/folder``; the parallel runs use ``fast``'s settings."""
    out = results / folder
    out.mkdir(parents=True, exist_ok=True)  # the earlier lease's folder holds the newer one's

    def measure(name: str) -> dict:
        return {"lrn_epoch_seconds": lrn[name], "static_epoch_seconds": static[name],
                "lrn_over_static": lrn[name] / static[name],
                "lrn_episodes_per_second": 100_000 / lrn[name]}  # fmt: skip

    speed = {
        "device": card,
        "commit": "abc1234",
        **measure("default"),
        "variants": {"fast": {"settings": {"compile": True}, **measure("fast")}},
        "memory": {"min": {"epoch_seconds": 2.0, "peak_gpu_memory_gb": 1.0, "process_gpu_memory_gb": 2.0},
                   "min:compile=true": {"epoch_seconds": 1.2, "peak_gpu_memory_gb": 1.0,
                                        "process_gpu_memory_gb": 2.0}},
    }  # fmt: skip
    (out / "speed.json").write_text(json.dumps(speed))
    groups = {
        group: {"total_episodes_per_second": total, "per_run_episodes_per_second": total / 3,
                "epoch_seconds_per_run": 300_000 / total, "card_gb_per_run": 3.5,
                "mps": group.endswith("mps")}
        for group, total in parallel3.items()
    }  # fmt: skip
    parallel = {
        "device": parallel_card or card,
        "parallel": {"mnist": groups},
        "parallel_settings": ["compile=true"],
    }
    (out / "parallel3.json").write_text(json.dumps(parallel))
    return out


def test_speed_targets_take_each_side_at_its_fastest(tmp_path: Path) -> None:
    """The LRN/static target divides the fastest LRN by the fastest static network: an option that slows
    the static network (as compile did on an H200) must not meet the target by itself."""
    from training_run.report import speed

    _write_speed(tmp_path, {"default": 12.0, "fast": 6.0}, {"default": 1.5, "fast": 3.0}, {"3+mps": 25000.0})
    table = speed.targets_table(tmp_path)
    assert table.startswith("test card, code at `abc1234`")  # the card the verdicts read
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    ratio = next(line for label, line in rows.items() if label.startswith("LRN / static"))
    assert "4 (LRN fast / static default)" in ratio and "missed: 1.33x off" in ratio  # 6 / 1.5, not 2
    epoch = next(line for label, line in rows.items() if label.startswith("LRN MNIST-MTL epoch"))
    assert "6 (fast)" in epoch and "missed: 1.20x off" in epoch
    assert (
        "1.2 (fast)" in rows["MIN-MTL d10 L6 LRN epoch, s"] and "met" in rows["MIN-MTL d10 L6 LRN epoch, s"]
    )
    three = next(line for label, line in rows.items() if label.startswith("three"))
    assert "25000 (MPS, `compile=true`)" in three and three.rstrip(" |").endswith("met")
    options = speed.options_table(tmp_path)
    assert "fast (`compile=true`)" in options and "| 2.00 | 1.20 |" in options  # MIN-MTL per column


def test_speed_tables_read_one_lease_and_never_mix_cards(tmp_path: Path) -> None:
    """Each table reads one folder (one lease, one card): the newest folder's verdicts ignore a faster
    earlier card, the earlier folder renders on its own, the best of MPS / no MPS counts, and a parallel
    file of another card gets no ratio against the speed file's single run."""
    from training_run.report import speed

    _write_speed(tmp_path, {"default": 12.0, "fast": 8.0}, {"default": 2.0, "fast": 2.0},
                 {"3": 18000.0, "3+mps": 15000.0})  # fmt: skip
    _write_speed(tmp_path, {"default": 3.0, "fast": 2.0}, {"default": 1.0, "fast": 1.0}, {"3": 30000.0},
                 folder=speed.EARLIER, card="earlier card", parallel_card="third card")  # fmt: skip
    current = speed.targets_table(tmp_path)
    assert "test card" in current and "earlier card" not in current
    assert "8 (fast)" in current and "18000 (no MPS, `compile=true`)" in current  # no MPS won here
    earlier = speed.targets_table(tmp_path, speed.EARLIER)
    assert "earlier card" in earlier and "2 (fast)" in earlier and "met" in earlier
    assert "earlier card" in speed.options_table(tmp_path, speed.EARLIER)
    # a MIN-MTL run whose settings no column has still counts for the MIN-MTL target, named by its own
    speed_json = tmp_path / speed.CURRENT / "speed.json"
    report = json.loads(speed_json.read_text())
    report["memory"]["min:precision=bf16"] = {"epoch_seconds": 1.1}
    speed_json.write_text(json.dumps(report))
    assert "1.1 (`min:precision=bf16`) | met" in speed.targets_table(tmp_path)

    lines = speed.parallel_table(tmp_path).splitlines()
    assert "test card" in lines[0] and "`compile=true`" in lines[0]
    # one run alone of `compile=true` does 100,000 / 8 episodes/s: 18000 and 15000 are 1.44x and 1.20x of it
    assert lines[4] == "| mnist | 3 | off | 18000 | 6000 | 16.7 | 3.5 | 1.44x |"
    assert lines[5] == "| mnist | 3 | on | 15000 | 5000 | 20.0 | 3.5 | 1.20x |"
    other = speed.parallel_table(tmp_path, speed.EARLIER)
    assert "third card" in other and other.splitlines()[-1].endswith("| - |")  # no ratio across cards
    assert "three MNIST-MTL" in earlier and "| - | not measured |" in earlier.splitlines()[-1]


def _profile_text(rows: list[tuple[str, float, int]], total_ms: float) -> str:
    """A torch-profiler table as ``key_averages().table()`` writes it on a GPU: fixed-width columns (names
    right-aligned, cut to 55 characters and ended with ``...``, a title one character wider than its
    dashes), the CPU columns zero, then the totals."""
    widths = [55, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12]
    titles = ["Name", "Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg", "Self CUDA",
              "Self CUDA %", "CUDA total", "CUDA time avg", "# of Calls"]  # fmt: skip
    rule = "  ".join("-" * w for w in widths) + "  "

    def line(cells: list[str]) -> str:
        return "".join(c.rjust(w) + "  " for c, w in zip(cells, widths))

    lines = [rule, line(titles), rule]
    for name, share, calls in rows:
        name = name if len(name) <= 55 else name[:52] + "..."
        ms = share * total_ms
        cuda = [f"{ms:.3f}ms", f"{100 * share:.2f}%", f"{ms:.3f}ms", f"{1000 * ms / calls:.3f}us", str(calls)]
        lines.append(line([name, "0.00%", "0.000us", "0.00%", "0.000us", "0.000us", *cuda]))
    lines += [rule, "Self CPU time total: 1.000ms", f"Self CUDA time total: {total_ms:.3f}ms", ""]
    return "\n".join(lines)


def test_profile_tables_parse_the_torch_profiler_text(tmp_path: Path) -> None:
    """docs/speed.md's profile block: the top kernels of the fast and the default profile side by side, read
    from the profiler's fixed-width text (names with spaces, cut with ``...``), with launches per batch
    (10 batches profiled), and a verdict naming the top kernel, its share and launches from the files."""
    from training_run.report import speed

    folder = tmp_path / speed.H100
    folder.mkdir(parents=True)
    conv = "sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nchwkcrs_nchw_kernel_with_a_long_tail"
    adam = "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<TensorListMetadata<4>, X>(Y)"
    flash = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7"
    fast = [(conv, 0.4286, 5120), (adam, 0.1070, 640), (flash, 0.0307, 240)]
    default = [(adam, 0.30, 640), (conv, 0.2546, 5120)]
    (folder / "profile_fast_torch_profile.txt").write_text(_profile_text(fast, 163.753))
    (folder / "profile_torch_profile.txt").write_text(_profile_text(default, 255.77))
    settings = {"batch_size": "128", "profile_set": "['compile=true', 'router.precision=bf16']"}
    (folder / "profile_fast.json").write_text(json.dumps({"device": "test card", "settings": settings}))
    # --set does not reach the profile: the default profile's setting is read from profile_set alone
    default_settings = {"batch_size": "128", "set": "['compile=true']"}
    (folder / "profile.json").write_text(json.dumps({"device": "test card", "settings": default_settings}))

    rows, total = speed.read_torch_profile(folder / "profile_fast_torch_profile.txt")
    assert [r["name"] for r in rows] == [conv[:52] + "...", adam[:52] + "...", flash[:52] + "..."]
    assert [r["calls"] for r in rows] == [5120, 640, 240] and rows[0]["share"] == pytest.approx(0.4286)
    assert total == pytest.approx(163.753)

    lines = speed.profile_table(tmp_path, top=3).splitlines()
    assert (
        "test card" in lines[0]
        and "16.4 ms with `compile=true router.precision=bf16`, 25.6 ms with `default`" in lines[0]
    )
    assert "`compile=true router.precision=bf16`: kernel" in lines[2] and "`default`: kernel" in lines[2]
    # "void " and the anonymous namespace go; the profiler's cut stays
    assert lines[4] == f"| 1 | `{conv[:52]}...` | 42.9 | 512 | `at::native::multi_tensor...` | 30.0 | 64 |"
    assert lines[5].endswith(f"| `{conv[:52]}...` | 25.5 | 512 |")
    assert lines[6].endswith("| - | - | - |")  # the default profile has two kernels only

    cpu = folder.parent / "cpu_torch_profile.txt"
    cpu.write_text(_profile_text(fast, 1.0).replace("Self CUDA %", "  Self CPU2"))
    with pytest.raises(SystemExit, match="no Self CUDA % column"):
        speed.read_torch_profile(cpu)

    verdict = speed.profile_verdict(tmp_path)
    assert (
        "no tensor-core kernel" in verdict and "42.9 % of the GPU time and 512 launches per batch" in verdict
    )
    assert "4 per episode of a 128-episode batch" in verdict and "`gathered` convolution" in verdict
    assert "with `default` the same kernel is number 2, at 25.5 %" in verdict
    (folder / "profile_fast_torch_profile.txt").write_text(_profile_text([(flash, 0.5, 240)], 10.0))
    assert "`gathered`" not in speed.profile_verdict(tmp_path)  # a tensor-core attention kernel on top


def test_min_mechanism_check_compares_with_the_static_network(tmp_path: Path) -> None:
    """docs/training.md's MIN-MTL check: each setting's last-epoch accuracy against the static network's,
    with the last epoch's route statistics, mean over the seeds of its folders."""
    from training_run.report.mechanisms import min_check_table

    for stem, accuracy, routes in (("mech-static", 0.5, 1.0), ("mech-upcycle", 0.45, 2.0)):
        for seed in (0, 1):
            folder = tmp_path / "min" / f"{stem}_s{seed}"
            _write_run(folder, seed, [0.1, accuracy + 0.02 * seed], val=[0.3, 0.2])
            records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            for r in records:
                r.update(
                    routes_per_task=routes, route_entropy_bits=routes - 1, route_overlap=0.5, unused_modules=3
                )
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = min_check_table(tmp_path).splitlines()
    assert (
        len(lines) == 4 and lines[2].startswith("| `mech-static`") and lines[3].startswith("| `mech-upcycle`")
    )
    # last epochs 50 / 52 against 45 / 47: -5.0; the validation split picks epoch 0 (10 %) in each
    assert (
        "| test card | 2 | 46.0 ± 1.4 | 10.0 ± 0.0 | -5.0 | 2.0 ± 0.0 | 1.00 ± 0.00 | 0.50 ± 0.00 | 3 ± 0 |"
        in lines[3]
    )


def test_min_mechanism_check_names_the_instance_prior_and_each_rows_card(tmp_path: Path) -> None:
    """The instance prior with the per-task bonus (``mech-iprior_task``) is a row of the MIN-MTL check, its
    setting in words names both, and each row names the card its runs trained on (a later lease's rows
    stand beside the static network of an earlier one)."""
    import dataclasses

    from training_run.report.mechanisms import min_check_table
    from training_run.settings import RunConfig

    for stem, card, settings in (
        ("mech-static", "card A", {"run.algo": "static"}),
        ("mech-iprior_task", "card B", {"router.instance_prior_std": 1.0, "env.bonus_scope": "task"}),
    ):
        folder = tmp_path / "min" / f"{stem}_s0"
        _write_run(folder, 0, [0.1, 0.5 if stem == "mech-static" else 0.3])
        config = {**dataclasses.asdict(RunConfig.from_settings(settings)), "device_name": card}
        (folder / "config.json").write_text(json.dumps(config, default=str))  # the run's paths as text
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for r in records:
            r.update(routes_per_task=49.0, route_entropy_bits=5.6, route_overlap=0.8, unused_modules=10)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = min_check_table(tmp_path).splitlines()
    assert "| card |" in lines[0] and "| card A | 1 | 50.0 |" in lines[2]
    iprior = lines[3]
    assert iprior.startswith("| `mech-iprior_task`: LRN") and "instance prior 1 (4x4 grid)" in iprior
    assert "bonus per task" in iprior and "| card B | 1 | 30.0 | - | -20.0 | 49.0 |" in iprior
