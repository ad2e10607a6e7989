"""The original routing network baseline (agents/trainers/routing_network.py, pool="routing_network").

Constraints of the route (trunk forced, 3 routed FC depths with their own modules, no PASS), WPL and
REINFORCE on bandits, the batched update, checkpoints, and a short train.py run on fake MNIST-MTL that
must lift balanced accuracy clearly above chance (0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train
from agents.trainers.routing_network import RoutingNetworkTrainer, project_to_simplex, wpl_update
from routing_env import RoutingConfig, make_engine

N = 3  # modules per routed depth in these tests (the default is 10)


@pytest.fixture(scope="module")
def engine(fake_data_root: Path):
    config = RoutingConfig(
        benchmark="mnist",
        data_root=fake_data_root,
        download=False,
        pool="routing_network",
        max_depth=5,
        duplicates=N,
        batch_size=64,
        max_pairs=640,
        device="cpu",
        seed=0,
        train_modules=False,
    )
    return make_engine(config)[0]


def module_ids(engine, name: str) -> list[int]:
    names = engine.pool.module_names
    return [i for i, n in enumerate(names) if n.startswith(name + "[")]


def test_pool_layout(engine) -> None:
    names = engine.pool.module_names
    assert names == ["input_conv[0]", "hidden_conv[0]"] + [
        f"{b}[{j}]" for b in ("fc_from_conv", "hidden_fc", "head") for j in range(N)
    ]
    assert not engine.pool.allow_pass


def test_config_needs_depth_five(fake_data_root: Path) -> None:
    with pytest.raises(ValueError, match="max_depth=5"):
        RoutingConfig(benchmark="mnist", data_root=fake_data_root, pool="routing_network", max_depth=6)


def test_only_the_last_three_layers_are_routed_and_pass_is_never_valid(engine) -> None:
    """The mask at steps 0-1 admits exactly the trunk module, at steps 2/3/4 exactly that depth's set;
    routes sampled by the trainer follow it, and never take PASS."""
    trainer = RoutingNetworkTrainer(engine, n_tasks=10, seed=1)
    expected = [
        module_ids(engine, "input_conv"),
        module_ids(engine, "hidden_conv"),
        module_ids(engine, "fc_from_conv"),
        module_ids(engine, "hidden_fc"),
        module_ids(engine, "head"),
    ]
    assert [len(e) for e in expected] == [1, 1, N, N, N]
    assert trainer.forced == {0: expected[0][0], 1: expected[1][0]}
    assert trainer.routed_steps == [2, 3, 4]
    pass_action = engine.pool.pass_action
    for k in range(5):
        assert not bool(engine.rules.step_allowed[k, pass_action])
    engine.seed(0)
    engine.begin_batch()
    for k in range(5):
        mask = engine.action_mask()
        admitted = mask.nonzero()[:, 1].unique().tolist()
        assert admitted == expected[k], f"step {k}"
        assert bool(mask[:, expected[k]].all()), f"step {k}: every episode may take every module"
        if k in trainer.forced:
            actions = torch.full_like(engine.tasks, trainer.forced[k])
        else:
            actions = trainer.step_actions[trainer.depth_of_step[k]][
                trainer._choose(engine.tasks, trainer.depth_of_step[k], sample=True)
            ]
        out = engine.step(actions)
        assert not bool(out.invalid.any())
    route = out.final["route"]
    assert bool((route != pass_action).all())
    for k in range(5):
        assert set(route[:, k].tolist()) <= set(expected[k])
    assert len(set(route[:, 2].tolist())) > 1  # routed depths are really sampled


def test_act_is_the_argmax_of_the_task_table(engine) -> None:
    trainer = RoutingNetworkTrainer(engine, n_tasks=10)
    trainer.table = torch.full_like(trainer.table, 0.1 / (N - 1))
    best = torch.arange(10)[:, None].expand(10, 3) % N  # task t prefers module t % N at every depth
    trainer.table.scatter_(-1, best[..., None], 0.9)
    engine.seed(0)
    engine.begin_batch()
    for k in range(5):
        actions = trainer.act(engine.observation())
        if k >= 2:
            ids = trainer.step_actions[k - 2]
            assert torch.equal(actions, ids[engine.tasks % N])
        engine.step(actions)


def test_simplex_projection() -> None:
    v = torch.tensor([[0.5, 0.7, -0.1], [0.2, 0.2, 0.6], [3.0, -2.0, 0.0]])
    p = project_to_simplex(v, floor=0.01)
    assert torch.allclose(p.sum(-1), torch.ones(3))
    assert bool((p >= 0.01 - 1e-7).all())
    assert torch.allclose(p[1], v[1])  # already feasible: unchanged
    assert torch.allclose(p[0], torch.tensor([0.395, 0.595, 0.01]))


def test_wpl_rule_on_a_two_armed_bandit() -> None:
    """WPL with sampled +-1 rewards (+1 w.p. 0.8 for arm 0, 0.2 for arm 1) and running Q-values
    converges to arm 0; every step keeps the policy on the floored simplex."""
    g = torch.Generator().manual_seed(0)
    probs = torch.full((1, 2), 0.5)
    q = torch.zeros(1, 2)
    known = torch.ones(1, 2, dtype=torch.bool)
    for _ in range(400):
        arm = int(torch.rand(1, generator=g) > probs[0, 0])
        reward = 1.0 if float(torch.rand(1, generator=g)) < (0.8, 0.2)[arm] else -1.0
        q[0, arm] += 0.1 * (reward - q[0, arm])
        probs = wpl_update(probs, q, known, lr=0.05, epsilon=0.01)
        assert abs(float(probs.sum()) - 1) < 1e-5 and float(probs.min()) >= 0.01 - 1e-6
    assert float(probs[0, 0]) > 0.95


def test_wpl_step_direction() -> None:
    """delta(a) = Q(a) - V, scaled by 1 - pi(a) when positive and by pi(a) when negative."""
    probs = torch.tensor([[0.25, 0.75]])
    q = torch.tensor([[1.0, 0.0]])  # V = 0.25
    new = wpl_update(probs, q, torch.ones(1, 2, dtype=torch.bool), lr=0.1, epsilon=0.0)
    up = 0.1 * (1 - 0.25) * (1 - 0.25)  # arm 0: +0.75 * (1 - pi)
    down = 0.1 * (0 - 0.25) * 0.75  # arm 1: -0.25 * pi
    raw = torch.tensor([[0.25 + up, 0.75 + down]])
    assert torch.allclose(new, project_to_simplex(raw))


@pytest.mark.parametrize("learner", ["wpl", "reinforce"])
def test_batched_update_learns_a_bandit_per_task(engine, learner: str) -> None:
    """Every task's agent faces a bandit at routed depth 0: module ``t % N`` pays +1 w.p. 0.8, the others
    w.p. 0.2 (depths 1 and 2 only see noise). The batched update finds each task's best module."""
    trainer = RoutingNetworkTrainer(engine, n_tasks=10, learner=learner, lr=0.05 if learner == "wpl" else 0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        tasks = torch.randint(0, 10, (64,), generator=g)
        choices = torch.stack([trainer._choose(tasks, d, sample=True) for d in range(3)], dim=1)
        good = choices[:, 0] == tasks % N
        p_win = torch.where(good, 0.8, 0.2)
        reward = torch.where(torch.rand(64, generator=g) < p_win, 1.0, -1.0)
        trainer.update(tasks, choices, reward)
    probs = trainer.probs
    assert torch.equal(probs[:, 0].argmax(-1), torch.arange(10) % N)
    assert float(probs[torch.arange(10), 0, torch.arange(10) % N].min()) > 0.8
    assert torch.allclose(probs.sum(-1), torch.ones(10, 3))


def test_collaboration_reward(engine) -> None:
    trainer = RoutingNetworkTrainer(engine, n_tasks=10, rho=0.5)
    choices = torch.tensor([[0, 1, 2], [0, 2, 2], [1, 2, 2], [0, 0, 2]])
    final = torch.tensor([1.0, -1.0, 1.0, -1.0])
    g = trainer.returns(choices, final)
    # shares per depth: depth 0: module 0 chosen 3/4, module 1 1/4; depth 1: 1 -> 1/4, 2 -> 2/4, 0 -> 1/4;
    # depth 2: all 4/4. Return at depth d = final + rho * (sum of shares at depths >= d).
    share = torch.tensor([[3, 1, 4], [3, 2, 4], [1, 2, 4], [3, 1, 4]]) / 4
    expected = final[:, None] + 0.5 * share.flip(1).cumsum(1).flip(1)
    assert torch.allclose(g, expected)
    assert torch.equal(
        RoutingNetworkTrainer(engine, n_tasks=10).returns(choices, final), final[:, None].expand(4, 3)
    )


@pytest.mark.parametrize("learner", ["wpl", "reinforce"])
def test_save_load_round_trip(engine, tmp_path: Path, learner: str) -> None:
    a = RoutingNetworkTrainer(engine, n_tasks=10, learner=learner, seed=3)
    tasks = torch.arange(64) % 10
    for _ in range(5):
        choices = torch.stack([a._choose(tasks, d, sample=True) for d in range(3)], dim=1)
        a.update(tasks, choices, torch.where(choices[:, 0] == 0, 1.0, -1.0))
    a.save(tmp_path)
    b = RoutingNetworkTrainer(engine, n_tasks=10, learner=learner, seed=99)
    b.load(tmp_path)
    assert torch.equal(a.table, b.table) and torch.equal(a.q, b.q) and b.updates == 5
    assert torch.equal(a._choose(tasks, 1, sample=True), b._choose(tasks, 1, sample=True))  # same RNG
    other = "reinforce" if learner == "wpl" else "wpl"
    with pytest.raises(ValueError, match="checkpoint holds"):
        RoutingNetworkTrainer(engine, n_tasks=10, learner=other).load(tmp_path)


@pytest.mark.slow
def test_short_train_run_beats_chance(fake_data_root: Path, tmp_path: Path) -> None:
    """train.py --algo routing_network on fake CIFAR-MTL (20 tasks of 5 classes; 2 epochs of 16 batches,
    ~30 s on 2 CPU cores): test accuracy well above chance (0.2), the tables settle, and the checkpoint
    holds the tables that the deterministic test routes follow.

    Why CIFAR: there the label is a function of the image, so the modules learn under any routing and a
    few dozen batches suffice. On fake MNIST-MTL, balanced accuracy only leaves 0.5 once the router has
    given tasks distinct routes, which takes 60-100 batches here and varies with the seed. A large router
    lr (--rn-lr 1) lets the tables settle within the few batches a test affords."""
    out = tmp_path / "run"
    argv = [
        "--algo", "routing_network", "--env", "RoutingCIFAR-v0", "--data-root", fake_data_root,
        "--device", "cpu", "--epochs", 2, "--batch-size", 64, "--eval-batch-size", 200,
        "--duplicates", N, "--lr", 3e-3, "--rn-lr", 1.0, "--out", out, "--no-progress",
    ]  # fmt: skip
    assert train.main([str(a) for a in argv]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    assert config["env"]["max_depth"] == 5 and config["env"]["pool"] == "routing_network"
    assert config["env"]["bonus_weight"] == 0.0
    assert [r["epoch"] for r in records] == [0, 1]
    last = records[-1]
    assert last["router_lr"] == 1.0 and last["train_invalid_actions"] == 0
    assert last["test_accuracy"] > 0.5, records  # chance: 0.2
    assert last["test_accuracy"] > records[0]["test_accuracy"]
    tables = torch.load(out / "checkpoint" / "router_tables.pt", weights_only=False)
    probs = tables["probs"]
    n_tasks = probs.shape[0]
    assert probs.shape == (20, 3, N) and torch.allclose(probs.sum(-1), torch.ones(n_tasks, 3))
    assert float(probs.max(-1).values.mean()) > 0.8  # the tables have (mostly) settled
    usage = torch.tensor(last["module_usage"])  # (tasks, modules): test routes are each table's argmax
    step_actions = tables["step_actions"]
    for t in range(n_tasks):
        used = set(usage[t].nonzero().flatten().tolist())
        assert used == {0, 1, *step_actions[torch.arange(3), probs[t].argmax(-1)].tolist()}


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(fake_data_root: Path, tmp_path: Path) -> None:
    """The checkpoint holds the tables, Q-values and sampling RNG: 1 epoch + --resume = 2 epochs."""
    base = [
        "--algo", "routing_network", "--data-root", fake_data_root, "--device", "cpu",
        "--batch-size", 64, "--limit-train", 128, "--limit-test", 60, "--duplicates", 2,
        "--rn-lr", 0.5, "--no-progress",
    ]  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert train.main([str(x) for x in [*base, "--epochs", 2, "--out", a]]) == 0
    assert train.main([str(x) for x in [*base, "--epochs", 1, "--out", b]]) == 0
    assert train.main([str(x) for x in [*base, "--epochs", 2, "--out", b, "--resume"]]) == 0
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "module_usage")
    runs = [[json.loads(line) for line in (o / "metrics.jsonl").read_text().splitlines()] for o in (a, b)]
    same = [{k: r[k] for k in keys} for r in runs[0]], [{k: r[k] for k in keys} for r in runs[1]]
    assert same[0] == same[1] and len(same[0]) == 2
    ta, tb = (torch.load(o / "checkpoint" / "router_tables.pt", weights_only=False) for o in (a, b))
    assert torch.equal(ta["table"], tb["table"]) and torch.equal(ta["q"], tb["q"])
    assert ta["updates"] == tb["updates"] == 4
