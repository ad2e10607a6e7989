"""The paper's explicit rules and the study's protocol: per-timestep rewards (eq. 7) reach GAE as the
paper's returns, unused modules are not updated, and a seeded validation split picks epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.policy import RouterPolicy
from agents.rollout import DeviceRolloutBuffer, LRNMaskablePPO
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine
from routing_env.modules import ModulePool, TensorType, lrn_pool_specs
from routing_env.pool_optimizer import PerModuleAdam, PoolOptimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- eq. 7: per-timestep rewards ---------------------------------------------------------------------


def _buffer(depth: int, n_envs: int, gamma: float, gae_lambda: float) -> DeviceRolloutBuffer:
    obs = spaces.Dict({"action_mask": spaces.MultiBinary(4), "task": spaces.Discrete(2)})
    return DeviceRolloutBuffer(
        depth, obs, spaces.Discrete(4), "cpu", gae_lambda=gae_lambda, gamma=gamma, n_envs=n_envs
    )


def test_per_step_rewards_give_the_papers_discounted_returns() -> None:
    """With values 0 and lambda 1, GAE's return at step t is sum_i gamma^(i-t) r_i of the episode."""
    depth, n, gamma = 4, 3, 0.9
    buffer = _buffer(depth, n, gamma, gae_lambda=1.0)
    rewards = torch.rand(n, depth) - 0.5
    for t in range(depth):
        obs = {"action_mask": torch.ones(n, 4, dtype=torch.int8), "task": torch.zeros(n, dtype=torch.long)}
        buffer.add_tensors(
            obs,
            torch.zeros(n),
            torch.zeros(n),
            torch.full((n,), float(t == 0)),
            torch.zeros(n),
            torch.zeros(n),
        )
    buffer.set_step_rewards(rewards)
    buffer.compute_returns_and_advantage(last_values=torch.zeros(n), dones=torch.tensor(True))
    expected = torch.stack(
        [sum(gamma ** (i - t) * rewards[:, i] for i in range(t, depth)) for t in range(depth)]
    )  # (T, n)
    torch.testing.assert_close(buffer.t_returns, expected)
    # the terminal lump sum discounts every reward as if paid at the end: not the paper's returns
    lump = _buffer(depth, n, gamma, gae_lambda=1.0)
    for t in range(depth):
        r = rewards.sum(1) if t == depth - 1 else torch.zeros(n)
        lump.add_tensors(
            obs, torch.zeros(n), r, torch.full((n,), float(t == 0)), torch.zeros(n), torch.zeros(n)
        )
    lump.compute_returns_and_advantage(last_values=torch.zeros(n), dones=torch.tensor(True))
    assert not torch.allclose(lump.t_returns[0], expected[0])


def test_step_rewards_sum_to_the_reward_and_reach_the_buffer(fake_data_root: Path) -> None:
    """The env's final step_rewards sum to its reward (bonus of each step's module, minus the loss at the
    end); LRNMaskablePPO's rollout with reward_timing="per_step" stores exactly them."""
    env = RoutingSB3VecEnv(
        "RoutingMNIST-v0", num_envs=8, max_depth=4, duplicates=2, data_root=fake_data_root, download=False,
        device="cpu", seed=0, max_pairs=64, bonus_weight=0.5,
    )  # fmt: skip
    model = LRNMaskablePPO(
        RouterPolicy, env, n_steps=4, batch_size=32, seed=0, device="cpu",
        policy_kwargs={"d_model": 32, "n_heads": 2, "d_ff": 64},
    )  # fmt: skip
    seen = {}
    play_tensors = env.play_tensors

    def spy(*args, **kwargs):  # the rollout plays each batch of episodes at once
        out = play_tensors(*args, **kwargs)
        seen.update(out.final)
        return out

    env.play_tensors = spy
    model.learn(4 * 8)
    final = seen
    torch.testing.assert_close(final["step_rewards"].sum(1), final["reward"], rtol=1e-5, atol=1e-5)
    assert (final["step_rewards"][:, :-1] >= 0).all()  # bonuses only before the last step
    torch.testing.assert_close(model.rollout_buffer.t_rewards, final["step_rewards"].t())


# --- "if a module is not used in a batch, its parameters will not be updated" ----------------------------


def _pool(seed: int = 0) -> ModulePool:
    image = (1, 6, 6)
    specs = lrn_pool_specs(image, n_classes=3, duplicates=3, conv_channels=2, fc_width=8)
    return ModulePool(specs, TensorType("image", image), seed=seed)


def test_per_module_adam_is_adam_where_every_module_is_used() -> None:
    pool, reference = _pool(), _pool()
    adam = PerModuleAdam(pool, lr=1e-2)
    torch_adam = torch.optim.Adam(reference.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for p, q in zip(pool.parameters(), reference.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        adam.step(torch.ones(pool.n_modules, dtype=torch.bool))
        torch_adam.step()
    for p, q in zip(pool.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_per_module_adamw_decays_only_the_modules_it_steps() -> None:
    """With weight decay, each module is AdamW at its own step count; a module not used is not decayed."""
    pool, reference = _pool(), _pool()
    adam = PerModuleAdam(pool, lr=1e-2, weight_decay=0.5)
    torch_adam = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.5)
    unused = torch.zeros(pool.n_modules, dtype=torch.bool)
    unused[torch.tensor(pool.bank_offsets) + 2] = True  # duplicate 2 of every bank sits out the first step
    # Duplicate 2 alone, from its initial weights: its one step must be AdamW's first.
    late = [p.detach()[2].clone().requires_grad_(True) for p in pool.parameters()]
    late_adam = torch.optim.AdamW(late, lr=1e-2, weight_decay=0.5)
    gen = torch.Generator().manual_seed(0)
    for used in (~unused, torch.ones_like(unused)):
        for p, q in zip(pool.parameters(), reference.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        before = [p.detach().clone() for p in pool.parameters()]
        adam.step(used)
        if not used.all():
            for p, b in zip(pool.parameters(), before, strict=True):
                assert torch.equal(p[2], b[2]) and not torch.equal(p[0], b[0])
        torch_adam.step()
    for x, p in zip(late, pool.parameters(), strict=True):
        x.grad = p.grad[2].clone()
    late_adam.step()
    for p, q, x in zip(pool.parameters(), reference.parameters(), late, strict=True):
        torch.testing.assert_close(p[:2], q[:2], rtol=1e-5, atol=1e-6)  # two AdamW steps, as torch's
        torch.testing.assert_close(p[2], x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("freeze_unused", [True, False])
def test_modules_a_batch_did_not_use_keep_weights_and_moments(freeze_unused: bool) -> None:
    """Batch 1 uses every module; batch 2 only the first duplicate of each bank. With the paper's rule the
    others keep their weights and Adam state; plain Adam moves them through their moments."""
    pool = _pool()
    optimizer = PoolOptimizer(pool, lr=1e-2, lr_decay=1.0, update_every=1, freeze_unused=freeze_unused)
    first = torch.tensor([offset for offset in pool.bank_offsets])  # duplicate 0 of every bank
    for used in (torch.arange(pool.n_modules), first):
        for p in pool.parameters():
            grad = torch.randn_like(p)
            keep = torch.zeros(p.shape[0], dtype=torch.bool)
            bank = next(b for b, bank in enumerate(pool.banks) if any(p is q for q in bank.parameters()))
            offset = pool.bank_offsets[bank]
            keep[[m - offset for m in used.tolist() if offset <= m < offset + p.shape[0]]] = True
            p.grad = grad * keep.view(-1, *([1] * (p.dim() - 1)))  # unused modules get no gradient
        before = {n: p.detach().clone() for n, p in pool.named_parameters()}
        state_before = {k: v.clone() for k, v in optimizer.adam.state.items()} if freeze_unused else None
        optimizer.mark_used(used[None, :])
        optimizer.step()
    for name, p in pool.named_parameters():
        moved = (p.detach() != before[name]).flatten(1).any(1)  # (duplicates,)
        assert moved[0], name
        if freeze_unused:
            assert not moved[1:].any(), f"{name}: an unused module moved"
        else:
            assert moved[1:].all(), f"{name}: plain Adam should move unused modules"
    if freeze_unused:
        for key, value in optimizer.adam.state.items():
            if key.endswith("exp_avg") or key.endswith("exp_avg_sq"):
                torch.testing.assert_close(value[1:], state_before[key][1:], rtol=0, atol=0)


# --- the validation split ------------------------------------------------------------------------------


def test_validation_split_is_a_seeded_stratified_holdout_of_the_training_pairs(fake_data_root: Path) -> None:
    kw = dict(benchmark="mnist", data_root=fake_data_root, download=False, device="cpu", val_fraction=0.1)
    full, _ = make_engine(RoutingConfig(**{**kw, "val_fraction": 0.0}))
    train, _ = make_engine(RoutingConfig(**kw))
    val, _ = make_engine(RoutingConfig(split="val", **kw))
    again, _ = make_engine(RoutingConfig(split="val", **kw))
    other, _ = make_engine(RoutingConfig(split="val", data_seed=1, **kw))
    pairs = lambda e: set(zip(e.data.source_index.tolist(), e.data.tasks.tolist(), strict=True))  # noqa: E731
    assert pairs(train).isdisjoint(pairs(val)) and pairs(train) | pairs(val) == pairs(full)
    assert torch.equal(val.data.source_index, again.data.source_index)  # seeded
    assert not torch.equal(val.data.source_index, other.data.source_index)  # by data_seed
    share = np.bincount(val.data.tasks.numpy()) / np.bincount(full.data.tasks.numpy())
    assert np.allclose(share, 0.1, atol=0.02)  # every task keeps its share
    assert val.config.sequential and not val.training  # walked in order, frozen pool
