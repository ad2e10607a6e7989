"""The Gymnasium env, the Gymnasium vector env and the SB3 VecEnv: API checkers, conventions, invalid
actions, seeding, the test split's walk and the errors for bad kwargs or missing data.

Runs on the real MNIST / mini-ImageNet when ``$ROUTING_ENV_DATA`` holds them, on fake data otherwise;
CIFAR-100 is always fake here. Pools and batches are small; everything runs on the CPU.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3.common.env_checker
import torch
from gymnasium.utils.env_checker import check_env
from sb3_contrib.common.maskable.utils import get_action_masks

import routing_env
from routing_env import DataError, RoutingEnv, RoutingSB3VecEnv, RoutingVectorEnv

# Many small ops: one intra-op thread is faster on a small shared CPU (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


ENV_IDS = ["RoutingMNIST-v0", "RoutingCIFAR-v0", "RoutingMIN-v0"]
FINAL_INFO_KEYS = {
    "route", "loss", "correct", "prediction", "bonus", "reward_loss", "reward_bonus", "step_rewards", "task",
    "kind", "label", "pair_index", "epoch",
}  # fmt: skip


@pytest.fixture(scope="module")
def kw(data_root: Path) -> dict[str, Any]:
    """Small env kwargs (MNIST-sized pool: duplicates 2)."""
    return dict(
        data_root=data_root, download=False, device="cpu", duplicates=2, max_depth=4, max_pairs=64, seed=0
    )


def env_kwargs(env_id: str, kw: dict[str, Any]) -> dict[str, Any]:
    if env_id == "RoutingMNIST-v0":
        return dict(kw)
    # Frozen pools for the bigger images (the API does not depend on training; MNIST checks it trained),
    # and one duplicate of each kind for MIN, whose FC-from-conv layer is 32*84*84 -> 256.
    return {**kw, "train_modules": False, "duplicates": 1 if env_id == "RoutingMIN-v0" else 2}


def first_valid(obs: dict[str, np.ndarray]) -> int:
    return int(np.flatnonzero(obs["action_mask"])[0])


def random_valid(rng: np.random.Generator) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Uniform over the valid actions of each row of a (batched or single) observation."""

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        masks = np.atleast_2d(obs["action_mask"]).astype(bool)
        actions = np.array([rng.choice(np.flatnonzero(m)) for m in masks], dtype=np.int64)
        return actions if obs["action_mask"].ndim == 2 else actions[0]

    return act


# --- API checkers and single-env conventions ---------------------------------------------------------


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_checkers_pass(env_id: str, kw: dict[str, Any]) -> None:
    # A fresh env without a seed kwarg: its first seeded reset also seeds the pool, and the checkers
    # compare the generator after that reset with the one after a later reset with the same seed.
    unseeded = {k: v for k, v in env_kwargs(env_id, kw).items() if k != "seed"}
    env = gym.make(env_id, batch_size=4, bonus_weight=0.5, **unseeded)
    assert env.unwrapped.config.seed is None
    assert isinstance(env.unwrapped, RoutingEnv)
    assert env.unwrapped.config.benchmark == {"RoutingMNIST-v0": "mnist", "RoutingCIFAR-v0": "cifar"}.get(
        env_id, "min"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert not [str(w.message) for w in caught]  # not even a warning from Gymnasium's checker
    with warnings.catch_warnings():
        # SB3's CnnPolicy wants images of 36x36 or more: a hint about SB3's default policy, not the env
        warnings.filterwarnings("ignore", message=".*minimal resolution for an image.*")
        stable_baselines3.common.env_checker.check_env(env.unwrapped, warn=True)

    # And one episode through gym.make's wrappers (with Gymnasium's passive checker), warnings as errors.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs, info = env.reset(seed=1)
        assert info == {}
        n_actions = env.action_space.n
        assert (
            env.unwrapped.action_names[-1] == "PASS"
            and len(env.get_wrapper_attr("action_names")) == n_actions
        )
        for k in range(kw["max_depth"]):
            assert env.observation_space.contains(obs)
            assert obs["step"] == k
            assert np.array_equal(env.unwrapped.action_masks(), obs["action_mask"].astype(bool))
            assert env.unwrapped.action_masks().dtype == bool
            obs, reward, terminated, truncated, info = env.step(first_valid(obs))
            assert terminated == (k == kw["max_depth"] - 1) and truncated is False
            assert info["invalid_action"] is False
            if not terminated:
                assert reward == 0.0 and set(info) == {"invalid_action"}
    assert env.observation_space.contains(obs) and obs["step"] == kw["max_depth"]
    assert not obs["action_mask"].any()  # nothing is valid after the last step
    assert set(info) == FINAL_INFO_KEYS | {"invalid_action"}
    assert list(obs["route"]) == info["route"]
    assert info["reward_loss"] == pytest.approx(-info["loss"])
    assert info["reward_bonus"] == pytest.approx(0.5 * info["bonus"])
    assert reward == pytest.approx(info["reward_loss"] + info["reward_bonus"], abs=1e-5)
    assert info["correct"] == (info["prediction"] == info["label"])
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(0)  # the episode is over


def test_single_env_updates_the_pool_every_batch_size_episodes(kw: dict[str, Any]) -> None:
    env = gym.make("RoutingMNIST-v0", **{**kw, "batch_size": 3, "max_depth": 2, "lr": 1e-2}).unwrapped

    def weights() -> torch.Tensor:
        return env.engine.pool.banks[0].weight.detach().clone()  # the input convs (in every network)

    start = weights()
    act = random_valid(np.random.default_rng(0))
    for episode in range(1, 7):
        obs, _ = env.reset()
        done = False
        while not done:
            obs, _, done, _, info = env.step(act(obs))
        assert torch.equal(weights(), start) == (episode % 3 != 0), episode
        start = weights()


# --- Gymnasium vector env ----------------------------------------------------------------------------


def test_make_vec(kw: dict[str, Any]) -> None:
    n, depth = 8, 3
    env = gym.make_vec(
        "RoutingMNIST-v0", num_envs=n, vectorization_mode="vector_entry_point", **{**kw, "max_depth": depth}
    )
    vec: RoutingVectorEnv = env.unwrapped
    assert isinstance(vec, RoutingVectorEnv) and env.num_envs == n and vec.engine.batch_size == n
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    n_actions = env.single_action_space.n
    obs, info = env.reset(seed=0)
    assert info == {}
    assert env.observation_space.contains(obs)
    assert obs["image"].shape == (n, 1, 28, 28) and obs["image"].dtype == np.uint8
    assert obs["route"].shape == (n, depth) and (obs["route"] == n_actions).all()
    assert obs["action_mask"].shape == (n, n_actions)
    act = random_valid(np.random.default_rng(0))
    returns = np.zeros(n)
    batches = []
    for _ in range(2):
        for k in range(depth):
            assert (obs["step"] == k).all()
            assert np.array_equal(vec.action_masks(), obs["action_mask"].astype(bool))
            actions = act(obs)
            obs, rewards, terminated, truncated, infos = env.step(actions)
            assert env.observation_space.contains(obs)
            assert rewards.shape == (n,) and rewards.dtype == np.float32
            assert terminated.shape == truncated.shape == (n,) and not truncated.any()
            assert not infos.get("final_info", infos)["invalid_action"].any()
            returns += rewards
            if k < depth - 1:
                assert not terminated.any() and set(infos) == {"invalid_action", "_invalid_action"}
                assert not infos["invalid_action"].any() and infos["_invalid_action"].all()
                assert (rewards == 0).all()
        assert terminated.all()
        # Gymnasium's same-step autoreset layout: the last step's info under final_info, masks beside keys
        assert set(infos) == {"final_obs", "_final_obs", "final_info", "_final_info"}
        assert infos["_final_obs"].all() and infos["_final_info"].all()
        final = infos["final_info"]
        keys = FINAL_INFO_KEYS | {"invalid_action"}
        assert set(final) == keys | {f"_{k}" for k in keys}
        for key in keys:
            assert final[key].shape[0] == n and final[f"_{key}"].all(), key
        final_obs = infos["final_obs"]
        assert final_obs.dtype == object and final_obs.shape == (n,)
        for i in range(n):
            assert env.single_observation_space.contains(final_obs[i])
            assert final_obs[i]["step"] == depth and not final_obs[i]["action_mask"].any()
            assert np.array_equal(final_obs[i]["route"], final["route"][i])
            assert final_obs[i]["route"][-1] == actions[i]
        # autoreset in the same step: the next batch's first observations
        assert (obs["step"] == 0).all() and (obs["route"] == n_actions).all()
        np.testing.assert_allclose(returns, -final["loss"] + final["bonus"], rtol=1e-5, atol=1e-5)
        returns[:] = 0
        batches.append(final["pair_index"])
    pairs = np.concatenate(batches)
    assert len(set(pairs.tolist())) == len(pairs)  # a shuffled pass draws each pair at most once
    env.close()


def test_vector_env_rejects_a_batch_size_other_than_num_envs(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="batch_size=4 differs from num_envs=8"):
        gym.make_vec(
            "RoutingMNIST-v0", num_envs=8, vectorization_mode="vector_entry_point", batch_size=4, **kw
        )
    env = gym.make_vec(
        "RoutingMNIST-v0", num_envs=4, vectorization_mode="vector_entry_point", batch_size=4, **kw
    )
    assert env.unwrapped.engine.batch_size == 4
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        gym.make_vec("RoutingMNIST-v0", num_envs=0, vectorization_mode="vector_entry_point", **kw)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=0, **kw)


# --- SB3 VecEnv --------------------------------------------------------------------------------------


def test_sb3_vec_env_conventions(kw: dict[str, Any]) -> None:
    n, depth = 8, kw["max_depth"]
    venv = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=n, **kw)
    n_actions = venv.action_space.n
    assert venv.num_envs == n and venv.engine.batch_size == n
    venv.seed(3)
    obs = first = venv.reset()
    assert isinstance(obs, dict) and obs["image"].shape == (n, 1, 28, 28)
    assert (obs["step"] == 0).all()
    act = random_valid(np.random.default_rng(1))
    returns = np.zeros(n)
    for k in range(depth):
        masks = get_action_masks(venv)
        assert masks.shape == (n, n_actions) and masks.dtype == bool
        assert np.array_equal(masks, obs["action_mask"].astype(bool))
        listed = venv.env_method("action_masks")
        assert len(listed) == n and all(m.shape == (n_actions,) for m in listed)
        assert np.array_equal(np.stack(listed), masks)
        picked = venv.env_method("action_masks", indices=[1, 5])
        assert np.array_equal(np.stack(picked), masks[[1, 5]])
        obs, rewards, dones, infos = venv.step(act(obs))
        returns += rewards
        assert rewards.shape == dones.shape == (n,) and len(infos) == n
        assert dones.all() == (k == depth - 1) and dones.any() == dones.all()
        if k < depth - 1:
            assert all(set(i) == {"invalid_action"} for i in infos)
    assert (obs["step"] == 0).all() and (obs["route"] == n_actions).all()  # the next batch
    for i, info in enumerate(infos):
        terminal = info["terminal_observation"]
        assert venv.observation_space.contains(terminal)
        assert terminal["step"] == depth and np.array_equal(terminal["route"], info["route"])
        assert info["episode"]["l"] == depth
        assert info["episode"]["r"] == pytest.approx(returns[i], abs=1e-5)
        assert FINAL_INFO_KEYS <= set(info)
    venv.seed(3)  # SB3's seeding: the next reset starts the same walk again
    again = venv.reset()
    assert np.array_equal(again["image"], first["image"]) and np.array_equal(again["task"], first["task"])
    assert venv.get_attr("action_names") == [venv.action_names] * n
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * n
    assert RoutingSB3VecEnv("mnist", num_envs=2, **kw).engine.data is not None  # a benchmark name works too


def test_sb3_vec_env_rejects_other_env_ids(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not a routing env id"):
        RoutingSB3VecEnv("CartPole-v1", num_envs=2, **kw)
    with pytest.raises(ValueError, match="unknown env id 'NoSuchEnv-v0'"):
        RoutingSB3VecEnv("NoSuchEnv-v0", num_envs=2, **kw)


# --- invalid actions ---------------------------------------------------------------------------------


def test_single_env_invalid_action(kw: dict[str, Any]) -> None:
    env = gym.make("RoutingMNIST-v0", invalid_action_penalty=0.25, **kw).unwrapped
    pass_action = env.engine.pool.pass_action
    obs, _ = env.reset(seed=0)
    assert not obs["action_mask"][pass_action]
    obs, reward, _, _, info = env.step(pass_action)  # PASS is never valid at step 0
    assert info["invalid_action"] is True and reward == pytest.approx(-0.25)
    assert obs["route"][0] == 0  # replaced by the lowest valid module (input_conv[0])
    obs, reward, _, _, info = env.step(0)  # input_conv at a hidden step
    assert info["invalid_action"] is True and reward == pytest.approx(-0.25)
    assert obs["route"][1] == pass_action  # replaced by PASS where PASS is valid
    obs, reward, _, _, info = env.step(first_valid(obs))
    assert info["invalid_action"] is False and reward == 0.0
    obs, reward, done, _, info = env.step(pass_action)  # PASS at the last step: lowest valid head
    assert done and info["invalid_action"] is True
    # ids: input_conv 0-1, hidden_conv 2-3, ..., head_from_conv 8-9, head_from_fc 10-11, PASS 12
    assert info["route"] == [0, 12, 2, 8]
    assert reward == pytest.approx(-0.25 + info["reward_loss"] + info["reward_bonus"], abs=1e-5)
    assert env.engine.stats()["train_invalid_actions"] == 3.0


@pytest.mark.parametrize("action", [-1, 13, 1.5, True, np.float32(2.0), np.array([1, 2]), 2**70, "3"])
def test_single_env_action_outside_the_space(kw: dict[str, Any], action: Any) -> None:
    env = gym.make("RoutingMNIST-v0", **kw).unwrapped
    assert env.action_space.n == 13
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(action)
    obs, *_ = env.step(np.int64(0))  # numpy integers (what SB3 passes) are fine, and nothing moved
    assert obs["step"] == 1


def test_vector_envs_invalid_and_out_of_space_actions(kw: dict[str, Any]) -> None:
    n = 4
    gvec = gym.make_vec("RoutingMNIST-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)
    svec = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=n, **kw)
    for env in (gvec, svec):
        env.reset()
        for bad in ([0, 0, 0, 13], [-1, 0, 0, 0], [0.0, 1.0, 0.0, 1.0], [0, 0, 0]):
            with pytest.raises(ValueError):
                env.step(np.array(bad))
    _, rewards, _, _, infos = gvec.step(np.array([12, 0, 1, 12]))  # PASS at step 0 is invalid
    assert infos["invalid_action"].tolist() == [True, False, False, True]
    assert rewards.tolist() == [-1.0, 0.0, 0.0, -1.0]
    obs, rewards, _, infos = svec.step(np.array([0, 5, 12, 1]))
    assert [i["invalid_action"] for i in infos] == [False, True, True, False]
    assert rewards.tolist() == [0.0, -1.0, -1.0, 0.0]
    assert obs["route"][:, 0].tolist() == [0, 0, 0, 1]


def test_masks_handed_out_are_copies(kw: dict[str, Any]) -> None:
    """The engine computes a step's mask once and reuses it; a caller that edits the mask it was given
    (or the observation's) must not make an invalid action pass."""
    n = 4
    gvec = gym.make_vec("RoutingMNIST-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)
    svec = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=n, **kw)
    single = gym.make("RoutingMNIST-v0", **kw)
    for env in (gvec, svec, single):
        obs = env.reset()[0] if env is not svec else env.reset()
        masks = env.unwrapped.action_masks() if env is single else env.action_masks()
        assert not masks[..., 12].any()  # PASS at step 0 is invalid
        masks[...] = True
        obs["action_mask"][...] = 1
    _, _, _, _, infos = gvec.step(np.array([12, 0, 12, 0]))
    assert infos["invalid_action"].tolist() == [True, False, True, False]
    _, _, _, infos = svec.step(np.array([12, 12, 0, 0]))
    assert [i["invalid_action"] for i in infos] == [True, True, False, False]
    _, reward, *_ = single.step(12)
    assert reward == -1.0


# --- seeding -----------------------------------------------------------------------------------------


def play(env: gym.Env, seed: int | None, episodes: int, policy_seed: int = 0) -> list[tuple]:
    """``episodes`` episodes after ``env.reset(seed=seed)``: every observation, route and reward."""
    act = random_valid(np.random.default_rng(policy_seed))
    record = []
    obs, _ = env.reset(seed=seed)
    for e in range(episodes):
        if e:
            obs, _ = env.reset()
        done = False
        while not done:
            before = {k: v.copy() for k, v in obs.items()}
            obs, reward, done, _, info = env.step(act(obs))
            record.append((before, reward))
        record.append((info["route"], info["pair_index"], obs["image"].copy()))
    return record


def assert_same_episodes(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x[0], dict):
            assert x[0].keys() == y[0].keys()
            for key in x[0]:
                np.testing.assert_array_equal(x[0][key], y[0][key], err_msg=key)
            assert x[1] == y[1]  # rewards, bit for bit
        else:
            assert x[0] == y[0] and x[1] == y[1]
            np.testing.assert_array_equal(x[2], y[2])


def test_same_seed_same_episodes(kw: dict[str, Any]) -> None:
    # batch_size 3 < episodes: the collapse-bonus window fills and wraps
    frozen = {**kw, "max_pairs": 200, "batch_size": 3, "train_modules": False, "max_depth": 3}
    a = gym.make("RoutingMNIST-v0", **frozen)
    b = gym.make("RoutingMNIST-v0", **frozen)
    first = play(a, seed=5, episodes=5)
    assert_same_episodes(first, play(b, seed=5, episodes=5))  # another env
    assert_same_episodes(first, play(a, seed=5, episodes=5))  # the same env, seeded again
    other = play(a, seed=6, episodes=5)
    assert [r[1] for r in other if len(r) == 3] != [r[1] for r in first if len(r) == 3]  # other pairs


def test_seeded_reset_leaves_the_generator_in_one_state(kw: dict[str, Any]) -> None:
    """After ``reset(seed=s)`` the env's generator depends on ``s`` alone: on a fresh env without a seed
    kwarg (whose first seeded reset also seeds the pool) as after steps and unseeded resets."""
    unseeded = {k: v for k, v in kw.items() if k != "seed"}
    single = gym.make("RoutingMNIST-v0", **unseeded).unwrapped
    vector = gym.make_vec("RoutingMNIST-v0", num_envs=4, vectorization_mode="vector_entry_point", **unseeded)
    for env, act in ((single, first_valid), (vector.unwrapped, random_valid(np.random.default_rng(0)))):
        env.reset(seed=7)
        state = copy.deepcopy(env.np_random.bit_generator.state)
        obs, _ = env.reset()
        env.step(act(obs))
        env.reset(seed=7)
        assert env.np_random.bit_generator.state == state
        env.reset(seed=8)
        assert env.np_random.bit_generator.state != state


def test_a_seeded_reset_keeps_a_loaded_or_trained_pool(kw: dict[str, Any]) -> None:
    """Without a seed kwarg, only a seeded reset of a fresh env draws the pool's weights: not one after
    load_state_dict, nor after steps through the tensor path that device rollouts take."""
    unseeded = {k: v for k, v in kw.items() if k != "seed"}
    state = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=4, **kw).state_dict()
    trained = {k: v + 1 for k, v in state["pool"].items()}  # weights no seed draws
    state["pool"] = trained
    faces = {
        "single": gym.make("RoutingMNIST-v0", batch_size=4, **unseeded).unwrapped,
        "gymnasium vector": gym.make_vec(
            "RoutingMNIST-v0", num_envs=4, vectorization_mode="vector_entry_point", **unseeded
        ).unwrapped,
        "sb3": RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=4, **unseeded),
    }
    for face, env in faces.items():
        env.load_state_dict(state)
        if face == "sb3":
            env.seed(3)
            env.reset()
        else:
            env.reset(seed=3)
        for key, value in env.engine.pool.state_dict().items():
            assert torch.equal(value, trained[key]), (face, key)
    sb3 = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=4, **unseeded)
    sb3.reset()
    sb3.step_tensors(torch.as_tensor(sb3.action_masks()).int().argmax(dim=1))
    stepped = {k: v.clone() for k, v in sb3.engine.pool.state_dict().items()}
    sb3.seed(3)
    sb3.reset()
    assert all(torch.equal(v, stepped[k]) for k, v in sb3.engine.pool.state_dict().items())


def test_same_seed_same_batches_vector_env(kw: dict[str, Any]) -> None:
    frozen = {**kw, "train_modules": False}
    env = gym.make_vec("RoutingMNIST-v0", num_envs=8, vectorization_mode="vector_entry_point", **frozen)

    def run(seed: int) -> tuple[np.ndarray, ...]:
        obs, _ = env.reset(seed=seed)
        act = random_valid(np.random.default_rng(0))
        total = np.zeros(8)
        for _ in range(2 * kw["max_depth"]):
            obs, rewards, _, _, infos = env.step(act(obs))
            total += rewards
        final = infos["final_info"]
        return obs["image"], obs["task"], total, final["route"], final["pair_index"]

    first = run(1)
    for x, y in zip(first, run(1)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[-1], run(2)[-1])


# --- pool training and the test split through the envs ----------------------------------------------


def test_test_split_env_walks_every_pair_once_per_pass(kw: dict[str, Any]) -> None:
    args = {**kw, "split": "test", "max_pairs": 12, "max_depth": 2}
    env = gym.make("RoutingMNIST-v0", **args).unwrapped
    assert not env.engine.training  # split="test" freezes the pool
    weights = {k: v.clone() for k, v in env.engine.pool.state_dict().items()}
    pairs, epochs = [], []
    obs, _ = env.reset(seed=3)
    for e in range(18):
        if e:
            obs, _ = env.reset()
        done = False
        while not done:
            obs, _, done, _, info = env.step(first_valid(obs))
        pairs.append(info["pair_index"])
        epochs.append(info["epoch"])
    assert pairs == list(range(12)) + list(range(6))
    assert epochs == [0] * 12 + [1] * 6
    assert all(torch.equal(v, weights[k]) for k, v in env.engine.pool.state_dict().items())

    vec = gym.make_vec("RoutingMNIST-v0", num_envs=8, vectorization_mode="vector_entry_point", **args)
    obs, _ = vec.reset()
    walked = []
    for _ in range(3):
        for _ in range(2):
            obs, _, _, _, infos = vec.step(random_valid(np.random.default_rng(0))(obs))
        walked.append((infos["final_info"]["pair_index"].tolist(), infos["final_info"]["epoch"].tolist()))
    assert walked == [
        (list(range(8)), [0] * 8),
        ([8, 9, 10, 11, 0, 1, 2, 3], [0] * 4 + [1] * 4),
        ([4, 5, 6, 7, 8, 9, 10, 11], [1] * 8),
    ]


def test_single_env_checkpoint_between_pool_updates_resumes_exactly(kw: dict[str, Any]) -> None:
    """The single env updates the pool every batch_size episodes; a checkpoint taken in between must
    carry the gradient of the episodes already played."""
    args = {**kw, "batch_size": 4, "max_depth": 2, "lr": 1e-2}
    a = gym.make("RoutingMNIST-v0", **args).unwrapped
    play(a, seed=0, episodes=2)
    state = copy.deepcopy(a.state_dict())
    assert state["optimizer"]["pending_episodes"] == 2
    expected = play(a, seed=None, episodes=3, policy_seed=1)  # the 2nd of these updates the pool
    b = gym.make("RoutingMNIST-v0", **{**args, "seed": 1}).unwrapped
    b.load_state_dict(state)
    assert_same_episodes(expected, play(b, seed=None, episodes=3, policy_seed=1))
    for key, value in a.engine.pool.state_dict().items():
        assert torch.equal(value, b.engine.pool.state_dict()[key]), key


# --- errors ------------------------------------------------------------------------------------------

BAD_KWARGS = [
    ({"max_depth": 1}, ValueError, "max_depth must be >= 2"),
    ({"duplicates": 0}, ValueError, "duplicates must be >= 1"),
    ({"split": "valid"}, ValueError, "split must be one of"),
    ({"device": "tpu"}, ValueError, "unknown device 'tpu'"),
    ({"device": "meta"}, ValueError, "unknown device 'meta'"),
    ({"colour": "red"}, TypeError, r"unknown env kwargs \['colour'\]"),
    ({"batch_size": 0}, ValueError, "batch_size(=0 differs from num_envs| must be >= 1)"),
    ({"max_pairs": 0}, ValueError, "max_pairs must be >= 1"),
    ({"lr": 0.0}, ValueError, "lr > 0"),
    ({"lr_decay": 1.5}, ValueError, "lr_decay"),
    ({"bonus_weight": -1.0}, ValueError, "bonus_weight must be >= 0"),
    ({"dispatch": "fast"}, ValueError, "dispatch must be one of"),
    ({"bonus_scope": "tasks"}, ValueError, "bonus_scope must be one of"),
    ({"pool": "big"}, ValueError, "pool must be one of"),
    ({"pool": "static"}, ValueError, "needs max_depth=5"),  # the default max_depth is 6
    ({"task_heads": "yes"}, ValueError, "task_heads must be True or False, got 'yes'"),
    ({"augment": 2}, ValueError, "augment must be True or False, got 2"),
]


@pytest.mark.parametrize(("bad", "error", "match"), BAD_KWARGS, ids=[str(b[0]) for b in BAD_KWARGS])
@pytest.mark.parametrize("maker", ["make", "make_vec", "sb3"])
def test_bad_kwargs_give_one_clear_error(
    tmp_path: Path, maker: str, bad: dict, error: type, match: str
) -> None:
    # An empty data root: the kwargs are checked before any data is looked for.
    args = {"data_root": tmp_path, "download": False, **bad}
    with pytest.raises(error, match=match):
        if maker == "make":
            gym.make("RoutingMNIST-v0", **args)
        elif maker == "make_vec":
            gym.make_vec("RoutingMNIST-v0", num_envs=2, vectorization_mode="vector_entry_point", **args)
        else:
            RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=2, **args)
    assert not any(tmp_path.iterdir())


def test_cuda_when_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            gym.make("RoutingMNIST-v0", data_root=tmp_path, download=False, device=device)
    env_config = routing_env.RoutingConfig(data_root=tmp_path, download=False, device="auto")
    assert routing_env.engine.resolve_device(env_config.device).type == "cpu"


@pytest.mark.parametrize(
    ("env_id", "folder"),
    [
        ("RoutingMNIST-v0", "MNIST"),
        ("RoutingCIFAR-v0", "cifar-100-python"),
        ("RoutingMIN-v0", "mini-imagenet-mtl"),
    ],
)
def test_missing_data_names_the_folder(tmp_path: Path, env_id: str, folder: str) -> None:
    for make in (
        lambda: gym.make(env_id, data_root=tmp_path, download=False),
        lambda: gym.make_vec(
            env_id, num_envs=2, vectorization_mode="vector_entry_point", data_root=tmp_path, download=False
        ),
    ):
        with pytest.raises(DataError) as err:
            make()
        assert str(tmp_path / folder) in str(err.value)
        assert "does not exist" in str(err.value) or "missing" in str(err.value)
    assert not any(tmp_path.iterdir())  # download=False wrote nothing
