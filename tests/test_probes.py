"""The probe benchmarks (routing_env/benchmarks/probes.py): they load with their kinds of instance and an
oracle routing valid under the action mask, the router-alone probe's table loss scores exactly the oracle
routes as right, the route statistics measure routes against the oracle, the router learns the
router-alone probe, and the fixed-route baselines train."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from datagen import real_data_root, requires_real_data
from test_train import read_metrics, run_main

from agents.route_stats import oracle_statistics, routes_by_group
from routing_env import RoutingConfig, make_engine
from routing_env.benchmarks import load_benchmark
from routing_env.benchmarks.probes import transform
from routing_env.build import holdout
from routing_env.oracle_route import invalid_routes
from routing_env.registration import benchmark_of
from routing_env.rules import RouteRules
from training_run import evaluate

SMALL = {"per_digit": 20, "test_per_digit": 5}  # the fake MNIST has 25 test images per digit


@pytest.mark.parametrize(
    "env_id, n_tasks, n_kinds",
    [("RoutingProbeRouter-v0", 2, 2), ("RoutingProbeShare-v0", 4, 1), ("RoutingProbeKinds-v0", 2, 3)],
)
def test_a_probe_loads_with_kinds_and_a_valid_oracle(
    fake_data_root: Path, env_id: str, n_tasks: int, n_kinds: int
) -> None:
    name = benchmark_of(env_id)
    bench = load_benchmark(name, fake_data_root, **SMALL)
    assert (bench.n_tasks, bench.n_kinds, bench.n_classes) == (n_tasks, n_kinds, 10)
    kinds_held = 1 if n_kinds == 1 else n_kinds  # the share probe: one kind per task, no kinds tensor
    assert len(bench.train) == n_tasks * kinds_held * 10 * SMALL["per_digit"]
    assert len(bench.test) == n_tasks * kinds_held * 10 * SMALL["test_per_digit"]
    assert bench.train.images.shape[1:] == (1, 28, 28) and bench.train.images.dtype == torch.uint8
    assert (bench.train.kinds is None) == (n_kinds == 1)
    # Every pair's image is its source digit under its kind's transformation.
    from routing_env.benchmarks import mnist

    source, _ = mnist._read(fake_data_root, train=True)
    kinds = bench.train.kinds if bench.train.kinds is not None else torch.zeros_like(bench.train.tasks)
    for k, kind_name in enumerate(bench.kind_names or ["identity"]):
        rows = (kinds == k).nonzero().flatten()[:7]
        expected = transform(source[bench.train.source_index[rows]], kind_name)
        assert torch.equal(bench.train.images[bench.train.image_index[rows], 0], expected)
    # The kinds survive subsets, the validation split, moves and pickling.
    val = holdout(bench.train, 0.1, 0, val=True)
    for split in (val, bench.train.to("cpu"), pickle.loads(pickle.dumps(bench.train))):
        if bench.train.kinds is not None:
            assert split.kinds is not None and split.kinds.shape == split.tasks.shape
    # The oracle routing holds for the settings the probes run with, and for longer routes.
    for max_depth in (5, 7):
        engine, _ = make_engine(
            RoutingConfig(
                benchmark=name,
                benchmark_kwargs=SMALL,
                data_root=fake_data_root,
                duplicates=4,
                max_depth=max_depth,
                device="cpu",
            )
        )
        routes = engine.oracle_routes
        assert routes.shape == (n_tasks, n_kinds, max_depth)
        assert invalid_routes(engine.pool, routes.flatten(0, 1), max_depth) == []
        assert torch.unique(routes.flatten(0, 1), dim=0).shape[0] > 1  # the oracle routes differ
    # Its tasks end in heads of their own, so the oracle holds with --task-heads too; one that ends a task in
    # another's head is one clear error there.
    config = RoutingConfig(
        benchmark=name, benchmark_kwargs=SMALL, data_root=fake_data_root, duplicates=4, max_depth=5,
        device="cpu", task_heads=True,
    )  # fmt: skip
    engine, _ = make_engine(config)
    swapped = engine.oracle_routes.clone()
    swapped[..., -1] = swapped[..., -1].roll(1, dims=0)  # task t ends in task t - 1's head
    with pytest.raises(ValueError, match="another's head"):
        RouteRules(engine.pool, 5, torch.device("cpu"), n_tasks, swapped)


def test_an_oracle_that_does_not_fit_the_pool_is_one_clear_error(fake_data_root: Path) -> None:
    config = RoutingConfig(
        benchmark="probe_kinds", benchmark_kwargs=SMALL, data_root=fake_data_root, device="cpu"
    )
    with pytest.raises(ValueError, match="duplicates >= 3"):
        make_engine(config.replace(duplicates=2, max_depth=5))
    with pytest.raises(ValueError, match="max_depth >= 5"):
        make_engine(config.replace(duplicates=3, max_depth=4))
    with pytest.raises(ValueError, match="oracle routing"):
        make_engine(
            RoutingConfig(benchmark="mnist", data_root=fake_data_root, device="cpu", loss_source="oracle")
        )


def test_the_table_loss_is_zero_exactly_on_oracle_routes(fake_data_root: Path) -> None:
    config = RoutingConfig(
        benchmark="probe_router", benchmark_kwargs=SMALL, data_root=fake_data_root, duplicates=2, max_depth=5,
        device="cpu", loss_source="oracle", bonus_weight=0.0, batch_size=64,
    )  # fmt: skip
    engine, _ = make_engine(config)
    before = [p.detach().clone() for p in engine.pool.parameters()]
    for wrong_step in (None, 0, 3):
        engine.begin_batch()
        oracle = engine.oracle_routes[engine.tasks, engine.kinds]  # (B, D)

        def choose(
            k: int, obs: dict, oracle: torch.Tensor = oracle, wrong_step: int | None = wrong_step
        ) -> torch.Tensor:
            if k != wrong_step:
                return oracle[:, k]
            valid = obs["action_mask"].bool() & (torch.arange(engine.pool.n_actions) != oracle[:, k : k + 1])
            return valid.float().argmax(1)  # another valid action

        out = engine.play(choose)
        loss = out.final["loss"]
        if wrong_step is None:
            assert torch.equal(loss, torch.zeros_like(loss)) and bool(out.final["correct"].all())
        else:
            assert bool((loss >= 1 / 5 - 1e-6).all()) and not bool(out.final["correct"].any())
            step_rewards = out.final["step_rewards"]  # the wrong step is charged where it happened
            assert bool((step_rewards[:, wrong_step] <= -1 / 5 + 1e-6).all())
    # No module ran or trained.
    assert all(torch.equal(a, b) for a, b in zip(before, engine.pool.parameters()))


def test_oracle_statistics_on_hand_made_routes() -> None:
    oracle = torch.tensor([[[0, 2, 4], [1, 3, 4]], [[0, 3, 5], [1, 2, 5]]])  # (T=2, K=2, D=3)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    kinds = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    exact = oracle[tasks, kinds]
    stats = oracle_statistics(exact, tasks, kinds, oracle, n_tasks=2, n_modules=6)
    assert stats["oracle_route_rate"] == 1.0 and stats["oracle_overlap"] == 1.0
    assert stats["route_kind_information"] == pytest.approx(1.0)  # the route tells the kind
    # Every task's module set is {0, 1, 2, 3} plus its head: the oracle's own task-pair overlap is 4/6.
    assert stats["oracle_route_overlap"] == pytest.approx(4 / 6)
    constant = oracle[tasks, torch.zeros_like(kinds)]  # kind 0's route for every pair
    stats = oracle_statistics(constant, tasks, kinds, oracle, n_tasks=2, n_modules=6)
    assert stats["oracle_route_rate"] == 0.5 and stats["route_kind_information"] == 0.0
    assert stats["oracle_overlap"] == pytest.approx(3 / 5)  # {0, 2|3, head} of {0, 1, 2, 3, head}
    no_kinds = oracle_statistics(constant, tasks, None, oracle[:, :1], n_tasks=2, n_modules=6)
    assert no_kinds["oracle_route_rate"] == 1.0 and "route_kind_information" not in no_kinds
    assert math.isfinite(no_kinds["oracle_route_overlap"])


def test_routes_by_group_give_each_task_and_kind_its_most_common_route() -> None:
    routes = torch.tensor([[0, 2], [0, 2], [1, 2], [1, 3], [1, 3], [0, 3]])  # (N=6, D=2)
    tasks = torch.tensor([0, 0, 0, 0, 0, 1])
    kinds = torch.tensor([0, 0, 0, 1, 1, 0])
    correct = torch.tensor([True, False, True, True, True, False])
    groups = routes_by_group(routes, tasks, kinds, correct, n_tasks=2, n_kinds=2)
    assert [(g["task"], g["kind"]) for g in groups] == [(0, 0), (0, 1), (1, 0)]  # (1, 1) has no pairs
    first = groups[0]
    assert first["pairs"] == 3 and first["routes"] == 2 and first["route"] == [0, 2]
    assert first["route_share"] == pytest.approx(2 / 3) and first["accuracy"] == pytest.approx(2 / 3)
    assert groups[1]["route"] == [1, 3] and groups[1]["route_share"] == 1.0 and groups[1]["accuracy"] == 1.0


def probe_argv(root: Path, out: Path, *flags: object) -> list:
    return [
        *flags, "--device", "cpu", "--threads", 1, "--no-progress", "--no-checkpoint", "--data-root", root,
        "--out", out,
    ]  # fmt: skip


def test_the_router_learns_the_router_alone_probe(tmp_path: Path, fake_data_root: Path) -> None:
    """--preset probe_router cut to 2 epochs of 32 batches (about 30 s on two cores): the router takes the
    oracle route for >= 90 % of the test pairs; its first epoch's random routes take it for few."""
    argv = probe_argv(
        fake_data_root, tmp_path, "--preset", "probe_router", "--epochs", 2, "--limit-test", 200
    )
    assert run_main(argv) == 0
    records = read_metrics(tmp_path)
    assert records[-1]["oracle_route_rate"] >= 0.9
    assert records[-1]["test_accuracy"] == records[-1]["oracle_route_rate"]  # "correct" = the oracle route
    assert records[-1]["route_kind_information"] >= 0.9


def test_the_fixed_route_baselines_train(tmp_path: Path, fake_data_root: Path) -> None:
    common = (
        "--env", "RoutingProbeKinds-v0", "--benchmark-kwargs", '{"per_digit": 20, "test_per_digit": 5}',
        "--duplicates", 3, "--max-depth", 5, "--pool-conv-channels", 4, "--pool-fc-width", 16, "--lr", 3e-3,
        "--epochs", 2,
    )  # fmt: skip
    last = {}
    for algo in ("oracle_route", "static_route"):
        argv = probe_argv(fake_data_root, tmp_path / algo, *common, "--algo", algo, "--save-weights")
        assert run_main(argv) == 0
        last[algo] = read_metrics(tmp_path / algo)[-1]
    # the evaluation's routes per (task, kind): the oracle routing's own route for every pair of each
    assert (
        evaluate.main([str(tmp_path / "oracle_route"), "--device", "cpu", "--data-root", str(fake_data_root)])
        == 0
    )
    groups = json.loads((tmp_path / "oracle_route" / "evaluation-test.json").read_text())["routes_by_kind"]
    assert len(groups) == 2 * 3
    assert all(g["route"] == g["oracle_route"] and g["route_share"] == 1.0 for g in groups)
    assert len({tuple(g["route"][:-1]) for g in groups}) == 3  # a trunk per kind, shared by the tasks
    assert last["oracle_route"]["oracle_route_rate"] == 1.0
    assert last["oracle_route"]["route_kind_information"] == pytest.approx(1.0)
    assert (
        last["static_route"]["oracle_route_rate"] < 0.5
        and last["static_route"]["route_kind_information"] == 0.0
    )
    for record in last.values():  # the pool learned the fake digits (chance: 10 %)
        assert record["test_accuracy"] > 0.3


def test_the_probe_verdict_says_by_how_much_a_target_is_missed(tmp_path: Path) -> None:
    from training_run.report.tables import probes_table, probes_verdict

    def run(method: str, seed: int, accuracy: float, **stats: float) -> dict:
        last = {"test_accuracy": accuracy, **stats}
        return {
            "method": method, "seed": seed, "last": last, "val_picked": last, "process_seconds": 60.0,
            "load_average_before": [1.0], "load_average_after": [2.0],
        }  # fmt: skip

    runs = [
        run("static", 0, 0.80, route_kind_information=0.0),
        run("oracle", 0, 0.90, route_kind_information=1.0),
        *(run("lrn", s, 0.85, route_kind_information=0.5) for s in range(2)),
    ]
    (tmp_path / "probes").mkdir()
    record = {"probe": "kinds", "env_id": "RoutingProbeKinds-v0", "epochs": 3, "runs": runs}
    (tmp_path / "probes" / "kinds.json").write_text(json.dumps(record))
    verdict = probes_verdict(tmp_path)
    assert "**per instance** (LRN, 2 seeds, last epoch)" in verdict
    assert "the oracle routing over the static route +10.00 points (target >= 5 points): met" in verdict
    assert "kind information 0.50 (target >= 0.8): missed by 0.30" in verdict
    assert "LRN over the static route +5.00 points (target >= 3 points): met" in verdict
    assert "LRN below the oracle by +5.00 points (target <= 1 points): missed by 4.00 points" in verdict
    assert "router alone**: not measured yet" in verdict
    assert "| per instance (`RoutingProbeKinds-v0`) | LRN | 2 | 3 | 85.0 ± 0.0 |" in probes_table(tmp_path)


def test_the_per_instance_probe_s_kinds_give_each_digit_classes_of_their_own(fake_data_root: Path) -> None:
    """What opens the gap between the oracle and the static route: per task and digit, every kind of
    instance asks for another label, so a route that ignores the kind (one trunk for all kinds) is right on
    at most 1 in 3 pairs unless its modules compute the kind x digit interaction from the marker, while a
    trunk per kind never has to; and within a kind the tasks' labels differ by the task's shift alone, so a
    head per task serves every kind. The old construction (``relabel=False``) had no such conflict."""
    from routing_env.benchmarks import mnist
    from routing_env.benchmarks.probes import kind_class_maps, load_kinds

    source, digits = mnist._read(fake_data_root, train=True)
    maps = kind_class_maps(3)
    assert torch.equal(maps[0], torch.arange(10))  # kind 0: the plain digit, its own class
    assert all(sorted(m.tolist()) == list(range(10)) for m in maps)  # each map is a permutation
    assert bool((maps[1] != maps[0]).all() and (maps[2] != maps[0]).all() and (maps[2] != maps[1]).all())
    # No kind's map is a shift of the labels, which a task's head could make on the shared classes.
    assert all(torch.unique((m - torch.arange(10)) % 10).numel() > 1 for m in maps[1:])

    def kind_blind_accuracy(relabel: bool) -> float:
        bench = load_kinds(fake_data_root, **SMALL, relabel=relabel)
        split = bench.train
        assert split.kinds is not None
        digit = digits.long()[split.source_index]
        cls = maps[split.kinds, digit] if relabel else digit
        assert torch.equal(split.labels, (cls + split.tasks) % 10)
        # The best classifier that sees the task and the digit but not the kind: the commonest label of
        # each (task, digit) group.
        group = split.tasks * 10 + digit
        counts = torch.zeros(20, 10, dtype=torch.long).index_put_(
            (group, split.labels), torch.ones_like(group), accumulate=True
        )
        return counts.max(1).values.sum().item() / len(split)

    assert kind_blind_accuracy(relabel=True) == pytest.approx(1 / 3)
    assert kind_blind_accuracy(relabel=False) == 1.0
    # The kind shows in the image: the marker kinds are the digit with a white corner square.
    bench = load_kinds(fake_data_root, **SMALL)
    assert bench.kind_names == ("identity", "mark_a", "mark_b")
    for k, cols in ((1, slice(0, 4)), (2, slice(24, 28))):
        rows = (bench.train.kinds == k).nonzero().flatten()
        marked = bench.train.images[bench.train.image_index[rows], 0]  # (N, 28, 28)
        assert bool((marked[:, :4, cols] == 255).all())
        plain = source[bench.train.source_index[rows]]
        outside = torch.ones(28, 28, dtype=torch.bool)
        outside[:4, cols] = False
        assert torch.equal(marked[:, outside], plain[:, outside])


@requires_real_data("mnist")
def test_on_real_mnist_the_oracle_routing_beats_the_static_route_of_the_per_instance_probe(
    tmp_path: Path,
) -> None:
    """The construction target, cut to one seed of 5 epochs (about 15 s on two cores): the pool trained on
    the oracle routing (a trunk per kind) beats the same pool trained on the static route (one trunk for
    every kind) by far more than 5 points; 3 seeds of 8 epochs: docs/results.md, "Probes"."""
    common = (
        "--env", "RoutingProbeKinds-v0", "--duplicates", 3, "--max-depth", 5, "--pool-conv-channels", 4,
        "--pool-fc-width", 16, "--lr", 3e-3, "--epochs", 5,
    )  # fmt: skip
    accuracy = {}
    for algo in ("oracle_route", "static_route"):
        argv = probe_argv(real_data_root("mnist"), tmp_path / algo, *common, "--algo", algo)
        assert run_main(argv) == 0
        accuracy[algo] = read_metrics(tmp_path / algo)[-1]["test_accuracy"]
    assert accuracy["oracle_route"] >= accuracy["static_route"] + 0.15, accuracy


def test_the_best_mechanism_is_judged_against_fixed_routes_trained_as_long(tmp_path: Path) -> None:
    from training_run.report.mechanisms import mechanism_verdict

    def run(row: str, seed: int, epochs: int, accuracy: float, info: float) -> dict:
        last = {"epoch": epochs - 1, "test_accuracy": accuracy, "route_kind_information": info}
        return {"row": row, "seed": seed, "last": last, "val_picked": last}

    runs = [
        # 8-epoch baselines stand in kinds.json; a 16-epoch mechanism needs its own
        *(run("oracle_route+epochs_16", s, 16, 0.95, 1.0) for s in range(3)),
        *(run("static_route+epochs_16", s, 16, 0.80, 0.0) for s in range(3)),
        *(run("prior+epochs_16", s, 16, 0.78, info) for s, info in enumerate((1.0, 0.7, 0.4))),
        *(run("other+epochs_16", s, 16, 0.90, 0.1) for s in range(3)),  # more accurate, less kind information
        *(run("screen+epochs_16", 0, 16, 0.99, 1.0) for _ in range(1)),  # one seed: not a candidate
        *(run("long+epochs_32", s, 32, 0.99, 1.0) for s in range(3)),  # no baselines at 32 epochs
    ]
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "mechanisms_kinds.json").write_text(json.dumps({"runs": runs}))
    verdict = mechanism_verdict(tmp_path)
    assert (
        "**per instance, the most kind-informative mechanism** (`prior+epochs_16`, 3 seeds, 16 epochs"
        in verdict
    )
    assert "**per instance, the most accurate mechanism** (`other+epochs_16`," in verdict
    assert "kind information 0.70 (target >= 0.8): missed by 0.10" in verdict
    assert "the mechanism over the static route -2.00 points (target >= 3 points): missed by 5.00" in verdict
    assert "the mechanism below the oracle by +17.00 points" in verdict
    assert "test accuracy % per seed 78.0 / 78.0 / 78.0, kind information 1.00 / 0.70 / 0.40" in verdict
    assert "**share or separate**: no mechanism measured yet" in verdict
