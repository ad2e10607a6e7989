"""The batched engine: masks, invalid actions, rewards, module training, the data walk and checkpoints.

Two kinds of engines: ``new_engine`` builds one as the envs do (``make_engine`` on MNIST-MTL: the real data
when ``$ROUTING_ENV_DATA`` holds it, fake data otherwise); ``tiny_engine`` runs the same engine and module
code on a pool of the LRN kinds with small shapes over random 8x8 images, for the tests that need many
batches (a full-size MNIST pool takes about a second per trained batch on a small CPU).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from routing_env import RoutingConfig, make_engine
from routing_env.batch_state import StepOutput
from routing_env.benchmarks import MTLSplit
from routing_env.engine import RoutingEngine
from routing_env.modules import ModulePool, TensorType, lrn_pool_specs, static_pool_specs
from routing_env.rewards import (
    UsageWindow,
    collapse_bonus,
    module_usage_counts,
    route_bonus,
    task_usage_counts,
)
from routing_env.static_route import static_network_route

# Many small ops: one intra-op thread is faster on a small shared CPU (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


Policy = Callable[[RoutingEngine], torch.Tensor]


@pytest.fixture(scope="module")
def new_engine(data_root: Path) -> Callable[..., RoutingEngine]:
    """``new_engine(**config_kwargs)``: an MNIST engine with small defaults (engine overrides via
    ``engine_overrides={...}``)."""

    def build(engine_overrides: dict | None = None, **kwargs) -> RoutingEngine:
        base = dict(
            benchmark="mnist",
            data_root=data_root,
            download=False,
            device="cpu",
            duplicates=2,
            max_depth=4,
            batch_size=8,
            max_pairs=200,
            seed=0,
        )
        engine, _ = make_engine(RoutingConfig(**{**base, **kwargs}), **(engine_overrides or {}))
        return engine

    return build


TINY_IMAGE = (1, 8, 8)


def tiny_engine(
    duplicates: int = 2, pairs: int = 40, seed: int = 0, pool: str = "lrn", **config
) -> RoutingEngine:
    """An engine over ``pairs`` random (image, task, label) pairs with a small pool (3 classes, 4 tasks);
    ``seed`` seeds the pool's weights and the data order. ``config``: :class:`RoutingConfig` fields, and
    ``update_every`` (episodes per pool step)."""
    gen = torch.Generator().manual_seed(1234)
    n_images, n_tasks, n_classes = 30, 4, 3
    split = MTLSplit(
        images=torch.randint(0, 256, (n_images, *TINY_IMAGE), dtype=torch.uint8, generator=gen),
        image_index=torch.randint(0, n_images, (pairs,), generator=gen),
        tasks=torch.randint(0, n_tasks, (pairs,), generator=gen),
        labels=torch.randint(0, n_classes, (pairs,), generator=gen),
        source_index=torch.arange(pairs),
    )
    if pool == "static":
        specs = static_pool_specs(TINY_IMAGE, n_classes, n_tasks, conv_channels=4, fc_width=16)
    else:
        specs = lrn_pool_specs(TINY_IMAGE, n_classes, duplicates, conv_channels=4, fc_width=16)
    module_pool = ModulePool(specs, TensorType("image", TINY_IMAGE), seed=seed)
    update_every = config.pop("update_every", None)
    config = {"max_depth": 4, "batch_size": 8, "lr": 1e-2, "dispatch": "grouped", "device": "cpu", **config}
    return RoutingEngine(
        module_pool, split, RoutingConfig(seed=seed, **config), update_every=update_every, n_tasks=n_tasks
    )


def random_policy(seed: int, avoid: torch.Tensor | None = None) -> Policy:
    """Uniform over the valid actions (seeded); actions in ``avoid`` only when nothing else is valid."""
    gen = torch.Generator().manual_seed(seed)

    def act(engine: RoutingEngine) -> torch.Tensor:
        mask = engine.action_mask()
        assert mask.any(dim=1).all(), "some episode has no valid action"
        weights = mask.float()
        if avoid is not None:
            preferred = mask & ~avoid[None, :]
            weights = torch.where(preferred.any(1, keepdim=True), preferred.float(), weights)
        return torch.multinomial(weights, 1, generator=gen).squeeze(1)

    return act


def run_batch(engine: RoutingEngine, policy: Policy) -> tuple[list[StepOutput], list[torch.Tensor]]:
    """One batch of episodes; returns every step's output and the mask before every step."""
    engine.begin_batch()
    outs, masks = [], []
    for _ in range(engine.max_depth):
        masks.append(engine.action_mask().clone())
        outs.append(engine.step(policy(engine)))
    assert outs[-1].done and not any(o.done for o in outs[:-1])
    return outs, masks


def pool_state(engine: RoutingEngine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.pool.state_dict().items()}


def module_params(engine: RoutingEngine, name: str = "weight") -> dict[int, torch.Tensor]:
    """Module id -> its slice of parameter ``name`` in its bank."""
    pool = engine.pool
    return {
        pool.bank_offsets[b] + j: getattr(bank, name)[j]
        for b, bank in enumerate(pool.banks)
        for j in range(bank.spec.duplicates)
    }


def used_modules(routes: torch.Tensor, n_modules: int) -> set[int]:
    return set(routes[routes < n_modules].tolist())


# --- masks -------------------------------------------------------------------------------------------


def reference_mask(engine: RoutingEngine, k: int, cur_type: int, used: set[int]) -> list[bool]:
    """The LRN rules from the docs, written out per action (no lookahead needed for the LRN pool)."""
    pool, depth = engine.pool, engine.max_depth
    names = [t.name for t in pool.types]
    in_types, out_types = pool.module_in_type.tolist(), pool.module_out_type.tolist()
    valid = []
    for m in range(pool.n_modules):
        t_in, t_out = in_types[m], out_types[m]
        if k == 0:
            ok = names[t_in] == "image" and names[t_out] != "logits"
        elif k == depth - 1:
            ok = t_in == cur_type and names[t_out] == "logits"
        else:
            ok = t_in == cur_type and names[t_out] not in ("image", "logits") and m not in used
        valid.append(ok)
    return valid + [0 < k < depth - 1]  # PASS


def check_route(engine: RoutingEngine, route: list[int]) -> None:
    pool, depth = engine.pool, engine.max_depth
    names = [t.name for t in pool.types]
    in_types, out_types = pool.module_in_type.tolist(), pool.module_out_type.tolist()
    pass_action = pool.pass_action
    modules = [a for a in route if a != pass_action]
    assert len(modules) == len(set(modules)), f"a module repeats in {route}"
    assert route[0] != pass_action and names[in_types[route[0]]] == "image", route
    assert route[-1] != pass_action and names[out_types[route[-1]]] == "logits", route
    cur = out_types[route[0]]
    for k, a in enumerate(route[1:], start=1):
        assert 0 <= a <= pass_action, route
        if a == pass_action:
            assert k < depth - 1, f"PASS at the last step: {route}"
            continue
        spec = pool.specs[pool.action_bank[a]]
        if k < depth - 1:
            assert names[out_types[a]] not in ("image", "logits"), f"head in the middle: {route}"
        assert spec.steps is None or k in spec.steps, f"{spec.name} at step {k}: {route}"
        assert in_types[a] == cur, f"type mismatch at step {k}: {route}"
        cur = out_types[a]
    assert names[cur] == "logits"


@pytest.mark.parametrize(
    ("source", "pool", "depth", "duplicates", "batches", "min_routes"),
    [
        ("tiny", "lrn", 2, 2, 4, 4),  # min_routes: every route there is, for the small cases
        ("tiny", "lrn", 3, 1, 4, 3),
        ("tiny", "lrn", 6, 2, 8, 100),
        ("tiny", "lrn", 7, 3, 8, 100),
        ("tiny", "static", 5, 1, 4, 8),
        ("mnist", "lrn", 6, 2, 2, 20),
        ("mnist", "static", 5, 1, 2, 5),
    ],
)
def test_masks_admit_only_valid_networks(
    new_engine, source: str, pool: str, depth: int, duplicates: int, batches: int, min_routes: int
) -> None:
    kwargs = dict(pool=pool, max_depth=depth, duplicates=duplicates, batch_size=48, train_modules=False)
    engine = tiny_engine(**kwargs) if source == "tiny" else new_engine(**{**kwargs, "batch_size": 16})
    p, b = engine.pool, engine.batch_size
    out_types = p.module_out_type.tolist()
    policy = random_policy(seed=depth)
    seen_routes = set()
    for _ in range(batches):
        outs, masks = run_batch(engine, policy)
        routes = outs[-1].final["route"]
        assert not any(o.invalid.any() for o in outs)
        for k, mask in enumerate(masks):
            assert mask.shape == (b, p.n_actions) and mask.any(dim=1).all(), f"dead end at step {k}"
            if k == 0 or k == depth - 1:
                assert not mask[:, p.pass_action].any(), f"PASS valid at step {k}"
            elif pool == "lrn":
                assert mask[:, p.pass_action].all(), f"PASS not valid at hidden step {k}"
        for i, route in enumerate(routes.tolist()):
            check_route(engine, route)
            seen_routes.add(tuple(route))
            if pool == "lrn":  # the mask at every step is exactly the documented rule set
                cur, used = 0, set()
                for k, a in enumerate(route):
                    assert masks[k][i].tolist() == reference_mask(engine, k, cur, used), (k, route)
                    if a != p.pass_action:
                        cur, used = out_types[a], used | {a}
        assert torch.isfinite(outs[-1].final["loss"]).all()
    assert len(seen_routes) >= min_routes  # the policy explored


def test_task_heads_end_each_task_in_heads_of_its_own() -> None:
    """``task_heads``: with 2 duplicates and 4 tasks, task t ends only in head duplicate t % 2 and every
    other action stays as valid as without it; without it, tasks end in each other's heads."""
    for task_heads in (True, False):
        engine = tiny_engine(task_heads=task_heads, batch_size=48, train_modules=False)
        p = engine.pool
        head = torch.tensor(
            [p.is_logits_type(p.specs[b].out_type) for b in p.action_bank[:-1].tolist()] + [False]
        )
        foreign = 0
        for seed in range(3):
            outs, masks = run_batch(engine, random_policy(seed))
            tasks, routes = outs[-1].final["task"], outs[-1].final["route"]
            last = routes[:, -1]  # (B,) the head (max_depth 4: the head is the last step)
            assert head[last].all()
            foreign += int((p.action_dup[last] != tasks % 2).sum())
            if task_heads:  # the heads of another task are hidden at the last step, nothing else is
                other = head[None, :] & (p.action_dup[None, :] != (tasks % 2)[:, None])  # (B, A)
                assert not (masks[-1] & other).any() and (masks[-1] & head).any(1).all()
        assert (foreign == 0) == task_heads
    with pytest.raises(ValueError, match="n_tasks"):
        RoutingEngine(engine.pool, engine.data, RoutingConfig(task_heads=True, device="cpu"))


def test_engine_rejects_pools_without_a_complete_network(new_engine) -> None:
    with pytest.raises(ValueError, match="needs max_depth=5, got 6"):
        new_engine(pool="static", max_depth=6)
    tiny_engine(pool="static", max_depth=5)
    for depth in (3, 6):
        with pytest.raises(ValueError, match=f"no complete network in max_depth={depth}"):
            tiny_engine(pool="static", max_depth=depth)


# --- invalid actions ---------------------------------------------------------------------------------


def scripted(actions: list[list[int]]) -> Policy:
    steps = iter(actions)
    return lambda engine: torch.tensor(next(steps))


def test_invalid_actions_are_substituted_and_penalised(new_engine) -> None:
    engine = new_engine(duplicates=2, max_depth=4, batch_size=4, invalid_action_penalty=0.5, bonus_weight=0.7)
    # ids: input_conv 0-1, hidden_conv 2-3, fc_from_conv 4-5, hidden_fc 6-7, head_from_conv 8-9,
    # head_from_fc 10-11, PASS 12
    assert engine.pool.pass_action == 12
    actions = [
        [12, 5, 1, 0],  # PASS / a hidden module at step 0 -> lowest valid module (input_conv[0])
        [0, 2, 6, 4],  # input conv in the middle, hidden_fc on conv features -> PASS
        [4, 2, 12, 4],  # hidden_conv[0] and fc_from_conv[0] again (reuse) -> PASS
        [12, 10, 9, 3],  # PASS / wrong head / hidden at the last step -> lowest valid head
    ]
    invalid = [[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 1]]
    outs, _ = run_batch(engine, scripted(actions))
    for k, out in enumerate(outs):
        assert out.invalid.tolist() == [bool(x) for x in invalid[k]], k
    for k in range(3):
        torch.testing.assert_close(outs[k].reward, -0.5 * torch.tensor(invalid[k], dtype=torch.float32))
    final = outs[-1].final
    assert final["route"].tolist() == [[0, 12, 4, 10], [0, 2, 12, 8], [1, 12, 12, 9], [0, 4, 12, 10]]
    expected = -0.5 * torch.tensor(invalid[3], dtype=torch.float32) - final["loss"] + 0.7 * final["bonus"]
    torch.testing.assert_close(outs[-1].reward, expected)
    assert engine.stats()["train_invalid_actions"] == pytest.approx(9 / 4)


def test_invalid_action_takes_lowest_valid_module_where_pass_is_invalid() -> None:
    engine = tiny_engine(pool="static", max_depth=5, batch_size=2, train_modules=False)
    p = engine.pool  # ids: input 0, hidden conv 1, fc 2, hidden fc 3, task heads 4-7, PASS 8
    assert p.pass_action == 8
    outs, masks = run_batch(engine, scripted([[8, 0], [8, 1], [8, 2], [0, 3], [8, 4 + 3]]))
    # PASS at step 1 is valid (a network without the hidden conv), but at step 2 or 3 it would leave
    # features that no later module of this pool turns into logits by the last step
    assert masks[1][:, 8].all() and not masks[2][:, 8].any() and not masks[3][:, 8].any()
    assert [o.invalid.tolist() for o in outs] == [
        [True, False],
        [False, False],
        [True, False],
        [True, False],
        [True, False],
    ]
    assert outs[-1].final["route"].tolist() == [[0, 8, 2, 3, 4], [0, 1, 2, 3, 7]]


@pytest.mark.parametrize(("duplicates", "max_depth"), [(3, 6), (2, 5), (1, 7)])
def test_static_network_route_is_a_valid_route_of_the_lrn_pool(duplicates: int, max_depth: int) -> None:
    engine = tiny_engine(duplicates=duplicates, max_depth=max_depth)
    pool, n_tasks = engine.pool, 4
    route = static_network_route(pool, n_tasks, max_depth)
    trunk = ["input_conv[0]", "hidden_conv[0]", "fc_from_conv[0]", "hidden_fc[0]"]
    for t in range(n_tasks):  # the shared trunk, PASS up to the last step, the task's head
        passes = ["PASS"] * (max_depth - 5)
        assert [pool.action_names[a] for a in route[t]] == [
            *trunk,
            *passes,
            f"head_from_fc[{t % duplicates}]",
        ]
    engine.begin_batch()
    for k in range(max_depth):  # the engine takes it step by step, no action replaced
        out = engine.step(route[engine.tasks, k])
        assert not out.invalid.any(), k
    assert torch.equal(out.final["route"], route[engine.tasks])

    with pytest.raises(ValueError, match="needs max_depth >= 5"):
        static_network_route(pool, n_tasks, 4)
    with pytest.raises(ValueError, match="the pool has no head_from_fc module"):
        static_network_route(tiny_engine(pool="static", max_depth=5).pool, n_tasks, 5)


def _scripted_choice(
    actions: torch.Tensor, shown: list, k: int, obs: dict[str, torch.Tensor]
) -> torch.Tensor:
    """A choice function for play(): the step's row of ``actions`` ``(D, B)``; remembers ``obs``."""
    shown.append({key: value.clone() for key, value in obs.items()})
    return actions[k]


@pytest.mark.parametrize("augment", [False, True])
def test_play_runs_the_batch_as_its_steps_do(augment: bool) -> None:
    """play() (all steps at once, the actions from a choice function) gives what step() by step gives:
    the observations, substituted invalid actions and their penalty, the final reward, the pool's update
    and the statistics; the pool and its optimizer move alike over batches."""
    kwargs = dict(seed=0, invalid_action_penalty=0.3, bonus_weight=0.5, augment=augment)
    stepped, played = tiny_engine(**kwargs), tiny_engine(**kwargs)
    gen = torch.Generator().manual_seed(0)
    n_actions, depth, b = stepped.pool.n_actions, stepped.max_depth, stepped.batch_size
    for _ in range(3):
        # uniform over every action, so that some are invalid and get substituted
        actions = torch.randint(0, n_actions, (depth, b), generator=gen)
        stepped.begin_batch()
        seen, outs = [], []
        for k in range(depth):
            seen.append(stepped.observation())
            outs.append(stepped.step(actions[k]))
        played.begin_batch()
        shown = []
        choose = functools.partial(_scripted_choice, actions, shown)
        out = played.play(choose)
        for k in range(depth):
            assert seen[k].keys() == shown[k].keys()
            for key in seen[k]:
                assert torch.equal(seen[k][key], shown[k][key]), (k, key)
        assert out.invalid.any() and not out.invalid.all()
        assert torch.equal(out.invalid, torch.stack([o.invalid for o in outs]))
        torch.testing.assert_close(out.reward, torch.stack([o.reward for o in outs]), rtol=0, atol=0)
        for key, value in outs[-1].final.items():
            assert torch.equal(out.final[key], value), key
    assert_same_pool(stepped, played)
    assert stepped.stats() == played.stats()
    with pytest.raises(RuntimeError, match="begin_batch"):
        played.play(choose)  # the batch is over
    played.begin_batch()
    played.step(actions[0])
    with pytest.raises(RuntimeError, match="right after begin_batch"):
        played.play(choose)


def test_observations_are_snapshots() -> None:
    """An observation does not change when later steps fill the route or a new batch begins."""
    engine = tiny_engine(seed=0, train_modules=False)
    engine.begin_batch()
    first = engine.observation()
    kept = {k: v.clone() for k, v in first.items()}
    policy = random_policy(0)
    for _ in range(engine.max_depth):
        engine.step(policy(engine))
    engine.begin_batch()
    assert not torch.equal(engine.observation()["image"], kept["image"])
    for key, value in kept.items():
        assert torch.equal(first[key], value), key


# --- rewards -----------------------------------------------------------------------------------------


def test_final_reward_is_loss_plus_batch_collapse_bonus(new_engine) -> None:
    engine = new_engine(duplicates=3, max_depth=4, batch_size=16, bonus_weight=0.7, train_modules=False)
    for seed in range(2):
        outs, _ = run_batch(engine, random_policy(seed))
        final = outs[-1].final
        routes = final["route"]
        counts = module_usage_counts(routes, engine.pool.n_modules)  # the batch's own routes only
        assert counts.sum() == (routes < engine.pool.n_modules).sum()
        bonus = route_bonus(routes, collapse_bonus(counts))
        torch.testing.assert_close(final["bonus"], bonus)
        torch.testing.assert_close(final["reward"], -final["loss"] + 0.7 * bonus)
        torch.testing.assert_close(outs[-1].reward, final["reward"])
        assert all(not o.reward.any() for o in outs[:-1])  # 0 before the last step (no invalid action)
        assert final["bonus"].max() > 0 and (final["loss"] > 0).all()
        assert torch.equal(final["correct"], final["prediction"] == final["label"])
        assert torch.equal(final["label"], engine.data.labels[final["pair_index"]])
        assert torch.equal(final["task"], engine.data.tasks[final["pair_index"]])


def test_the_bonus_is_paid_only_between_its_warmup_and_until_passes(new_engine) -> None:
    """``bonus_warmup`` 1 and ``bonus_until`` 2 with one batch a pass: only episodes of the second pass over
    the pairs get the bonus; before and after, the reward is the loss alone."""
    engine = new_engine(
        duplicates=3, max_depth=4, batch_size=16, max_pairs=16, bonus_weight=0.7, bonus_warmup=1,
        bonus_until=2, train_modules=False,
    )  # fmt: skip
    for epoch in range(3):
        final = run_batch(engine, random_policy(epoch))[0][-1].final
        assert (final["epoch"] == epoch).all() and final["bonus"].max() > 0
        weight = 0.7 if epoch == 1 else 0.0
        torch.testing.assert_close(final["reward"], -final["loss"] + weight * final["bonus"])


def test_collapse_bonus_within_kinds_and_per_row() -> None:
    counts = torch.tensor([4.0, 2.0, 0.0, 5.0, 5.0])
    # eq. 6 over the pool: min 0, max 5
    torch.testing.assert_close(collapse_bonus(counts), torch.tensor([0.2, 0.6, 1.0, 0.0, 0.0]))
    # within kinds {0, 1, 2} and {3, 4}: the second kind is balanced, so it earns nothing
    kinds = torch.tensor([0, 0, 0, 1, 1])
    torch.testing.assert_close(collapse_bonus(counts, kinds), torch.tensor([0.0, 0.5, 1.0, 0.0, 0.0]))
    # rows are independent sets of counts
    rows = torch.stack([counts, torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0])])
    torch.testing.assert_close(collapse_bonus(rows, kinds)[1], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(collapse_bonus(rows)[0], collapse_bonus(counts))


def test_task_scope_bonus_does_not_punish_sharing() -> None:
    """One kind of module with three duplicates (ids 0-2; 3 = PASS), two tasks. Task 0 uses module 1, which
    task 1 uses too, as often as module 2, which no other task uses. The pool's bonus (eq. 6) pays task 0
    less for the shared module; counted per task, both earn the same."""
    routes = torch.tensor([[0, 3], [0, 3], [1, 3], [2, 3], [1, 3], [1, 3]])
    tasks = torch.tensor([0, 0, 0, 0, 1, 1])
    counts = task_usage_counts(routes, tasks, tasks, n_modules=3)  # each episode: its task's routes
    torch.testing.assert_close(counts, torch.tensor([[2.0, 1.0, 1.0]] * 4 + [[0.0, 2.0, 0.0]] * 2))
    empty = torch.full((6,), -1)  # slots no episode filled yet count for no task
    assert not task_usage_counts(routes, empty, tasks, 3).any()

    window = UsageWindow(6, 2, pad=4, device=torch.device("cpu"))
    window.push(routes, tasks)
    kinds = torch.zeros(3, dtype=torch.long)
    shared_route, own_route = 2, 3  # task 0's episodes on module 1 and on module 2
    pool = route_bonus(routes, window.bonus("pool", tasks, kinds))
    per_task = route_bonus(routes, window.bonus("task", tasks, kinds))
    assert pool[shared_route] == 0.0 and pool[own_route] == 1.0  # pool counts 2, 3, 1
    assert per_task[shared_route] == per_task[own_route] == 1.0  # task 0's counts 2, 1, 1
    with pytest.raises(ValueError, match="bonus scope must be one of"):
        window.bonus("tasks", tasks, kinds)


def test_usage_window_checkpoints_its_tasks() -> None:
    window = UsageWindow(3, 2, pad=5, device=torch.device("cpu"))
    window.push(torch.tensor([[0, 1], [2, 3]]), torch.tensor([4, 7]))
    restored = UsageWindow(3, 2, pad=5, device=torch.device("cpu"))
    restored.load_state_dict(window.state_dict())
    assert restored.tasks.tolist() == [4, 7, -1] and restored.position == 2
    old = {k: v for k, v in window.state_dict().items() if k != "tasks"}  # written before tasks were kept
    restored.load_state_dict(old)
    assert restored.tasks.tolist() == [-1, -1, -1] and torch.equal(restored.routes, window.routes)


def _reference_bonus(routes: list[list[int]], tasks: list[int], kinds: list[int], scope: str) -> list[float]:
    """Each episode's summed bonus, written out per episode and module (eq. 6 in its scope)."""
    n_modules = len(kinds)
    totals = []
    for route, task in zip(routes, tasks):
        counted = [r for r, t in zip(routes, tasks) if scope != "task" or t == task]
        counts = [sum(m in r for r in counted) for m in range(n_modules)]
        total = 0.0
        for m in route:
            if m >= n_modules:
                continue
            compared = [counts[j] for j in range(n_modules) if scope != "kind" or kinds[j] == kinds[m]]
            low, high = min(compared), max(compared)
            total += 0.0 if high == low else 1 - (counts[m] - low) / (high - low)
        totals.append(total)
    return totals


@pytest.mark.parametrize("scope", ["pool", "task", "kind"])
def test_engine_bonus_in_each_scope(new_engine, scope: str) -> None:
    engine = new_engine(
        duplicates=3, max_depth=4, batch_size=16, bonus_weight=0.7, bonus_scope=scope, train_modules=False
    )
    kinds = engine.pool.action_bank[: engine.pool.n_modules].tolist()
    for seed in range(2):  # the window holds one batch: each batch's bonus is its own routes'
        outs, _ = run_batch(engine, random_policy(seed))
        final = outs[-1].final
        expected = _reference_bonus(final["route"].tolist(), final["task"].tolist(), kinds, scope)
        torch.testing.assert_close(final["bonus"], torch.tensor(expected))
        torch.testing.assert_close(final["reward"], -final["loss"] + 0.7 * final["bonus"])
        torch.testing.assert_close(final["step_rewards"].sum(1), final["reward"])
    assert final["bonus"].max() > 0


# --- module training ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dispatch"),
    [("tiny", "grouped"), ("tiny", "dense"), ("tiny", "gathered"), ("tiny", "compact"), ("mnist", "grouped")],
)
def test_gradients_reach_exactly_the_used_modules(new_engine, source: str, dispatch: str) -> None:
    d, b = 3, 12

    def build(**kwargs) -> RoutingEngine:
        kwargs = dict(duplicates=d, batch_size=b, max_depth=5, dispatch=dispatch, **kwargs)
        if source == "tiny":
            overrides = kwargs.pop("engine_overrides", {})
            return tiny_engine(**kwargs, **overrides)
        return new_engine(**kwargs)

    # Accumulate over two batches before stepping, so one batch leaves its gradient in .grad.
    engine = build(engine_overrides={"update_every": 2 * b})
    p = engine.pool
    last_dup = torch.zeros(p.n_actions, dtype=torch.bool)
    for offset in p.bank_offsets:
        last_dup[offset + d - 1] = True  # the policy never picks duplicate 2 of any bank
    outs, _ = run_batch(engine, random_policy(seed=1, avoid=last_dup))
    used = used_modules(outs[-1].final["route"], p.n_modules)
    assert 6 <= len(used) < p.n_modules - 1
    with_grad = set()
    for m in module_params(engine):
        grad = p.banks[int(p.action_bank[m])].weight.grad
        if grad is not None and grad[int(p.action_dup[m])].abs().sum() > 0:
            with_grad.add(m)
    assert with_grad == used

    # Fresh Adam state, one step on one batch: exactly the used modules' weights move.
    engine = build(lr=1e-3)
    before = {m: w.detach().clone() for m, w in module_params(engine).items()}
    outs, _ = run_batch(engine, random_policy(seed=2, avoid=last_dup))
    used = used_modules(outs[-1].final["route"], p.n_modules)
    moved = {m for m, w in module_params(engine).items() if not torch.equal(w, before[m])}
    assert moved == used
    assert all(param.grad is None for param in engine.pool.parameters())  # zeroed after the step


@pytest.mark.parametrize("mode", ["dense", "gathered", "compact"])
def test_dispatch_modes_agree_in_the_engine(mode: str) -> None:
    """Every dispatch mode gives the losses, rewards and accumulated gradients of ``grouped``."""
    engines = {
        m: tiny_engine(duplicates=3, max_depth=6, batch_size=16, dispatch=m, update_every=32)
        for m in (mode, "grouped")
    }
    finals = {m: run_batch(engine, random_policy(seed=4))[0][-1].final for m, engine in engines.items()}
    assert torch.equal(finals[mode]["route"], finals["grouped"]["route"])
    for key in ("loss", "bonus", "reward"):
        torch.testing.assert_close(finals[mode][key], finals["grouped"][key], rtol=1e-5, atol=1e-6)
    params, reference = (dict(engines[m].pool.named_parameters()) for m in (mode, "grouped"))
    for name, param in params.items():
        if reference[name].grad is None:  # a bank no step ran
            assert param.grad is None or not param.grad.any(), name
        else:
            torch.testing.assert_close(param.grad, reference[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert sum(p.grad is not None for p in reference.values()) > 10


def test_training_changes_the_pool_and_frozen_pools_stay_identical(new_engine) -> None:
    kwargs = dict(duplicates=2, max_depth=3, batch_size=8, lr=1e-3)
    trained = new_engine(**kwargs)
    assert trained.training
    before = pool_state(trained)
    out_trained, _ = run_batch(trained, random_policy(0))
    after = pool_state(trained)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for split in ("train", "test"):
        frozen = new_engine(split=split, train_modules=False, **kwargs)
        assert not frozen.training and frozen.optimizer is None
        assert all(torch.equal(before[k], v) for k, v in pool_state(frozen).items())  # same seed
        for seed in range(2):
            outs, _ = run_batch(frozen, random_policy(seed))
            assert not outs[-1].final["loss"].requires_grad
        assert all(torch.equal(before[k], v) for k, v in pool_state(frozen).items())
        assert all(p.grad is None for p in frozen.pool.parameters())
        if split == "train":  # same pairs, routes and pool as the trained engine's first batch: the
            # reward uses the loss before the pool's update
            frozen.seed(0)
            outs, _ = run_batch(frozen, random_policy(0))
            for key in ("pair_index", "route", "loss", "reward"):
                torch.testing.assert_close(outs[-1].final[key], out_trained[-1].final[key])
    test_default = new_engine(split="test", **kwargs)
    assert not test_default.training  # split="test" freezes the pool by default


def test_test_split_walks_pairs_in_order_once_per_pass(new_engine) -> None:
    engine = new_engine(split="test", max_pairs=20, batch_size=8, max_depth=2)
    assert len(engine.data) == 20 and engine.config.sequential
    pairs, epochs = [], []
    for _ in range(5):  # 40 episodes: two passes over the 20 pairs
        outs, _ = run_batch(engine, random_policy(0))
        pairs += outs[-1].final["pair_index"].tolist()
        epochs += outs[-1].final["epoch"].tolist()
    assert pairs == list(range(20)) * 2
    assert epochs == [0] * 20 + [1] * 20
    engine.seed(123)  # the order of the test split does not depend on the seed
    outs, _ = run_batch(engine, random_policy(0))
    assert outs[-1].final["pair_index"].tolist() == list(range(8))


def test_split_smaller_than_a_batch_wraps_within_the_batch(new_engine) -> None:
    engine = new_engine(split="test", max_pairs=3, batch_size=8, max_depth=2, duplicates=1)
    outs, _ = run_batch(engine, random_policy(0))
    assert outs[-1].final["pair_index"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert outs[-1].final["epoch"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_train_split_covers_every_pair_once_per_pass_and_decays_lr() -> None:
    engine = tiny_engine(pairs=24, batch_size=8, lr=1e-3, lr_decay=0.5)
    seen = []
    for _ in range(3):
        outs, _ = run_batch(engine, random_policy(0))
        assert outs[-1].final["epoch"].tolist() == [0] * 8
        seen += outs[-1].final["pair_index"].tolist()
    assert sorted(seen) == list(range(24)) and seen != list(range(24))  # a shuffled pass
    assert engine.optimizer.lr == pytest.approx(1e-3)
    outs, _ = run_batch(engine, random_policy(0))
    assert outs[-1].final["epoch"].tolist() == [1] * 8
    assert engine.optimizer.lr == pytest.approx(0.5e-3)
    assert outs[-1].final["pair_index"].tolist() != seen[:8]  # each pass draws a new order
    engine.seed(0)  # a fresh walk: the same first pass as a fresh engine with seed 0
    assert engine.optimizer.lr == pytest.approx(1e-3)
    outs, _ = run_batch(engine, random_policy(0))
    assert outs[-1].final["pair_index"].tolist() == seen[:8]


# --- checkpoints -------------------------------------------------------------------------------------


def run_and_record(engine: RoutingEngine, n_batches: int, seed: int) -> list[dict[str, torch.Tensor]]:
    policy = random_policy(seed)
    return [run_batch(engine, policy)[0][-1].final for _ in range(n_batches)]


def assert_same_pool(a: RoutingEngine, b: RoutingEngine) -> None:
    sa, sb = a.pool.state_dict(), b.pool.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_state_dict_resumes_exactly() -> None:
    kwargs = dict(pairs=20, batch_size=8, lr=1e-2, lr_decay=0.5)  # a pass ends inside the 3rd batch
    a = tiny_engine(seed=0, **kwargs)
    run_and_record(a, 2, seed=0)
    state = copy.deepcopy(a.state_dict())  # as torch.save would: the live state keeps changing
    expected = run_and_record(a, 3, seed=7)

    b = tiny_engine(seed=99, **kwargs)  # other initial weights and data order
    assert not torch.equal(a.pool.banks[0].weight, b.pool.banks[0].weight)
    run_and_record(b, 1, seed=3)  # and its own bonus window and optimizer state
    b.load_state_dict(state)
    got = run_and_record(b, 3, seed=7)
    for e, g in zip(expected, got):
        for key in ("pair_index", "epoch", "route", "loss", "bonus", "reward"):
            torch.testing.assert_close(g[key], e[key], msg=key)
    assert expected[0]["epoch"].tolist() == [0] * 4 + [1] * 4  # the resumed batch crossed into a new pass
    assert_same_pool(a, b)
    assert b.optimizer.lr == a.optimizer.lr == pytest.approx(5e-3)


def test_state_dict_of_a_drawn_unstarted_batch_draws_it_again() -> None:
    a = tiny_engine(seed=0)
    run_and_record(a, 1, seed=0)
    a.begin_batch()  # what env.reset() does: the batch is drawn but no step was taken
    state = copy.deepcopy(a.state_dict())
    pairs = a.pair_index.clone()
    b = tiny_engine(seed=5)
    b.load_state_dict(state)
    b.begin_batch()
    assert torch.equal(b.pair_index, pairs)
    assert_same_pool(a, b)


def test_state_dict_keeps_gradients_of_pending_episodes() -> None:
    """With updates every 3 batches, a checkpoint after 2 holds their accumulated gradient."""
    kwargs = dict(batch_size=4, lr=1e-2, update_every=12)
    a = tiny_engine(seed=0, **kwargs)
    run_and_record(a, 2, seed=0)
    state = copy.deepcopy(a.state_dict())
    assert state["optimizer"]["pending_episodes"] == 8
    run_and_record(a, 2, seed=3)  # the first of these takes the optimizer step
    b = tiny_engine(seed=1, **kwargs)
    run_and_record(b, 1, seed=4)  # b has a gradient of its own pending: loading must drop it
    b.load_state_dict(state)
    run_and_record(b, 2, seed=3)
    assert_same_pool(a, b)
