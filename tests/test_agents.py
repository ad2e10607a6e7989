"""The SB3 router (agents/): action masking, save/load, and that the agents learn.

Everything runs on the CPU on fake MNIST (``fake_data_root``), with a small router and pool.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO

from agents.algorithms import ALGORITHMS
from agents.config import AgentConfig, RouterConfig
from agents.evaluation import balanced_accuracy, evaluate
from agents.policy import RouterPolicy
from agents.route_stats import ROUTE_STAT_KEYS, module_set_overlap, route_statistics, task_module_usage
from agents.router import parse_observation
from agents.trainers.static import StaticTrainer
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine
from routing_env.static_route import static_network_route

SMALL_ROUTER = dict(d_model=32, n_heads=2, d_ff=64)


def make_env(root: Path, num_envs: int = 16, max_depth: int = 4, **kwargs) -> RoutingSB3VecEnv:
    kwargs = dict(data_root=root, download=False, duplicates=2, device="cpu", seed=0, max_pairs=512, **kwargs)
    return RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=num_envs, max_depth=max_depth, **kwargs)


def make_model(algo_class, env: RoutingSB3VecEnv, seed: int = 0, **policy_kwargs):
    """An SB3 model with a small router; every rollout is one batch of whole episodes."""
    depth = env.engine.max_depth
    return algo_class(
        RouterPolicy,
        env,
        n_steps=depth,
        seed=seed,
        device="cpu",
        policy_kwargs={**SMALL_ROUTER, **policy_kwargs},
        **({"batch_size": env.num_envs * depth} if algo_class is not A2C else {}),
    )


def small_trainer(algo: str, env: RoutingSB3VecEnv, seed: int = 0, router: dict | None = None, **agent):
    """train.py's trainer of ``algo`` (same builder, same algorithm kwargs), with a smaller router to save
    CPU time."""
    router_config = RouterConfig(**(SMALL_ROUTER if router is None else router))
    return ALGORITHMS[algo].build(env, seed=seed, agent=AgentConfig(**agent), router=router_config)


@pytest.fixture(scope="module")
def env(fake_data_root: Path) -> RoutingSB3VecEnv:
    """A batch of 16 episodes of 4 steps over a frozen pool (the masks do not depend on training it)."""
    return make_env(fake_data_root, train_modules=False)


# --- masking ----------------------------------------------------------------------------------------


def _walk_states(env: RoutingSB3VecEnv, choose, n_batches: int) -> int:
    """Step ``env`` through ``n_batches`` whole batches with ``choose(obs, mask)``; assert that every
    chosen action is valid by ``env.action_masks()`` (read before each step) and that the env agrees.
    Returns the number of (state, action) pairs checked."""
    obs = env.reset()
    checked = 0
    for _ in range(n_batches * env.engine.max_depth):
        mask = env.action_masks()
        assert np.array_equal(obs["action_mask"].astype(bool), mask)  # the observation carries the mask
        assert mask.any(axis=1).all()
        actions = np.asarray(choose(obs, mask)).reshape(-1)
        assert actions.shape == (env.num_envs,)
        assert mask[np.arange(env.num_envs), actions].all(), "a masked action was picked"
        obs, _, _, infos = env.step(actions)
        assert not any(info["invalid_action"] for info in infos)
        checked += env.num_envs
    return checked


def _adversarial(policy: RouterPolicy) -> None:
    """Make the actor score every action the mask forbids far above the valid ones, so that only the
    masking (not luck or an untrained policy's preferences) keeps the policy from picking them."""
    router = policy.router
    encode, actor = router.encode, router.actor
    seen = {}

    def encode_and_remember(x):
        seen["mask"] = x.mask
        return encode(x)

    def spiteful_actor(states, padding, *rest):  # rest: the task ids the task prior reads
        return actor(states, padding, *rest) + 1e4 * (~seen["mask"]).float()

    router.encode = encode_and_remember  # RouterNetwork.forward and get_distribution call these
    router.actor = spiteful_actor


@pytest.mark.parametrize("algo_class", [MaskablePPO, PPO, A2C], ids=["maskable_ppo", "ppo", "a2c"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled", "deterministic"])
def test_policy_never_picks_a_masked_action(env: RoutingSB3VecEnv, algo_class, deterministic: bool) -> None:
    model = make_model(algo_class, env)
    _adversarial(model.policy)
    calls = []

    def choose(obs, mask):
        calls.append(None)
        if algo_class is MaskablePPO and len(calls) % 2:
            actions, _ = model.predict(obs, deterministic=deterministic, action_masks=mask)
        else:  # plain PPO / A2C know nothing of masks (nor does MaskablePPO here, every other step):
            actions, _ = model.predict(obs, deterministic=deterministic)  # the mask in obs suffices
        return actions

    assert _walk_states(env, choose, n_batches=3) == 3 * env.num_envs * env.engine.max_depth


def test_masked_actions_have_zero_probability(env: RoutingSB3VecEnv) -> None:
    model = make_model(MaskablePPO, env)
    obs = env.reset()
    for _ in range(env.engine.max_depth):
        mask = torch.as_tensor(env.action_masks())
        obs_t, _ = model.policy.obs_to_tensor(obs)
        with torch.no_grad():
            probs = model.policy.get_distribution(obs_t).distribution.probs
            _, _, log_prob = model.policy(obs_t)
            values, log_probs, entropy = model.policy.evaluate_actions(
                obs_t, torch.as_tensor(env.action_masks().argmax(1))
            )
        assert torch.all(probs[~mask] == 0)
        assert torch.allclose(probs.sum(1), torch.ones(env.num_envs))
        assert torch.isfinite(log_prob).all() and torch.isfinite(log_probs).all()
        assert torch.isfinite(entropy).all() and values.shape == (env.num_envs, 1)
        # MaskablePPO's extra masks are applied on top of the observation's mask
        first_valid = mask.int().argmax(1)
        extra = torch.zeros_like(mask)
        extra[torch.arange(env.num_envs), first_valid] = True
        with torch.no_grad():
            actions, _, _ = model.policy(obs_t, action_masks=extra.numpy())
        assert torch.equal(actions, first_valid)
        obs, *_ = env.step(env.action_masks().argmax(1))


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo", "a2c"])
def test_training_rollouts_take_no_invalid_action(env: RoutingSB3VecEnv, algo: str) -> None:
    """Actions sampled while learning (collect_rollouts) are valid too: the engine counts none invalid,
    and train.py's progress callback hears of every batch."""
    trainer = small_trainer(algo, env, router_lr=1e-3, minibatch=16)
    env.engine.reset_stats()
    episodes = []
    trainer.learn_epoch(3, episodes.append)
    stats = env.engine.stats()
    assert stats["train_episodes"] == 3 * env.num_envs
    assert stats["train_invalid_actions"] == 0.0
    assert episodes == [env.num_envs] * 3


# --- save / load ------------------------------------------------------------------------------------


def _deterministic_actions(model, env: RoutingSB3VecEnv, n_batches: int = 2) -> np.ndarray:
    env.reset()  # consumes the seeds SB3 gave the env (a reset with a seed restarts the data walk)
    env.engine.seed(123)
    obs = env.reset()
    taken = []
    for _ in range(n_batches * env.engine.max_depth):
        actions, _ = model.predict(obs, deterministic=True, action_masks=env.action_masks())
        taken.append(actions)
        obs, *_ = env.step(actions)
    return np.stack(taken)


class _PolicyOnly:
    def __init__(self, policy: RouterPolicy) -> None:
        self.policy = policy

    def predict(self, obs, deterministic: bool, action_masks: np.ndarray):
        return self.policy.predict(obs, deterministic=deterministic, action_masks=action_masks)


def test_save_load_round_trip(env: RoutingSB3VecEnv, tmp_path: Path) -> None:
    kwargs = dict(d_model=48, n_heads=3, d_ff=40, n_encoder_layers=2, n_decoder_layers=1)
    model = MaskablePPO(
        RouterPolicy, env, n_steps=4, batch_size=64, seed=3, device="cpu", policy_kwargs=kwargs
    )
    model.learn(2 * env.num_envs * 4)  # train a little, so that the weights are not the initial ones
    model.save(tmp_path / "agent.zip")
    loaded = MaskablePPO.load(tmp_path / "agent.zip", env=env, device="cpu")

    assert isinstance(loaded.policy, RouterPolicy)
    assert loaded.policy.router_config == RouterConfig(**kwargs)
    assert len(loaded.policy.router.encoder.layers) == 2
    assert loaded.policy.router.position.shape == (2 + 4, 48)
    ctor = loaded.policy._get_constructor_parameters()
    assert {k: ctor[k] for k in kwargs} == kwargs

    original, restored = model.policy.state_dict(), loaded.policy.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    # the router's optimizer state travels too (resumed training continues the same Adam moments)
    assert (
        loaded.policy.optimizer.state_dict()["state"].keys()
        == model.policy.optimizer.state_dict()["state"].keys()
    )

    a, b = _deterministic_actions(model, env), _deterministic_actions(loaded, env)
    assert np.array_equal(a, b)
    # the policy alone (BasePolicy.save / load) round-trips too, constructor kwargs included
    model.policy.save(tmp_path / "policy.pt")
    alone = RouterPolicy.load(tmp_path / "policy.pt", device="cpu")
    assert alone.router_config == RouterConfig(**kwargs)
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in original.items())
    assert np.array_equal(a, _deterministic_actions(_PolicyOnly(alone), env))

    # the actions depend on the weights: a freshly initialised policy picks other routes somewhere
    other = MaskablePPO(
        RouterPolicy, env, n_steps=4, batch_size=64, seed=4, device="cpu", policy_kwargs=kwargs
    )
    assert not np.array_equal(a, _deterministic_actions(other, env))


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo", "a2c", "dqn"])
def test_trainer_save_load(fake_data_root: Path, tmp_path: Path, algo: str) -> None:
    """train.py's trainer (default router) saves and loads every SB3 algorithm; DQN's second batch
    trains from its replay buffer."""
    env = make_env(fake_data_root, num_envs=8, max_depth=3)
    trainer = small_trainer(algo, env, router=RouterConfig().__dict__, router_lr=1e-3, minibatch=8)
    trainer.learn_epoch(2, lambda n: None)
    trainer.save(tmp_path)
    before = {k: v.clone() for k, v in trainer.model.policy.state_dict().items()}
    clone = small_trainer(algo, env, seed=1, router=RouterConfig().__dict__, router_lr=1e-3, minibatch=8)
    clone.load(tmp_path)
    after = clone.model.policy.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    env.engine.seed(5)
    env.engine.begin_batch()
    obs = env.engine.observation()
    assert torch.equal(trainer.act(obs), clone.act(obs))


# --- task prior (not in the paper) -----------------------------------------------------------------

# The paper's router, by top-level module: a task prior of 0 must leave exactly these parameters.
PAPER_ROUTER_MODULES = {
    "instance", "task_embedding", "action_embedding", "position", "encoder", "decoder", "score",
    "critic_attention", "critic_value",
}  # fmt: skip


def _router_policy(env: RoutingSB3VecEnv, seed: int = 0, **kwargs) -> RouterPolicy:
    torch.manual_seed(seed)
    return RouterPolicy(env.observation_space, env.action_space, lambda _: 1e-3, **{**SMALL_ROUTER, **kwargs})


def _tiled(obs: dict[str, np.ndarray], tasks: np.ndarray) -> dict[str, np.ndarray]:
    """``len(tasks)`` copies of the first state of ``obs`` (same image, route and mask), with ``tasks``."""
    tiled = {k: np.repeat(v[:1], len(tasks), axis=0) for k, v in obs.items()}
    tiled["task"] = tasks.astype(tiled["task"].dtype)
    return tiled


def test_task_prior_is_absent_by_default_and_shaped_tasks_by_actions(env: RoutingSB3VecEnv) -> None:
    n_tasks, n_actions = int(env.observation_space["task"].n), int(env.action_space.n)
    paper = _router_policy(env).router
    names = {n for n, _ in paper.named_parameters()}
    assert paper.task_prior is None
    assert {n.split(".")[0] for n in names} == PAPER_ROUTER_MODULES
    assert paper.config.task_prior_std == 0.0 and RouterConfig().task_prior_std == 0.0

    router = _router_policy(env, task_prior_std=1.5).router
    assert {n for n, _ in router.named_parameters()} == names | {"task_prior.weight"}
    assert router.task_prior.weight.shape == (n_tasks, n_actions)
    assert router.task_prior.weight.requires_grad
    assert 1.0 < router.task_prior.weight.std().item() < 2.0  # N(0, 1.5) over 10 x 13 entries

    # RouterConfig.task_prior_std reaches the policy of every actor-critic algorithm (train.py's path)
    for algo in ("maskable_ppo", "ppo", "a2c"):
        default = small_trainer(algo, env, minibatch=16)
        assert default.model.policy.router.task_prior is None
        trainer = small_trainer(algo, env, router={**SMALL_ROUTER, "task_prior_std": 1.5}, minibatch=16)
        assert trainer.model.policy.router_config.task_prior_std == 1.5
        assert trainer.model.policy.router.task_prior.weight.shape == (n_tasks, n_actions)


def test_large_task_prior_makes_fresh_routes_task_specific(env: RoutingSB3VecEnv) -> None:
    """With a prior of std 5, a fresh router's first module depends on the task, not on the image."""
    policy = _router_policy(env, task_prior_std=5.0)
    n_tasks = int(env.observation_space["task"].n)
    obs = env.reset()
    first_valid = np.flatnonzero(obs["action_mask"][0])
    assert len(first_valid) >= 2  # two duplicates of the input conv: a real choice

    # one batch: every task, 4 copies of the same image each
    tasks = np.repeat(np.arange(n_tasks), 4)
    actions, _ = policy.predict(_tiled(obs, tasks), deterministic=True)
    per_task = actions.reshape(n_tasks, 4)
    assert (per_task == per_task[:, :1]).all()  # one task, one image: one action
    assert np.isin(per_task, first_valid).all()
    assert len(set(per_task[:, 0].tolist())) >= 2, "every task picked the same first module"

    # the prior outweighs the (untrained) image features: where a task's prior gap between the two
    # valid first modules is clear, all 16 different images of the batch take the same first module
    prior = policy.router.task_prior.weight.detach()
    gap = (prior[:, first_valid[0]] - prior[:, first_valid[1]]).abs()
    clear = [t for t in range(n_tasks) if gap[t] > 2.0]
    assert clear
    for t in clear:
        varied = {k: v.copy() for k, v in obs.items()}
        varied["task"][:] = t
        assert len(np.unique(varied["image"].reshape(env.num_envs, -1), axis=0)) > 1
        chosen, _ = policy.predict(varied, deterministic=True)
        assert (chosen == chosen[0]).all(), t

    # masking holds against the prior: make it favour every action the first step forbids by far
    with torch.no_grad():
        policy.router.task_prior.weight[:, ~obs["action_mask"][0].astype(bool)] += 100.0

    def choose(step_obs, mask, deterministic):
        obs_t, _ = policy.obs_to_tensor(step_obs)
        with torch.no_grad():
            probs = policy.get_distribution(obs_t).distribution.probs
        assert torch.all(probs[~torch.as_tensor(mask)] == 0)
        return policy.predict(step_obs, deterministic=deterministic)[0]

    for deterministic in (True, False):
        _walk_states(env, lambda o, m, d=deterministic: choose(o, m, d), n_batches=1)


def test_save_load_keeps_the_task_prior(env: RoutingSB3VecEnv, tmp_path: Path) -> None:
    kwargs = {**SMALL_ROUTER, "task_prior_std": 2.5}
    model = MaskablePPO(
        RouterPolicy, env, n_steps=4, batch_size=64, seed=3, device="cpu", policy_kwargs=kwargs
    )
    prior = model.policy.router.task_prior.weight
    with torch.no_grad():  # weights a fresh init cannot reproduce: they must come from the file
        prior.add_(torch.linspace(-3, 3, prior.numel()).view_as(prior))
    obs_t, _ = model.policy.obs_to_tensor(env.reset())

    def logits(policy: RouterPolicy) -> torch.Tensor:
        with torch.no_grad():
            return policy.get_distribution(obs_t).distribution.logits

    model.save(tmp_path / "agent.zip")
    loaded = MaskablePPO.load(tmp_path / "agent.zip", env=env, device="cpu")
    model.policy.save(tmp_path / "policy.pt")
    alone = RouterPolicy.load(tmp_path / "policy.pt", device="cpu")
    for restored in (loaded.policy, alone):
        assert restored.router_config == RouterConfig(**kwargs)
        assert restored._get_constructor_parameters()["task_prior_std"] == 2.5
        assert torch.equal(restored.router.task_prior.weight, model.policy.router.task_prior.weight)
        assert torch.equal(logits(restored), logits(model.policy))
    fresh = _router_policy(env, seed=3, **kwargs)
    assert not torch.allclose(logits(fresh), logits(model.policy))


# --- where the priors apply, and starting at the static network (not in the paper) -----------------


@pytest.fixture(scope="module")
def env6(fake_data_root: Path) -> RoutingSB3VecEnv:
    """Routes of 6 steps (room for the static network's 5 layers and a PASS) over a frozen pool."""
    return make_env(fake_data_root, max_depth=6, train_modules=False)


def _prior_offsets(
    policy: RouterPolicy, prior: torch.Tensor, engine, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Walk one batch of ``engine`` with random valid actions; at every step, the change of the logits
    when ``prior`` (a parameter of the router) is zeroed, 0 on invalid actions, and the mask: ``(B, A)``
    each."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    engine.begin_batch()
    for _ in range(engine.max_depth):
        x = parse_observation(engine.observation())
        with torch.no_grad():
            full = policy.router(x)[0]
            saved = prior.detach().clone()
            prior.zero_()
            bare = policy.router(x)[0]
            prior.copy_(saved)
        steps.append((torch.where(x.mask, full - bare, 0.0), x.mask))
        engine.step(torch.multinomial(x.mask.float(), 1, generator=gen).squeeze(1))
    return steps


@pytest.mark.parametrize("steps", ["all", "head"])
def test_task_prior_applies_at_the_steps_asked_for(env6: RoutingSB3VecEnv, steps: str) -> None:
    policy = _router_policy(env6, task_prior_std=3.0, task_prior_steps=steps)
    weight = policy.router.task_prior.weight.detach()
    walk = _prior_offsets(policy, policy.router.task_prior.weight, env6.engine)
    rows = weight[env6.engine.tasks]  # (B, A): each episode's task's prior
    for step, (offset, mask) in enumerate(walk):
        on = steps == "all" or step == env6.engine.max_depth - 1
        torch.testing.assert_close(offset, torch.where(mask, rows, 0.0) if on else torch.zeros_like(offset))


def test_static_start_is_a_learned_bias_on_the_static_route(env6: RoutingSB3VecEnv) -> None:
    n_tasks, n_actions = int(env6.observation_space["task"].n), int(env6.action_space.n)
    route = static_network_route(env6.engine.pool, n_tasks, 6)
    assert _router_policy(env6).router.static_prior is None and RouterConfig().static_start == 0.0
    policy = _router_policy(env6, static_start=2.5, static_route=route.tolist())
    prior = policy.router.static_prior
    assert prior.shape == (n_tasks, 6, n_actions) and prior.requires_grad
    torch.testing.assert_close(prior.detach(), torch.zeros_like(prior).scatter_(2, route[..., None], 2.5))
    # at each step of a random walk, the bias adds the strength to the task's static action at that
    # step (where it is valid after the walk's earlier choices), and nothing to any other action
    walk = _prior_offsets(policy, prior, env6.engine)
    tasks = env6.engine.tasks
    rows = torch.arange(len(tasks))
    for step, (offset, mask) in enumerate(walk):
        expected = torch.zeros_like(offset)
        expected[rows, route[tasks, step]] = 2.5
        torch.testing.assert_close(offset, torch.where(mask, expected, 0.0))
    assert walk[0][0].any()  # step 0's static action, input_conv[0], is always valid

    with pytest.raises(ValueError, match="static_start needs the static network's route"):
        _router_policy(env6, static_start=1.0)
    with pytest.raises(ValueError, match=r"static_route must hold \(10, 6\) action ids"):
        _router_policy(env6, static_start=1.0, static_route=route[:, :5].tolist())


def test_large_static_start_routes_every_task_through_the_static_network(
    fake_data_root: Path, env6: RoutingSB3VecEnv
) -> None:
    """train.py's trainer with ``static_start`` 20: the fresh router's greedy route of every test pair is
    its task's static route; it still samples other routes at strength 1, and PPO moves the bias."""
    trainer = small_trainer("maskable_ppo", env6, router={**SMALL_ROUTER, "static_start": 20.0}, minibatch=16)
    n_tasks, n_modules = int(env6.observation_space["task"].n), env6.engine.pool.n_modules
    route = static_network_route(env6.engine.pool, n_tasks, 6)
    assert trainer.model.policy.static_route == route.tolist()
    config = RoutingConfig(
        benchmark="mnist", split="test", data_root=fake_data_root, download=False, device="cpu",
        duplicates=2, max_depth=6, max_pairs=200, seed=0,
    )  # fmt: skip
    test_engine, bench = make_engine(config, batch_size=200, pool=env6.engine.pool)
    res = evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes)
    per_task = torch.bincount(test_engine.data.tasks, minlength=n_tasks)
    expected = torch.zeros(n_tasks, n_modules, dtype=torch.long)
    for t in range(n_tasks):
        modules = route[t][route[t] < n_modules]
        expected[t, modules] = per_task[t]
    assert res["module_usage"] == expected.tolist()
    assert res["routes_per_task"] == 1.0 and res["route_entropy_bits"] == 0.0

    trainer = small_trainer("maskable_ppo", env6, router={**SMALL_ROUTER, "static_start": 1.0}, minibatch=16)
    policy = trainer.model.policy
    env6.engine.begin_batch()
    for _ in range(6):
        obs = env6.engine.observation()
        out = env6.engine.step(policy._predict(obs, deterministic=False).reshape(-1))
    taken = out.final["route"]
    assert (taken != route[out.final["task"]]).any(dim=1).any(), "every sampled route was the static one"
    before = policy.router.static_prior.detach().clone()
    trainer.learn_epoch(1, lambda n: None)
    assert not torch.equal(policy.router.static_prior.detach(), before)


def test_save_load_keeps_the_static_start(env6: RoutingSB3VecEnv, tmp_path: Path) -> None:
    route = static_network_route(env6.engine.pool, 10, 6).tolist()
    kwargs = {**SMALL_ROUTER, "static_start": 4.0, "static_route": route}
    model = MaskablePPO(
        RouterPolicy, env6, n_steps=6, batch_size=96, seed=3, device="cpu", policy_kwargs=kwargs
    )
    prior = model.policy.router.static_prior
    with torch.no_grad():  # weights a fresh init cannot reproduce: they must come from the file
        prior.add_(torch.linspace(-1, 1, prior.numel()).view_as(prior))
    model.save(tmp_path / "agent.zip")
    loaded = MaskablePPO.load(tmp_path / "agent.zip", env=env6, device="cpu")
    assert loaded.policy.static_route == route and loaded.policy.router_config.static_start == 4.0
    assert torch.equal(loaded.policy.router.static_prior, prior)


# --- evaluation -------------------------------------------------------------------------------------


def test_balanced_accuracy() -> None:
    correct = torch.tensor([True, True, False, True, False])
    labels = torch.tensor([0, 0, 1, 1, 3])
    # recalls: class 0: 2/2, class 1: 1/2, class 3: 0/1; class 2 is absent and does not count
    assert balanced_accuracy(correct, labels, 4) == pytest.approx((1 + 0.5 + 0) / 3)
    assert math.isnan(balanced_accuracy(correct[:0], labels[:0], 4))


def _lowest_valid(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    return obs["action_mask"].int().argmax(dim=1)  # input_conv[0] -> hidden_conv[0] -> head_from_conv[0]


def test_evaluate_counts_every_test_pair_once(fake_data_root: Path) -> None:
    """150 test pairs in batches of 64 (the last one wraps into the next pass), in one batch, or in one
    batch larger than the split: each pair is counted once, the results agree, the pool stays frozen."""
    results = []
    for batch_size in (64, 150, 1000):
        config = RoutingConfig(
            benchmark="mnist", split="test", data_root=fake_data_root, download=False, device="cpu",
            duplicates=2, max_depth=3, max_pairs=150, seed=0,
        )  # fmt: skip
        engine, bench = make_engine(config, batch_size=batch_size)
        weights = {k: v.clone() for k, v in engine.pool.state_dict().items()}
        res = evaluate(_lowest_valid, engine, bench.n_tasks, bench.n_classes)
        assert res == evaluate(_lowest_valid, engine, bench.n_tasks, bench.n_classes)  # restarts the walk
        assert all(torch.equal(v, engine.pool.state_dict()[k]) for k, v in weights.items())
        results.append(res)

        assert res["test_pairs"] == 150
        per_task = torch.bincount(engine.data.tasks.cpu(), minlength=bench.n_tasks)
        usage = torch.tensor(res["module_usage"])  # (tasks, modules): every route is [0, 2, 8]
        for m in (0, 2, 8):
            assert torch.equal(usage[:, m], per_task)
        assert usage.sum() == 3 * 150 and res["unused_modules"] == 12 - 3 and res["mean_route_modules"] == 3.0
        weighted = sum(n * a for n, a in zip(per_task.tolist(), res["per_task_accuracy"]) if n)
        assert res["test_accuracy"] == pytest.approx(weighted / 150)
        for t in range(bench.n_tasks):
            assert math.isnan(res["per_task_accuracy"][t]) == (per_task[t] == 0)

    first = results[0]
    for res in results[1:]:
        for key in ("test_pairs", "per_task_accuracy", "module_usage", "unused_modules"):
            assert res[key] == first[key], key
        assert res["test_accuracy"] == pytest.approx(first["test_accuracy"])
        assert res["test_loss"] == pytest.approx(first["test_loss"], rel=1e-5)


def test_evaluate_refuses_a_training_engine(fake_data_root: Path) -> None:
    env = make_env(fake_data_root)
    with pytest.raises(ValueError, match="sequential engine with a frozen pool"):
        evaluate(_lowest_valid, env.engine, 10, 2)


def test_route_statistics_on_hand_made_routes() -> None:
    """Two tasks with routes and one without (left out of every mean); PASS (5) is not a module."""
    routes = torch.tensor([[0, 1, 5], [0, 1, 5], [0, 1, 5], [0, 2, 5], [0, 1, 5], [0, 1, 5]])
    tasks = torch.tensor([0, 0, 0, 0, 2, 2])
    stats = route_statistics(routes, tasks, n_tasks=3, n_modules=5)
    assert set(stats) == set(ROUTE_STAT_KEYS)
    assert stats["route_overlap"] == pytest.approx(2 / 3)  # {0, 1, 2} and {0, 1}
    # usage shares: task 0 (1, 3/4, 1/4), task 2 (1, 1, 0): (1 + 3/4 + 0) / (1 + 1 + 1/4)
    assert stats["route_overlap_weighted"] == pytest.approx(1.75 / 2.25)
    assert stats["shared_modules"] == 2
    assert stats["routes_per_task"] == pytest.approx(1.5)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # task 0's two routes, 3:1; task 2's one
    assert stats["route_entropy_bits"] == pytest.approx(h / 2)
    # from the usage matrix alone (metrics.jsonl's module_usage): the same overlap and shared modules
    usage = task_module_usage(routes, tasks, n_tasks=3, n_modules=5).tolist()
    from_usage = module_set_overlap(torch.tensor(usage))
    assert from_usage == {"route_overlap": pytest.approx(2 / 3), "shared_modules": 2}

    # disjoint tasks, each routing every instance differently: no overlap, full entropy
    routes = torch.tensor([[0, 2], [1, 3], [4, 6], [5, 7]])
    stats = route_statistics(routes, torch.tensor([0, 0, 1, 1]), n_tasks=2, n_modules=8)
    assert stats["route_overlap"] == 0.0 and stats["route_overlap_weighted"] == 0.0
    assert stats["shared_modules"] == 0 and stats["routes_per_task"] == 2.0
    assert stats["route_entropy_bits"] == pytest.approx(1.0)
    one_task = route_statistics(routes[:2], torch.tensor([0, 0]), n_tasks=2, n_modules=8)
    assert math.isnan(one_task["route_overlap"]) and one_task["routes_per_task"] == 2.0


def test_evaluate_reports_the_static_networks_sharing(fake_data_root: Path) -> None:
    """The static network: every task shares the 4 trunk modules and has its own head, one route each."""
    config = RoutingConfig(
        benchmark="mnist", split="test", data_root=fake_data_root, download=False, device="cpu",
        pool="static", max_depth=5, max_pairs=300, seed=0,
    )  # fmt: skip
    engine, bench = make_engine(config, batch_size=300)
    res = evaluate(StaticTrainer(SimpleNamespace(engine=engine)).act, engine, bench.n_tasks, bench.n_classes)
    tasks_present = int((torch.bincount(engine.data.tasks, minlength=bench.n_tasks) > 0).sum())
    assert tasks_present >= 3
    assert res["route_overlap"] == pytest.approx(4 / 6) and res["route_overlap_weighted"] == pytest.approx(
        4 / 6
    )
    assert res["shared_modules"] == 4
    assert res["routes_per_task"] == 1.0 and res["route_entropy_bits"] == 0.0


# --- learning ---------------------------------------------------------------------------------------


def _setup(root: Path, benchmark: str, batch: int, test_pairs: int, **kwargs):
    """A train env and a test engine sharing its pool, as train.py builds them."""
    kwargs = dict(data_root=root, download=False, device="cpu", lr_decay=1.0, **kwargs)
    env = RoutingSB3VecEnv(benchmark, num_envs=batch, **kwargs)
    config = RoutingConfig(benchmark=benchmark, split="test", max_pairs=test_pairs, **kwargs)
    test_engine, bench = make_engine(config, batch_size=256, pool=env.engine.pool)
    return env, test_engine, bench


def _evaluate(trainer, test_engine, bench) -> dict:
    return evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes)


def test_static_baseline_learns_mnist_mtl_quickly(fake_data_root: Path) -> None:
    """One shared trunk with a head per task: every task is separable at once."""
    env, test_engine, bench = _setup(
        fake_data_root, "mnist", 32, 300, pool="static", max_depth=5, lr=1e-3, seed=0, bonus_weight=0.0
    )
    trainer = StaticTrainer(env)
    before = _evaluate(trainer, test_engine, bench)
    trainer.learn_epoch(50, lambda n: None)
    after = _evaluate(trainer, test_engine, bench)
    assert before["test_balanced_accuracy"] < 0.8
    assert after["test_accuracy"] >= 0.95
    assert after["test_balanced_accuracy"] >= 0.9  # always "no" scores 0.5
    assert min(after["per_task_balanced_accuracy"]) > 0.5
    assert after["unused_modules"] == 0 and after["mean_route_modules"] == 5.0


ROUTER_64 = dict(d_model=64, n_heads=4, d_ff=128)


def test_lrn_learns_min_mtl(fake_data_root: Path) -> None:
    """MaskablePPO routing through the LRN pool (no collapse bonus) on fake MIN-MTL, where the image
    alone fixes the label: test accuracy climbs from chance (1 in 5) within 60 batches of 16 (to 0.78-0.99
    over seeds 0-4 on this CPU).

    (Input conv -> conv head, max_depth 2: deeper routes reach the 32*84*84 -> 256 FC modules, whose
    Adam steps dominate a CPU run.)"""
    env, test_engine, bench = _setup(
        fake_data_root, "min", 16, 100, duplicates=2, max_depth=2, lr=1e-3, seed=1, bonus_weight=0.0
    )
    trainer = small_trainer("maskable_ppo", env, seed=1, router=ROUTER_64)
    before = _evaluate(trainer, test_engine, bench)
    trainer.learn_epoch(60, lambda n: None)
    after = _evaluate(trainer, test_engine, bench)
    assert before["test_accuracy"] < 0.4
    assert after["test_accuracy"] >= 0.6, after["test_accuracy"]
    assert env.engine.stats()["train_invalid_actions"] == 0.0


def test_lrn_trains_its_pool_on_mnist_mtl(fake_data_root: Path) -> None:
    """MaskablePPO + LRN pool on fake MNIST-MTL (no bonus, 2 duplicates, max_depth 3).

    Beating chance here needs task-specific routes (modules never see the task). In CPU-sized runs
    (up to 400 batches of 32; router lr 3e-4 to 3e-3, module lr 3e-4 to 3e-3, entropy 0 to 0.03,
    1 to 8 PPO passes, bonus 0 to 0.3, max_depth 2 to 4, d_model 64 and 256) the router did not find
    them reliably: balanced accuracy mostly stayed at 0.5 (always "no"), at times 0.6-0.8 for a while.
    So this asserts what is reliable: the modules on the routes the router picks learn (the test loss
    falls from an untrained pool's to the always-"no" level), and accuracy stays at always-"no"'s 90 %."""
    env, test_engine, bench = _setup(
        fake_data_root, "mnist", 32, 300, duplicates=2, max_depth=3, lr=1e-3, seed=0, bonus_weight=0.0
    )
    trainer = small_trainer("maskable_ppo", env, seed=0, router=ROUTER_64)
    before = _evaluate(trainer, test_engine, bench)
    trainer.learn_epoch(30, lambda n: None)
    after = _evaluate(trainer, test_engine, bench)
    assert after["test_loss"] < before["test_loss"] - 0.1, (before["test_loss"], after["test_loss"])
    assert after["test_loss"] < 0.45
    assert after["test_accuracy"] >= 0.85
    assert after["test_balanced_accuracy"] >= 0.45
    assert env.engine.stats()["train_invalid_actions"] == 0.0
