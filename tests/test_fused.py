"""The fused programs compute what SB3 computes (on the CPU, where they run eagerly; tests/test_gpu.py
replays them as CUDA graphs): one PPO update through :mod:`agents.ppo_update` gives the parameters and
logs of SB3's own ``train()`` on the same rollout; a rollout collected batch by batch as one program stores
what the env's step-by-step path gives for the same actions, and the policy's own numbers for them; GAE
as batched kernels is SB3's; Gumbel-max sampling draws from the softmax."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from agents import rollout_buffer
from agents.policy import RouterPolicy, masked_log_prob_entropy, sample_logits
from agents.rollout import LRNPPO, LRNMaskablePPO
from agents.rollout_buffer import DeviceRolloutBuffer, gae_advantages
from routing_env import RoutingSB3VecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_ROUTER = dict(d_model=32, n_heads=2, d_ff=64)
N_ENVS, DEPTH = 8, 4


def make_env(root: Path) -> RoutingSB3VecEnv:
    return RoutingSB3VecEnv(
        "RoutingMNIST-v0", num_envs=N_ENVS, max_depth=DEPTH, data_root=root, download=False, duplicates=2,
        device="cpu", seed=0, max_pairs=256, bonus_weight=0.5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env(fake_data_root: Path) -> RoutingSB3VecEnv:
    return make_env(fake_data_root)


# --- the PPO update ----------------------------------------------------------------------------------


def _recording(buffer: DeviceRolloutBuffer, drawn: list) -> None:
    """Make ``buffer`` remember every permutation it draws (SB3's get() and the fused update draw one per
    epoch from torch's generator)."""
    draw = buffer.permutation

    def permutation() -> torch.Tensor:
        drawn.append(draw())
        return drawn[-1]

    buffer.permutation = permutation


def _twin(model):
    """A copy of ``model`` whose policy, optimizer and rollout buffer are its own, with a fresh logger."""
    twin = copy.copy(model)
    twin.policy = copy.deepcopy(model.policy)
    twin.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    twin._minibatch_update = None
    twin.set_logger(Logger(folder=None, output_formats=[]))
    return twin


@pytest.mark.parametrize(
    ("algo_class", "parent", "kwargs"),
    [
        # 32 transitions: 2 minibatches x 3 epochs
        (LRNMaskablePPO, MaskablePPO, dict(batch_size=16, n_epochs=3)),
        # minibatches of 12, 12 and 8; value clipping and an entropy bonus
        (LRNMaskablePPO, MaskablePPO, dict(batch_size=12, n_epochs=2, clip_range_vf=0.1, ent_coef=0.01)),
        (LRNPPO, PPO, dict(batch_size=16, n_epochs=2, normalize_advantage=False, clip_range=0.05)),
    ],
    ids=["maskable_ppo", "uneven_minibatches_value_clipping", "ppo"],
)
def test_fused_update_gives_sb3s_parameters_and_logs(
    env: RoutingSB3VecEnv, algo_class, parent, kwargs
) -> None:
    model = algo_class(
        RouterPolicy, env, n_steps=DEPTH, seed=0, device="cpu", learning_rate=3e-3,
        policy_kwargs=SMALL_ROUTER, **kwargs,
    )  # fmt: skip
    # One rollout and its update: the rollout's log-probabilities and values are now stale, so the
    # update below clips some ratios and values.
    model.learn(N_ENVS * DEPTH)
    assert model._minibatch_update is not None, "the fused update did not run"
    reference, fused = _twin(model), _twin(model)
    before = [p.detach().clone() for p in fused.policy.parameters()]
    drawn: dict[str, list] = {"reference": [], "fused": []}
    _recording(reference.rollout_buffer, drawn["reference"])
    _recording(fused.rollout_buffer, drawn["fused"])
    torch.manual_seed(1)
    parent.train(reference)  # SB3's / sb3-contrib's own train()
    torch.manual_seed(1)
    fused.train()
    assert fused._minibatch_update is not None and reference._minibatch_update is None
    assert len(drawn["fused"]) == kwargs["n_epochs"]
    for a, b in zip(drawn["reference"], drawn["fused"], strict=True):
        assert torch.equal(a, b)  # the same minibatches

    named = list(fused.policy.named_parameters())
    for (name, p), q in zip(named, reference.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(p, p0) for (_, p), p0 in zip(named, before, strict=True))
    for p, q in zip(fused.policy.parameters(), reference.policy.parameters(), strict=True):
        state, reference_state = fused.policy.optimizer.state[p], reference.policy.optimizer.state[q]
        torch.testing.assert_close(state["exp_avg_sq"], reference_state["exp_avg_sq"], rtol=1e-5, atol=1e-12)

    logged, expected = fused.logger.name_to_value, reference.logger.name_to_value
    assert set(logged) == set(expected)
    assert 0 < expected["train/clip_fraction"] < 1  # the clipping mattered
    for key, value in expected.items():
        assert logged[key] == pytest.approx(float(value), rel=1e-5, abs=1e-7), key


def test_settings_the_fused_update_does_not_cover_take_sb3s_train(env: RoutingSB3VecEnv) -> None:
    """target_kl stops early on a host read per minibatch: SB3's own train() runs, and logs as SB3 does."""
    model = LRNMaskablePPO(
        RouterPolicy, env, n_steps=DEPTH, batch_size=16, seed=0, device="cpu", target_kl=0.01,
        policy_kwargs=SMALL_ROUTER,
    )  # fmt: skip
    model.learn(N_ENVS * DEPTH)
    assert model._minibatch_update is None
    assert "train/approx_kl" in model.logger.name_to_value


# --- the rollout ---------------------------------------------------------------------------------------


class _StepRecorder(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.rollout_starts, self.timesteps, self.actions, self.dones = 0, [], [], []

    def _on_rollout_start(self) -> None:
        self.rollout_starts += 1

    def _on_step(self) -> bool:
        self.timesteps.append(self.model.num_timesteps)
        self.actions.append(self.locals["actions"].clone())
        self.dones.append(self.locals["dones"].tolist())
        return True


@pytest.mark.parametrize("reward_timing", ["per_step", "terminal"])
def test_fused_rollout_stores_what_the_steps_give(fake_data_root: Path, reward_timing: str) -> None:
    """Two batches collected as programs, against a twin env stepped one step at a time with the stored
    actions: the same observations and rewards; the stored values and log-probabilities are the policy's
    (SB3's evaluate_actions) for them; GAE is SB3's; callbacks hear every step."""
    env, twin = make_env(fake_data_root), make_env(fake_data_root)
    n_steps = 2 * DEPTH
    model = LRNMaskablePPO(
        RouterPolicy, env, n_steps=n_steps, batch_size=16, seed=0, device="cpu", reward_timing=reward_timing,
        policy_kwargs=SMALL_ROUTER,
    )  # fmt: skip
    recorder = _StepRecorder()
    _, callback = model._setup_learn(N_ENVS * n_steps, recorder)
    assert model.collect_rollouts(env, callback, model.rollout_buffer, n_steps)
    assert model._episode_program is not None, "the fused rollout did not run"
    buffer = model.rollout_buffer
    assert buffer.full and model.num_timesteps == N_ENVS * n_steps
    assert recorder.rollout_starts == 1
    assert recorder.timesteps == [N_ENVS * (t + 1) for t in range(n_steps)]
    assert torch.equal(torch.stack(recorder.actions), buffer.t_actions)
    assert recorder.dones == [[t % DEPTH == DEPTH - 1] * N_ENVS for t in range(n_steps)]

    twin.seed(0)  # as the model's seed made env's first reset
    twin.reset()
    rewards, env_rewards = [], []
    for t in range(n_steps):
        obs = twin.tensor_observation()
        for key, value in obs.items():
            assert torch.equal(buffer.obs[key][t].reshape(value.shape), value), (t, key)
        actions = buffer.t_actions[t]
        with torch.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(obs, actions)
        torch.testing.assert_close(buffer.t_values[t], values.flatten(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(buffer.t_log_probs[t], log_prob, rtol=1e-5, atol=1e-6)
        _, reward, done, final = twin.step_tensors(actions)
        rewards.append(reward)
        env_rewards.append(reward)
        if done and reward_timing == "per_step":
            rewards[-DEPTH:] = list(final["step_rewards"].t())
    assert torch.equal(buffer.t_rewards, torch.stack(rewards))
    assert buffer.t_episode_starts[:, 0].tolist() == [1.0, 0, 0, 0] * 2
    assert env.engine.stats() == twin.engine.stats() and env.engine.stats()["train_invalid_actions"] == 0

    sb3 = RolloutBuffer(n_steps, spaces.Box(0, 1, (1,)), spaces.Discrete(2), "cpu", 0.95, 0.99, N_ENVS)
    sb3.rewards, sb3.values = buffer.t_rewards.numpy(), buffer.t_values.numpy()
    sb3.episode_starts = buffer.t_episode_starts.numpy()
    sb3.compute_returns_and_advantage(torch.zeros(N_ENVS), np.ones(N_ENVS))
    torch.testing.assert_close(buffer.t_advantages, torch.as_tensor(sb3.advantages), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buffer.t_returns, torch.as_tensor(sb3.returns), rtol=1e-5, atol=1e-6)

    # SB3's episode records (read a rollout late): each episode's return, its env rewards summed
    assert not model.ep_info_buffer
    assert model.collect_rollouts(env, callback, model.rollout_buffer, n_steps)
    episode_returns = torch.stack(env_rewards).view(2, DEPTH, N_ENVS).sum(1).flatten()
    assert [info["l"] for info in model.ep_info_buffer] == [DEPTH] * 2 * N_ENVS
    torch.testing.assert_close(torch.tensor([info["r"] for info in model.ep_info_buffer]), episode_returns)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "loop"])
def test_gae_is_sb3s(monkeypatch: pytest.MonkeyPatch, batched: bool) -> None:
    """Episodes that start anywhere, different in every env, and a rollout cut off mid-episode."""
    if not batched:
        monkeypatch.setattr(rollout_buffer, "GAE_MATRIX_LIMIT", 0)
    steps, envs, gamma, lam = 9, 5, 0.97, 0.9
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(steps, envs, generator=gen), torch.randn(steps, envs, generator=gen)
    starts = (torch.rand(steps, envs, generator=gen) < 0.3).float()
    last_values, dones = torch.randn(envs, generator=gen), np.array([1, 0, 1, 0, 0], dtype=bool)
    sb3 = RolloutBuffer(steps, spaces.Box(0, 1, (1,)), spaces.Discrete(2), "cpu", lam, gamma, envs)
    sb3.rewards, sb3.values, sb3.episode_starts = rewards.numpy(), values.numpy(), starts.numpy()
    sb3.compute_returns_and_advantage(last_values, dones)
    got = gae_advantages(
        rewards, values, starts, last_values, 1.0 - torch.as_tensor(dones).float(), gamma, lam
    )
    torch.testing.assert_close(got, torch.as_tensor(sb3.advantages), rtol=1e-5, atol=1e-6)


# --- sampling and the distribution's numbers ---------------------------------------------------------------


def test_gumbel_max_draws_from_the_masked_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0], [3.0, 3.0, 0.0, -2.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, True]])
    masked = logits.masked_fill(~mask, -1e8)
    n = 40_000
    draws = sample_logits(masked.repeat(n, 1)).view(n, 2)
    frequencies = torch.stack([torch.bincount(draws[:, row], minlength=4) for row in range(2)]).float() / n
    torch.testing.assert_close(frequencies, torch.softmax(masked, dim=1), rtol=0, atol=0.01)
    assert not (~mask).gather(1, draws.t()).any()  # masked actions are never drawn


def test_log_prob_and_entropy_are_maskable_categoricals(env: RoutingSB3VecEnv) -> None:
    policy = RouterPolicy(env.observation_space, env.action_space, lambda _: 1e-3, **SMALL_ROUTER)
    env.reset()
    obs = env.tensor_observation()
    actions = torch.multinomial(obs["action_mask"].float(), 1).squeeze(1)
    with torch.no_grad():
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        fused = policy.evaluate_tensors(obs, actions)
    torch.testing.assert_close(fused[0], values.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(fused[1], log_prob, rtol=0, atol=0)
    torch.testing.assert_close(fused[2], entropy, rtol=0, atol=0)
    logits = policy.get_distribution(obs).distribution.logits
    assert masked_log_prob_entropy(logits, obs["action_mask"] > 0, actions)[1].gt(0).all()
