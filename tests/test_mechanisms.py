"""The mechanisms that let the router find better routes (issue 27), each off unless chosen: the
counterfactual losses of other routes on a batch's instances, the self-critical advantage, epsilon over
modules, the entropy schedule and upcycling. Fast, on the CPU with fake MNIST."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from test_train import deterministic_part, read_metrics, run_main

from agents.config import AgentConfig
from agents.policy import RouterPolicy, epsilon_mixture, masked_log_prob_entropy, masked_log_softmax
from agents.rollout import LRNMaskablePPO
from agents.trainers import sb3
from routing_env import RoutingSB3VecEnv
from routing_env.rewards import route_bonus
from routing_env.static_route import TRUNK_KINDS, static_network_route, upcycle
from training_run.report.describe import describe
from training_run.settings import RunConfig, SettingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_ROUTER = dict(d_model=32, n_heads=2, d_ff=64)
N_ENVS, DEPTH = 16, 5


def make_env(root: Path, **kwargs) -> RoutingSB3VecEnv:
    settings = dict(
        num_envs=N_ENVS, max_depth=DEPTH, data_root=root, download=False, duplicates=2, device="cpu", seed=0,
        max_pairs=256, bonus_weight=0.5,
    )  # fmt: skip
    return RoutingSB3VecEnv("RoutingMNIST-v0", **{**settings, **kwargs})


def pool_and_optimizer_state(engine) -> tuple[dict, dict, list]:
    grads = [None if p.grad is None else p.grad.clone() for p in engine.pool.parameters()]
    return copy.deepcopy(engine.pool.state_dict()), copy.deepcopy(engine.optimizer.state_dict()), grads


def assert_same_state(a: tuple, b: tuple) -> None:
    for key in a[0]:
        assert torch.equal(a[0][key], b[0][key]), key
    assert a[1]["adam"].keys() == b[1]["adam"].keys()
    for key, value in a[1]["adam"].items():
        assert torch.equal(value, b[1]["adam"][key]), key
    assert a[1]["pending_episodes"] == b[1]["pending_episodes"]
    assert [g is None for g in a[2]] == [g is None for g in b[2]]


# --- counterfactual routes ---------------------------------------------------------------------------


def test_route_losses_train_nothing_and_score_the_route_as_the_engine_does(fake_data_root: Path) -> None:
    env = make_env(fake_data_root)
    engine = env.engine
    env.reset()
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):  # two trained batches, so that Adam has moments to disturb
        env.play_tensors(
            lambda k, obs: torch.multinomial(obs["action_mask"].float(), 1, generator=generator)[:, 0]
        )
    routes = engine.rules.random_routes(N_ENVS, generator)
    before = pool_and_optimizer_state(engine)
    loss, prediction = engine.route_losses(routes)
    assert_same_state(before, pool_and_optimizer_state(engine))
    # Played on the same batch, the engine reports the same loss (before its update) for the same routes.
    out = env.play_tensors(lambda k, obs: routes[:, k])
    torch.testing.assert_close(out.final["loss"], loss)
    assert torch.equal(out.final["prediction"], prediction)


def test_a_baseline_route_is_scored_before_the_update_with_the_batch_bonus(fake_data_root: Path) -> None:
    env = make_env(fake_data_root)
    engine = env.engine
    env.reset()
    generator = torch.Generator().manual_seed(2)
    played = engine.rules.random_routes(N_ENVS, generator)
    other = engine.rules.random_routes(N_ENVS, generator)
    expected_loss, _ = engine.route_losses(other)
    # The same route as played: its baseline reward is the episode's reward to the bit.
    engine.set_baseline_routes(played)
    out = env.play_tensors(lambda k, obs: played[:, k])
    assert torch.equal(out.final["baseline_reward"], out.final["reward"])
    # Another route: its loss now (before the batch's update) and the same bonus rules.
    played = engine.rules.random_routes(N_ENVS, generator)
    expected_loss, _ = engine.route_losses(other)
    engine.set_baseline_routes(other)
    out = env.play_tensors(lambda k, obs: played[:, k])
    torch.testing.assert_close(out.final["baseline_loss"], expected_loss)
    bonus_of_played = out.final["bonus"]
    module_bonus = engine.usage.bonus("pool", engine.tasks, engine.pool.action_bank[: engine.pool.n_modules])
    # The window now holds exactly this batch (its size), so its module bonus is the one the batch had.
    torch.testing.assert_close(route_bonus(played, module_bonus), bonus_of_played)
    torch.testing.assert_close(
        out.final["baseline_reward"], -expected_loss + 0.5 * route_bonus(other, module_bonus)
    )
    # For one batch only.
    out = env.play_tensors(lambda k, obs: played[:, k])
    assert "baseline_reward" not in out.final


@pytest.mark.parametrize("baseline", ["greedy", "static", "sampled"])
def test_the_self_critical_advantage_is_the_return_less_the_baseline_routes(
    fake_data_root: Path, baseline: str
) -> None:
    env = make_env(fake_data_root)
    engine = env.engine
    model = LRNMaskablePPO(
        RouterPolicy, env, n_steps=DEPTH, batch_size=32, seed=0, device="cpu", reward_timing="terminal",
        advantage="self_critical", baseline_route=baseline, policy_kwargs=SMALL_ROUTER,
    )  # fmt: skip
    seen: dict = {}
    set_baseline, play = engine.set_baseline_routes, env.play_tensors

    def recording_baseline(routes: torch.Tensor) -> None:
        seen["routes"], seen["images"], seen["tasks"] = routes, engine.images.clone(), engine.tasks.clone()
        set_baseline(routes)

    def recording_play(*args, **kwargs):
        seen["out"] = play(*args, **kwargs)
        seen["played"] = engine.batch.route.clone()
        return seen["out"]

    engine.set_baseline_routes, env.play_tensors = recording_baseline, recording_play
    model.learn(DEPTH * N_ENVS)  # one rollout and one update
    out = seen["out"]
    expected = (out.reward.sum(0) - out.final["baseline_reward"])[None].expand(DEPTH, -1)
    torch.testing.assert_close(model.rollout_buffer.t_advantages, expected)
    if baseline == "static":
        route = static_network_route(engine.pool, 10, DEPTH)
        assert torch.equal(seen["routes"], route[seen["tasks"]])
    else:  # the greedy route of the router as it was (the update came after): decode it again
        before = LRNMaskablePPO(
            RouterPolicy, env, n_steps=DEPTH, seed=0, device="cpu", policy_kwargs=SMALL_ROUTER
        ).policy  # the same seed: the same initial router
        from routing_env.counterfactual import play_routes

        greedy = play_routes(
            engine.rules,
            seen["images"],
            seen["tasks"],
            lambda k, obs: before.greedy_tensors(obs),
        )
        if baseline == "greedy":
            assert torch.equal(seen["routes"], greedy)
        else:  # a second draw of the untrained (near-uniform) policy: neither the greedy nor the played route
            assert not torch.equal(seen["routes"], greedy)
            assert not torch.equal(seen["routes"], seen["played"])
            assert (seen["routes"] < engine.pool.n_actions).all()
    # The critic still learns GAE's returns: returns are not advantages + values.
    assert not torch.allclose(model.rollout_buffer.t_returns, expected + model.rollout_buffer.t_values)


def test_blending_weights_the_two_advantages(fake_data_root: Path) -> None:
    env = make_env(fake_data_root)
    model = LRNMaskablePPO(RouterPolicy, env, n_steps=DEPTH, seed=0, device="cpu", policy_kwargs=SMALL_ROUTER)
    buffer = model.rollout_buffer
    gae = torch.randn_like(buffer.t_advantages)
    buffer.t_advantages.copy_(gae)
    other = torch.randn_like(gae)
    buffer.blend_advantages(other, 0.25)
    torch.testing.assert_close(buffer.t_advantages, 0.25 * other + 0.75 * gae)


# --- epsilon over modules ----------------------------------------------------------------------------


def test_epsilon_mixture_log_probs_and_samples() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 7) * 3
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 1]]
    ).bool()
    masked = logits.masked_fill(~mask, -1e8)
    eps = 0.2
    p = torch.softmax(masked, -1) * mask
    expected = (1 - eps) * p + eps * mask / mask.sum(-1, keepdim=True)
    mixed = epsilon_mixture(masked_log_softmax(masked, mask), mask, eps).exp()
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(4))
    actions = torch.tensor([0, 2, 3, 6])
    log_prob, entropy = masked_log_prob_entropy(masked, mask, actions, eps)
    torch.testing.assert_close(log_prob, expected[torch.arange(4), actions].log())
    _, own_entropy = masked_log_prob_entropy(masked, mask, actions)
    assert torch.equal(entropy, own_entropy)  # the router's own entropy


def test_the_policy_samples_the_mixture_and_ppo_starts_at_ratio_one(fake_data_root: Path) -> None:
    env = make_env(fake_data_root)
    policy = LRNMaskablePPO(
        RouterPolicy, env, n_steps=DEPTH, seed=0, device="cpu",
        policy_kwargs={**SMALL_ROUTER, "explore_epsilon": 0.5, "static_start": 20.0,
                       "static_route": static_network_route(env.engine.pool, 10, DEPTH).tolist()},
    ).policy  # fmt: skip
    env.reset()
    obs = {k: v.repeat(50, *[1] * (v.dim() - 1)) for k, v in env.tensor_observation().items()}  # 800 rows
    torch.manual_seed(3)
    with torch.no_grad():
        actions, _, log_prob = policy.sample_tensors(obs)
        _, evaluated, _ = policy.evaluate_tensors(obs, actions)
    assert torch.equal(evaluated, log_prob)  # PPO's ratio is 1 before the update
    # The static start alone would pick the static module (logit +20); half the draws are uniform.
    valid = obs["action_mask"].bool()
    static = policy.router.static_prior[obs["task"], 0].argmax(-1)
    off_static = (actions != static).float().mean()
    n_valid = valid.sum(-1).float()
    assert abs(float(off_static) - float((0.5 * (1 - 1 / n_valid)).mean())) < 0.06
    assert bool(valid.gather(1, actions[:, None]).all())
    with torch.no_grad():  # deterministic actions are the router's own
        assert torch.equal(policy._predict(obs, deterministic=True), static)


# --- the entropy schedule ----------------------------------------------------------------------------


def test_the_entropy_coefficient_follows_its_schedule(fake_data_root: Path) -> None:
    agent = AgentConfig(ent_coef=0.1, ent_coef_end=0.02, ent_coef_epochs=4)
    assert [round(agent.ent_coef_at(e), 6) for e in (0, 1, 2, 4, 9)] == [0.1, 0.08, 0.06, 0.02, 0.02]
    assert AgentConfig(ent_coef=0.3).ent_coef_at(7) == 0.3
    with pytest.raises(ValueError, match="ent_coef_epochs"):
        AgentConfig(ent_coef_end=0.0)
    trainer = sb3.maskable_ppo(make_env(fake_data_root), agent=agent, router=sb3.RouterConfig(**SMALL_ROUTER))
    trainer.set_epoch(3)
    assert trainer.model.ent_coef == pytest.approx(0.04)


# --- upcycling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("freeze_unused", [True, False])
def test_upcycling_copies_duplicate_0_and_its_adam_state(fake_data_root: Path, freeze_unused: bool) -> None:
    env = make_env(fake_data_root, freeze_unused=freeze_unused, duplicates=3)
    engine = env.engine
    env.reset()
    generator = torch.Generator().manual_seed(4)
    for _ in range(2):
        env.play_tensors(
            lambda k, obs: torch.multinomial(obs["action_mask"].float(), 1, generator=generator)[:, 0]
        )
    names = [spec.name for spec in engine.pool.specs]
    heads = {
        n: [p.clone() for p in engine.pool.banks[i].parameters()]
        for i, n in enumerate(names)
        if n not in TRUNK_KINDS
    }
    trunk = {n: [p[0].clone() for p in engine.pool.banks[names.index(n)].parameters()] for n in TRUNK_KINDS}
    assert upcycle(engine.pool, engine.optimizer) == list(TRUNK_KINDS)
    for name in TRUNK_KINDS:
        bank = engine.pool.banks[names.index(name)]
        for p, first in zip(bank.parameters(), trunk[name], strict=True):
            assert torch.equal(p, first[None].expand_as(p))
        if freeze_unused:
            state = {
                k: v
                for k, v in engine.optimizer.adam.state.items()
                if k.split(".")[0] == str(names.index(name))
            }
        else:
            state = {i: engine.optimizer.adam.state[p]["exp_avg_sq"] for i, p in enumerate(bank.parameters())}
        for value in state.values():
            assert torch.equal(value, value[0:1].expand_as(value))
    for name, params in heads.items():  # the heads (and other banks) stay
        for p, old in zip(engine.pool.banks[names.index(name)].parameters(), params, strict=True):
            assert torch.equal(p, old)


UPCYCLE_RUN = [
    "--limit-train", 128, "--limit-test", 64, "--batch-size", 32, "--max-depth", 5, "--eval-batch-size", 64,
    "--device", "cpu", "--duplicates", 2, "--no-progress", "--threads", 1, "--d-model", 32, "--d-ff", 64,
    "--n-heads", 2, "--upcycle-epochs", 1, "--static-start", 3,
]  # fmt: skip


def test_an_upcycled_run_resumes_exactly_across_the_copy(fake_data_root: Path, tmp_path: Path) -> None:
    argv = [*UPCYCLE_RUN, "--data-root", fake_data_root]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_main([*argv, "--epochs", 2, "--out", whole]) == 0
    assert run_main([*argv, "--epochs", 1, "--out", parts]) == 0  # the static phase only
    assert run_main([*argv, "--epochs", 2, "--out", parts, "--resume"]) == 0  # the copy, then the router
    records = read_metrics(whole)
    assert [r["upcycle_phase"] for r in records] == [True, False]
    assert records[0]["routes_per_task"] == 1.0  # the static route for every pair of a task
    assert deterministic_part(read_metrics(parts)) == deterministic_part(records)


def test_mechanism_settings_are_off_by_default_and_refused_where_they_cannot_act() -> None:
    cfg = RunConfig.from_settings({})
    assert (cfg.agent.advantage, cfg.agent.explore_epsilon, cfg.agent.ent_coef_end, cfg.upcycle_epochs) == (
        "gae",
        0.0,
        None,
        0,
    )
    for settings in (
        {"run.upcycle_epochs": 2},
        {"agent.advantage": "self_critical"},
        {"agent.explore_epsilon": 0.1},
    ):
        with pytest.raises(SettingError, match="router"):
            RunConfig.from_settings({**settings, "run.algo": "static"})
    with pytest.raises(SettingError, match="max_depth >= 5|--max-depth >= 5"):
        RunConfig.from_settings({"run.upcycle_epochs": 1, "env.max_depth": 4})


# --- self-imitation ----------------------------------------------------------------------------------


def test_self_imitation_adds_its_loss_to_the_ppo_update(fake_data_root: Path) -> None:
    from agents.ppo_update import STATS, MinibatchUpdate

    env = make_env(fake_data_root)
    model = LRNMaskablePPO(
        RouterPolicy, env, n_steps=DEPTH, batch_size=32, seed=0, device="cpu", policy_kwargs=SMALL_ROUTER
    )
    model.learn(DEPTH * N_ENVS)  # a rollout in the buffer
    buffer = model.rollout_buffer
    flat = buffer.flat()
    indices = torch.arange(DEPTH * N_ENVS)
    with torch.no_grad():
        _, log_prob, _ = model.policy.evaluate_tensors(flat["obs"], flat["actions"])
    expected = -(flat["advantages"].clamp_min(0) * log_prob).mean()
    assert float(expected) > 0  # some episodes beat their baseline
    losses = []
    for weight in (0.0, 2.0):
        policy = copy.deepcopy(model.policy)
        update = MinibatchUpdate(
            policy, buffer, 0.0, 0.5, 0.5, True, False, capture=False, self_imitation=weight
        )
        losses.append(float(update(indices)[STATS.index("loss")]))
    assert losses[1] - losses[0] == pytest.approx(2.0 * float(expected), rel=1e-4)
    with pytest.raises(ValueError, match="self_imitation"):
        AgentConfig(self_imitation=-1.0)


def test_baseline_routes_on_the_router_alone_probe_take_the_oracle_loss(fake_data_root: Path) -> None:
    from routing_env.build import make_engine
    from routing_env.config import RoutingConfig

    config = RoutingConfig(
        benchmark="probe_router", benchmark_kwargs={"per_digit": 4, "test_per_digit": 2},
        data_root=fake_data_root, duplicates=2, max_depth=5, device="cpu", loss_source="oracle",
        bonus_weight=0.0, batch_size=32,
    )  # fmt: skip
    engine, _ = make_engine(config)
    engine.begin_batch()
    oracle = engine.oracle_routes[engine.tasks, engine.kinds]  # (B, D)
    assert torch.equal(engine.route_losses(oracle)[0], torch.zeros(32))
    played = engine.rules.random_routes(32, torch.Generator().manual_seed(5))
    expected = (played != oracle).float().mean(1)
    torch.testing.assert_close(engine.route_losses(played)[0], expected)
    engine.set_baseline_routes(oracle)
    out = engine.play(lambda k, obs: played[:, k])
    torch.testing.assert_close(out.final["loss"], expected)
    assert torch.equal(out.final["baseline_reward"], torch.zeros(32))


# --- instance prior ----------------------------------------------------------------------------------


def _marked_images(n: int, corner: str, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, 28, 28)`` noisy images with a white 4x4 square in the top-left or top-right corner."""
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    columns = slice(0, 4) if corner == "left" else slice(24, 28)
    images[:, :, :4, columns] = 1.0
    return images


def test_the_instance_prior_routes_instances_of_one_task_apart_from_the_first_batch() -> None:
    from agents.config import RouterConfig
    from agents.router import LRNRouter, RouterInput

    generator = torch.Generator().manual_seed(0)
    images = torch.cat([_marked_images(64, "left", generator), _marked_images(64, "right", generator)])
    n_actions, depth = 7, 3
    x = RouterInput(
        image=images,
        task=torch.zeros(128, dtype=torch.long),
        route=torch.full((128, depth), n_actions, dtype=torch.long),
        mask=torch.ones(128, n_actions, dtype=torch.bool),
    )

    def split(std: float) -> tuple[LRNRouter, float]:
        """A fresh router and the total variation between its first-step action distributions of the
        two groups of instances."""
        torch.manual_seed(0)
        router = LRNRouter(
            (1, 28, 28), 2, n_actions, depth, RouterConfig(**SMALL_ROUTER, instance_prior_std=std)
        )
        with torch.no_grad():
            probs = torch.softmax(router.forward_tensors(x.image, x.task, x.route, x.mask)[0], -1)
        return router, float((probs[:64].mean(0) - probs[64:].mean(0)).abs().sum() / 2)

    off, off_split = split(0.0)
    on, on_split = split(1.0)
    assert off.instance_prior is None and not any("instance_prior" in k for k in off.state_dict())
    assert on_split > 0.2 > off_split  # a fresh router without it routes both groups alike
    # the bias reads where the image is bright, not how bright it is; and PPO trains it
    assert torch.allclose(on.instance_bias(images), on.instance_bias(images * 0.5), rtol=0.02, atol=0.02)
    assert on.instance_prior.weight.requires_grad
    # on the first step only: later steps score as without the prior
    first = LRNRouter((1, 28, 28), 2, n_actions, depth, RouterConfig(**SMALL_ROUTER, instance_prior_std=1.0))
    first.config.instance_prior_steps = "first"
    later = x.route.clone()
    later[:, 0] = 0
    with torch.no_grad():
        for route, moved in ((x.route, True), (later, False)):
            states, padding = first.encode(RouterInput(x.image, x.task, route, x.mask))
            plain = first.actor(states, padding, x.task, x.mask)
            with_prior = first.masked_logits(RouterInput(x.image, x.task, route, x.mask), states, padding)
            assert (not torch.allclose(plain, with_prior)) is moved
    with pytest.raises(ValueError, match="instance_prior_std"):
        RouterConfig(instance_prior_std=-1.0)
    assert RunConfig.from_settings({}).router.instance_prior_std == 0.0  # off by default
    described = RunConfig.from_settings(
        {"router.instance_prior_std": 1.0, "router.instance_prior_steps": "first"}
    )
    assert "instance prior 1 (4x4 grid, first step)" in describe(dataclasses.asdict(described))
    with pytest.raises(SettingError, match="instance-prior-std is a RouterPolicy option"):
        RunConfig.from_settings({"router.instance_prior_std": 1.0, "run.algo": "static"})
