"""Every SB3 and sb3-contrib algorithm that takes the env's spaces runs on it with the policy that
docs/algorithms.md's table names (``agents.algorithms.SB3_SETUPS``), and VecNormalize works or fails
clearly.

Fake MNIST, a tiny router (d_model 32) and pool, a few steps each, CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from agents.algorithms import ALGORITHMS, SB3_SETUPS, SB3Setup, load
from agents.config import AgentConfig, RouterConfig
from agents.policy import RouterPolicy
from routing_env import RoutingSB3VecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ENVS, DEPTH = 8, 3
ROUTER = dict(d_model=32, n_heads=2, d_ff=64, conv_channels=(4, 8))
# Per algorithm: a few steps' worth of its hyper-parameters (everything else is the library's default).
SMALL: dict[str, dict[str, Any]] = {
    "MaskablePPO": dict(n_steps=DEPTH, batch_size=N_ENVS * DEPTH, n_epochs=1),
    "PPO": dict(n_steps=DEPTH, batch_size=N_ENVS * DEPTH, n_epochs=1),
    "A2C": dict(n_steps=DEPTH),
    "TRPO": dict(n_steps=DEPTH, batch_size=N_ENVS * DEPTH, n_critic_updates=1, cg_max_steps=3),
    "DQN": dict(learning_starts=N_ENVS * DEPTH, batch_size=16, buffer_size=1000, target_update_interval=8),
    "QRDQN": dict(learning_starts=N_ENVS * DEPTH, batch_size=16, buffer_size=1000, target_update_interval=8),
    "RecurrentPPO": dict(n_steps=DEPTH, batch_size=N_ENVS * DEPTH, n_epochs=1),
    "ARS": dict(n_delta=2, n_eval_episodes=1),
}


@pytest.fixture(scope="module")
def kw(fake_data_root: Path) -> dict[str, Any]:
    return dict(
        data_root=fake_data_root,
        download=False,
        device="cpu",
        duplicates=1,
        max_depth=DEPTH,
        max_pairs=128,
        seed=0,
    )


def build(setup: SB3Setup, kw: dict[str, Any]):
    """The algorithm on its env, as the table says (``SB3Setup.build``), with a tiny router."""
    policy_kwargs: dict[str, Any] = {}
    if setup.policy.endswith("RouterPolicy"):
        policy_kwargs.update(ROUTER)
    elif "features_extractor_class" in setup.policy_kwargs:
        policy_kwargs["features_extractor_kwargs"] = dict(ROUTER)
    if setup.env == "vec":
        env = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=N_ENVS, **kw)
    else:
        env = gym.wrappers.FlattenObservation(gym.make("RoutingMNIST-v0", batch_size=N_ENVS, **kw))
    return setup.build(env, policy_kwargs=policy_kwargs, seed=0, device="cpu", **SMALL[setup.name])


def test_the_default_multi_input_policy_on_mnist_is_one_line_naming_the_extractor(kw: dict[str, Any]) -> None:
    """SB3's own MultiInputPolicy runs NatureCNN on MNIST's 28x28 images and fails deep in torch; built
    from the table's entry it is one line that names the extractor to use."""
    (dqn,) = [s for s in SB3_SETUPS if s.name == "DQN"]
    env = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=N_ENVS, **kw)
    with pytest.raises(ValueError) as info:
        dqn.build(env, policy="MultiInputPolicy", seed=0, device="cpu", **SMALL["DQN"])
    line = str(info.value)
    assert len(line.splitlines()) == 1
    assert "needs images of 36x36 or more, this env's are 28x28" in line
    assert line.endswith("pass policy_kwargs=dict(features_extractor_class=agents.RouterFeaturesExtractor)")
    with pytest.raises(RuntimeError, match="[Kk]ernel size"):  # what SB3 alone says
        load(dqn.algo_class)("MultiInputPolicy", env, device="cpu")


def test_the_table_names_every_discrete_dict_algorithm() -> None:
    import sb3_contrib
    import stable_baselines3

    names = {s.name for s in SB3_SETUPS}
    assert names == set(SMALL)
    discrete = {"PPO", "A2C", "DQN"}  # SAC, TD3, DDPG need Box actions; HER a goal env
    contrib = {"ARS", "MaskablePPO", "QRDQN", "RecurrentPPO", "TRPO"}  # TQC, CrossQ need Box actions
    assert discrete <= set(stable_baselines3.__all__) and contrib <= set(sb3_contrib.__all__)
    assert names == discrete | contrib


def test_each_algo_trains_the_algorithm_its_table_row_names(kw: dict[str, Any]) -> None:
    """One registry: an ``--algo`` entry's SB3 row (docs/algorithms.md's table) is the algorithm and policy
    its trainer builds, and its builder takes the run's settings as flat arguments."""
    env = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=N_ENVS, **kw)
    with_rows = [a for a in ALGORITHMS.values() if a.sb3 is not None]
    assert [a.name for a in with_rows] == ["maskable_ppo", "ppo", "a2c", "dqn"]
    for algorithm in with_rows:
        trainer = algorithm.build(
            env, seed=3, agent=AgentConfig(minibatch=8, router_lr=1e-3), router=RouterConfig(**ROUTER)
        )
        assert isinstance(trainer.model, load(algorithm.sb3.algo_class)), algorithm.name
        assert isinstance(trainer.model.policy, RouterPolicy) == algorithm.router_policy, algorithm.name
        assert trainer.model.seed == 3 and trainer.router_lr(0) == 1e-3
    with pytest.raises(TypeError, match="unknown builder arguments"):
        ALGORITHMS["ppo"].build(env, cfg=None)


@pytest.mark.parametrize("setup", SB3_SETUPS, ids=[s.name for s in SB3_SETUPS])
def test_algorithm_trains_on_the_env(setup: SB3Setup, kw: dict[str, Any]) -> None:
    model = build(setup, kw)
    engine = model.get_env().get_attr("engine")[0]
    pool_before = {k: v.clone() for k, v in engine.pool.state_dict().items()}
    policy_before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(4 * N_ENVS * DEPTH)
    assert model.num_timesteps >= 4 * N_ENVS * DEPTH
    # The agent learned (its parameters moved) and the env trained its pool on the networks built.
    assert any(not torch.equal(a, b.detach()) for a, b in zip(policy_before, model.policy.parameters()))
    assert any(not torch.equal(v, engine.pool.state_dict()[k]) for k, v in pool_before.items())
    obs = model.get_env().reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (model.get_env().num_envs,)
    assert ((0 <= actions) & (actions < engine.pool.n_actions)).all()


def test_vec_normalize_works_on_the_image_or_fails_clearly(kw: dict[str, Any]) -> None:
    venv = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=N_ENVS, **kw)
    with pytest.raises(ValueError, match="norm_obs_keys"):  # SB3's own message: the mask is no Box
        VecNormalize(venv)
    normed = VecNormalize(venv, norm_obs_keys=["image"])
    with pytest.raises(ValueError, match="normalize_images=False"):
        PPO(RouterPolicy, normed, policy_kwargs=ROUTER, device="cpu")
    model = MaskablePPO(
        RouterPolicy,
        normed,
        policy_kwargs=dict(ROUTER, normalize_images=False),
        device="cpu",
        **SMALL["MaskablePPO"],
    )
    model.learn(2 * N_ENVS * DEPTH)
    obs = normed.reset()
    assert obs["image"].dtype == np.float32 and obs["image"].min() < 0  # normalised, not divided by 255
    assert normed.obs_rms["image"].count > 1
