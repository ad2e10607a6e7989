"""The env as the RL ecosystem uses it: any grad mode, Gymnasium's seeding, render modes and vector info
layout, pickling, multi-process vectorisation and the ``module:Id`` form.

Fake MNIST (``fake_data_root``), tiny pools, CPU.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

import routing_env
from routing_env import RoutingSB3VecEnv, SeparatePoolsWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kw(fake_data_root: Path) -> dict[str, Any]:
    return dict(
        data_root=fake_data_root, download=False, device="cpu", duplicates=1, max_depth=3, max_pairs=64
    )


def first_valid(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The lowest valid action of each row (or of the one observation)."""
    return np.asarray(obs["action_mask"]).argmax(axis=-1)


def play(env: gym.Env, episodes: int, seed: int | None = None) -> tuple[list[float], list[list[int]]]:
    """Rewards and routes of ``episodes`` episodes of lowest-valid actions."""
    rewards, routes = [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed if e == 0 else None)
        done = False
        while not done:
            obs, reward, done, _, info = env.step(int(first_valid(obs)))
            rewards.append(reward)
        routes.append(info["route"])
    return rewards, routes


# --- 1: module training whatever the caller's grad mode ---------------------------------------------


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_train_split_steps_inside_no_grad_and_inference_mode(kw: dict[str, Any], mode: str) -> None:
    """The pool trains exactly as outside (an evaluation loop or ARS wraps its env steps in no_grad)."""
    args = {**kw, "seed": 0, "batch_size": 2, "lr": 1e-3}

    def run(context) -> tuple[list[float], dict[str, torch.Tensor]]:
        env = gym.make("RoutingMNIST-v0", **args)
        with context():
            rewards, _ = play(env, episodes=6, seed=0)  # 3 pool updates
        return rewards, {k: v.clone() for k, v in env.unwrapped.engine.pool.state_dict().items()}

    plain_rewards, plain_pool = run(contextlib.nullcontext)
    rewards, pool = run(getattr(torch, mode))
    assert rewards == plain_rewards  # bit for bit, also after the updates
    start = gym.make("RoutingMNIST-v0", **args).unwrapped.engine.pool.state_dict()
    assert not all(torch.equal(start[k], v) for k, v in plain_pool.items())  # the pool did train
    assert all(torch.equal(pool[k], v) for k, v in plain_pool.items())


# --- seeding ------------------------------------------------------------------------------------------


def test_first_seeded_reset_seeds_a_fresh_pool(kw: dict[str, Any]) -> None:
    args = {**kw, "batch_size": 2, "lr": 1e-3}  # no seed kwarg
    a, b = gym.make("RoutingMNIST-v0", **args), gym.make("RoutingMNIST-v0", **args)
    assert play(a, 4, seed=7) == play(b, 4, seed=7)  # same rewards, bit for bit, through 2 updates
    c = gym.make("RoutingMNIST-v0", **args)
    assert play(c, 4, seed=8)[0] != play(gym.make("RoutingMNIST-v0", **args), 4, seed=7)[0]
    # The seed kwarg wins: the reset seed then orders the data only.
    seeded = [gym.make("RoutingMNIST-v0", **{**args, "seed": 3}).unwrapped for _ in range(2)]
    seeded[0].reset(seed=1)
    seeded[1].reset(seed=2)
    for key, value in seeded[0].engine.pool.state_dict().items():
        assert torch.equal(value, seeded[1].engine.pool.state_dict()[key])
    # Once a step was taken, a seeded reset no longer touches the pool.
    d = gym.make("RoutingMNIST-v0", **args).unwrapped
    d.reset()
    d.step(int(first_valid(d._obs())))
    before = {k: v.clone() for k, v in d.engine.pool.state_dict().items()}
    d.reset(seed=7)
    assert all(torch.equal(before[k], v) for k, v in d.engine.pool.state_dict().items())


def test_vector_envs_seed_a_fresh_pool_too(kw: dict[str, Any]) -> None:
    def rewards(make) -> np.ndarray:
        env = make()
        obs, _ = env.reset(seed=4)
        total = np.zeros(4)
        for _ in range(kw["max_depth"]):
            obs, r, *_ = env.step(first_valid(obs))
            total += r
        return total

    def gym_vec():
        return gym.make_vec("RoutingMNIST-v0", num_envs=4, vectorization_mode="vector_entry_point", **kw)

    np.testing.assert_array_equal(rewards(gym_vec), rewards(gym_vec))
    pools = []
    for _ in range(2):
        venv = RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=4, **kw)
        venv.seed(4)
        venv.reset()
        pools.append(venv.engine.pool.state_dict())
    assert all(torch.equal(v, pools[1][k]) for k, v in pools[0].items())


# --- render -------------------------------------------------------------------------------------------


def test_render_ansi_shows_the_route_being_built(kw: dict[str, Any]) -> None:
    env = gym.make("RoutingMNIST-v0", render_mode="ansi", seed=0, **kw)
    obs, _ = env.reset(seed=0)
    names = env.unwrapped.action_names
    text = env.render()
    assert f"step 0/{kw['max_depth']}" in text and "route: (empty)" in text
    assert "valid next: " + ", ".join(names[a] for a in np.flatnonzero(obs["action_mask"])) in text
    chosen = []
    done = False
    while not done:
        action = int(first_valid(obs))
        chosen.append(names[action])
        obs, _, done, _, info = env.step(action)
        assert "route: " + " -> ".join(chosen) in env.render()
    text = env.render()
    assert f"prediction {info['prediction']}" in text and f"loss {info['loss']:.4f}" in text
    assert ("correct" if info["correct"] else "wrong") in text


def test_render_rgb_array_draws_the_image_and_the_route(kw: dict[str, Any]) -> None:
    env = gym.make("RoutingMNIST-v0", render_mode="rgb_array", seed=0, **kw)
    obs, _ = env.reset(seed=0)
    empty = env.render()
    assert empty.dtype == np.uint8 and empty.ndim == 3 and empty.shape[2] == 3
    scale = empty.shape[1] // 28
    assert scale >= 2  # MNIST's 28 pixels are scaled up
    np.testing.assert_array_equal(empty[: 28 * scale : scale, : 28 * scale : scale, 0], obs["image"][0])
    strip = empty[28 * scale :]
    frames = [strip]
    done = False
    while not done:
        obs, _, done, _, info = env.step(int(first_valid(obs)))
        frames.append(env.render()[28 * scale :])
    # Every step changes the strip under the image; the last frame carries the verdict's colour.
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    verdict = frames[-1][-1, 0]
    assert (verdict[1] > verdict[0]) == bool(info["correct"])


def test_render_mode_is_checked_and_none_renders_nothing(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="render_mode must be one of"):
        routing_env.RoutingEnv(render_mode="video", **kw)
    with pytest.warns(UserWarning, match="HumanRendering wrapper is being applied"):
        human = gym.make("RoutingMNIST-v0", render_mode="human", **kw)  # Gymnasium shows our rgb_array
    assert isinstance(human, gym.wrappers.HumanRendering) and human.unwrapped.render_mode == "rgb_array"
    env = gym.make("RoutingMNIST-v0", **kw)
    env.reset(seed=0)
    assert env.render() is None
    assert env.metadata["render_modes"] == ["ansi", "rgb_array"]


# --- pickling -----------------------------------------------------------------------------------------


def test_pickle_keeps_pool_and_walk_but_not_the_data(kw: dict[str, Any]) -> None:
    env = gym.make("RoutingMNIST-v0", seed=0, batch_size=2, lr=1e-3, **{**kw, "max_pairs": None}).unwrapped
    play(env, 3, seed=0)  # one pool update, one episode's gradient pending
    env.reset()
    data = pickle.dumps(env)
    images = env.engine.data.images
    small = gym.make("RoutingMNIST-v0", seed=0, batch_size=2, lr=1e-3, **kw).unwrapped  # 64 pairs
    play(small, 3, seed=0)
    small.reset()
    # The pickle holds the pool and its optimizer; all the split's images would add 10x this difference.
    assert len(data) - len(pickle.dumps(small)) < images.numel() * images.element_size() / 10
    for clone in (pickle.loads(data), cloudpickle.loads(cloudpickle.dumps(env)), copy.deepcopy(env)):
        assert clone.engine.data.images.shape == images.shape
        for key, value in env.engine.pool.state_dict().items():
            assert torch.equal(value, clone.engine.pool.state_dict()[key])
        np.testing.assert_array_equal(clone._obs()["image"], env._obs()["image"])  # the same episode
        twin = copy.deepcopy(env)
        assert play_on(clone, 3) == play_on(twin, 3)


def play_on(env: gym.Env, episodes: int) -> list[float]:
    """Rewards of the episode in progress (just reset) and ``episodes - 1`` more."""
    rewards = []
    obs = env._obs()
    for e in range(episodes):
        if e:
            obs, _ = env.reset()
        done = False
        while not done:
            obs, reward, done, _, _ = env.step(int(first_valid(obs)))
            rewards.append(reward)
    return rewards


def test_pickle_mid_episode_is_refused_clearly(kw: dict[str, Any]) -> None:
    env = gym.make("RoutingMNIST-v0", seed=0, **kw).unwrapped
    obs, _ = env.reset(seed=0)
    env.step(int(first_valid(obs)))
    with pytest.raises(TypeError, match="mid-episode"):
        pickle.dumps(env)


# --- Gymnasium's vector info layout ---------------------------------------------------------------------


def test_vector_env_info_has_the_layout_of_gymnasiums_sync_vector_env(kw: dict[str, Any]) -> None:
    """The same keys, masks and shapes as SyncVectorEnv over single envs (Gymnasium 1.x, same-step)."""
    n, depth = 3, kw["max_depth"]
    ours = gym.make_vec("RoutingMNIST-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)
    with pytest.warns(SeparatePoolsWarning):
        reference = gym.make_vec(
            "RoutingMNIST-v0",
            num_envs=n,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **kw,
        )
    assert ours.metadata["autoreset_mode"] == reference.metadata["autoreset_mode"]

    def layout(info: dict) -> dict:
        return {
            k: layout(v) if isinstance(v, dict) else (np.asarray(v).shape, np.asarray(v).dtype == object)
            for k, v in info.items()
        }

    obs_a, _ = ours.reset(seed=0)
    obs_b, _ = reference.reset(seed=0)
    for k in range(depth):
        obs_a, *_, info_a = ours.step(first_valid(obs_a))
        obs_b, *_, info_b = reference.step(first_valid(obs_b))
        assert layout(info_a).keys() == layout(info_b).keys(), k
    assert set(info_a) == {"final_obs", "_final_obs", "final_info", "_final_info"}
    assert layout(info_a["final_info"]).keys() == layout(info_b["final_info"]).keys()
    for key, value in info_b["final_info"].items():
        if key.startswith("_"):
            np.testing.assert_array_equal(info_a["final_info"][key], value)
        elif key not in ("route", "step_rewards"):  # lists in the single env's info, (n, depth) here
            assert info_a["final_info"][key].shape == value.shape, key
    assert info_a["final_obs"].dtype == info_b["final_obs"].dtype == object
    assert info_a["final_obs"][0].keys() == info_b["final_obs"][0].keys()


# --- vectorising single envs: separate pools, workers, module:Id ----------------------------------------


def test_vectoriser_copies_warn_once_and_the_batched_envs_do_not(kw: dict[str, Any]) -> None:
    with pytest.warns(SeparatePoolsWarning, match="vector_entry_point"):
        DummyVecEnv([lambda: gym.make("RoutingMNIST-v0", **kw)] * 2)
    with pytest.warns(SeparatePoolsWarning):
        make_vec_env("RoutingMNIST-v0", n_envs=2, env_kwargs=kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym.make("RoutingMNIST-v0", **kw)  # one env, made directly
        gym.make_vec("RoutingMNIST-v0", num_envs=2, vectorization_mode="vector_entry_point", **kw)
        RoutingSB3VecEnv("RoutingMNIST-v0", num_envs=2, **kw)
        DummyVecEnv([lambda: gym.make("RoutingMNIST-v0", split="test", **kw)] * 2)  # frozen copies


def test_module_id_form_everywhere(kw: dict[str, Any]) -> None:
    env_id = "routing_env:RoutingMNIST-v0"
    assert gym.make(env_id, **kw).unwrapped.config.benchmark == "mnist"
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **kw)
    assert vec.unwrapped.config.benchmark == "mnist"
    assert RoutingSB3VecEnv(env_id, num_envs=2, **kw).config.benchmark == "mnist"
    assert routing_env.benchmark_of(env_id) == "mnist"
    with pytest.raises(ValueError, match="unknown env id 'no_such_module:X-v0'"):
        RoutingSB3VecEnv("no_such_module:X-v0", num_envs=2, **kw)


ASYNC_SCRIPT = """
import sys, warnings
import gymnasium as gym
import numpy as np
import torch

warnings.simplefilter("ignore")
torch.ones(256, 256) @ torch.ones(256, 256)  # the parent has used its thread pool before the fork
kw = dict(data_root=sys.argv[1], download=False, device="cpu", duplicates=1, max_depth=3, max_pairs=64)
ids = ["routing_env:RoutingMNIST-v0", "examples.shapes_benchmark:RoutingShapes-v0"]
for env_id, args, vector_kwargs in (
    (ids[0], kw, {}),  # the default start method: fork on Linux
    (ids[1], {**kw, "data_root": sys.argv[2], "benchmark_kwargs": {"per_class": 10}}, {"context": "spawn"}),
):
    env = gym.make_vec(env_id, num_envs=2, vectorization_mode="async", vector_kwargs=vector_kwargs, **args)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, rewards, terminated, truncated, infos = env.step(obs["action_mask"].argmax(axis=1))
    assert terminated.all() and np.isfinite(rewards).all() and (rewards != 0).all(), rewards
    print(env_id, "ok", rewards.round(4).tolist())
    env.close()
"""


@pytest.mark.slow
def test_async_make_vec_with_fork_and_spawn(fake_data_root: Path, tmp_path: Path) -> None:
    """Two workers: the default fork context (no OpenMP deadlock) and spawn with a user benchmark given
    as module:Id (the workers import the module that registers it)."""
    from examples.shapes_benchmark import write_demo_data

    write_demo_data(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", ASYNC_SCRIPT, str(fake_data_root), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "routing_env:RoutingMNIST-v0 ok" in done.stdout
    assert "examples.shapes_benchmark:RoutingShapes-v0 ok" in done.stdout
