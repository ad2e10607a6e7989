"""The training algorithms train.py can run, behind one small interface.

* ``maskable_ppo`` (default), ``ppo``, ``a2c``: the LRN router (:class:`agents.policy.RouterPolicy`)
  trained by sb3-contrib / SB3, one rollout = one batch of ``batch_size`` episodes.
* ``dqn``: SB3's DQN over the router's encoder (:class:`agents.policy.RouterFeaturesExtractor`); it
  does not see masks, the env substitutes invalid actions.
* ``static``: no routing: one fixed network (input conv, hidden conv, two FC layers, a head per task)
  trained through the same engine with the same optimizer and batch size (the accuracy reference
  "one shared network" and the speed floor).
* ``routing_network``: the original routing network (Rosenbaum et al. 2017), per-task tabular routers
  trained with WPL over 3 routed FC depths (:mod:`agents.routing_network`).

Any SB3 algorithm can be swapped in by adding an entry to :data:`SB3_ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from agents.policy import RouterFeaturesExtractor, RouterPolicy
from routing_env.engine import RoutingEngine
from routing_env.sb3_vec_env import RoutingVecEnv

Progress = Callable[[int], None]  # called with the number of episodes just finished


@dataclass
class AlgoConfig:
    """Hyper-parameters of the agent (the paper's defaults).

    Attributes:
        lr: router learning rate; ``lr_decay``: its factor after every epoch.
        gamma, gae_lambda: discount and GAE lambda.
        minibatch: PPO minibatch size, counted in ``minibatch_unit``.
        minibatch_unit: ``"episodes"`` (default; 64 episodes = 64 * max_depth transitions, matching
            the paper's batch of 128 *episodes*) or ``"transitions"``.
        ppo_epochs: passes over each batch; clip_range, ent_coef, vf_coef, max_grad_norm: PPO's.
        task_prior_std: the router's initial per-task logit bias (not in the paper; 0 = none), see
            :class:`agents.router.RouterConfig`.
    """

    lr: float = 1e-4
    lr_decay: float = 0.97
    gamma: float = 0.99
    gae_lambda: float = 0.95
    minibatch: int = 64
    minibatch_unit: str = "episodes"
    ppo_epochs: int = 1
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    task_prior_std: float = 0.0


class Trainer(Protocol):
    """What train.py needs of an algorithm."""

    def learn_epoch(self, n_batches: int, progress: Progress) -> None: ...

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def set_epoch(self, epoch: int) -> None: ...

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...


class _ProgressCallback(BaseCallback):
    def __init__(self, progress: Progress, episodes_per_rollout: int) -> None:
        super().__init__()
        self.progress, self.episodes = progress, episodes_per_rollout

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.progress(self.episodes)


class SB3Trainer:
    """An SB3 algorithm on a :class:`RoutingVecEnv`; every rollout is one batch of episodes."""

    def __init__(self, algo: str, env: RoutingVecEnv, cfg: AlgoConfig, seed: int, device: str) -> None:
        self.algo_name, self.env, self.cfg, self.device = algo, env, cfg, device
        # torch.distributions checks every sample's support with a host sync; our masks already
        # guarantee it, and the syncs cost several ms per batch on a GPU.
        torch.distributions.Distribution.set_default_validate_args(False)
        self.algo_class, make_kwargs = SB3_ALGORITHMS[algo]
        self.model: BaseAlgorithm = self.algo_class(
            env=env, seed=seed, device=device, verbose=0, **make_kwargs(env, cfg)
        )
        self.depth = env.engine.config.max_depth

    def set_epoch(self, epoch: int) -> None:
        lr = self.cfg.lr * self.cfg.lr_decay**epoch
        self.model.learning_rate = lr
        self.model.lr_schedule = _Constant(lr)

    def learn_epoch(self, n_batches: int, progress: Progress) -> None:
        steps = n_batches * self.env.num_envs * self.depth
        callback = _ProgressCallback(progress, self.env.num_envs) if self.algo_name != "dqn" else None
        self.model.learn(steps, reset_num_timesteps=False, callback=callback)
        if callback is None:
            progress(n_batches * self.env.num_envs)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.policy.set_training_mode(False)
        return self.model.policy._predict(obs, deterministic=True).reshape(-1)

    def save(self, folder: Path) -> None:
        self.model.save(folder / "agent.zip")

    def load(self, folder: Path) -> None:
        self.model = self.algo_class.load(folder / "agent.zip", env=self.env, device=self.device)
        # BUG FIX: load() re-seeds the env (set_random_seed -> env.seed), and the reset that starts the
        # next learn() then restarted the engine's data walk from that seed, undoing the walk train.py
        # restores from the checkpoint (a resumed run saw other batches and a reset module lr). Drop
        # those seeds: the reset just begins the next batch of the restored walk.
        self.env._reset_seeds()


class _Constant:
    """A picklable constant schedule (SB3 saves the schedule with the model)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, _progress_remaining: float) -> float:
        return self.value


def _router_policy(cfg: AlgoConfig) -> dict[str, Any]:
    """The policy kwargs of every algorithm that trains :class:`RouterPolicy`."""
    return dict(policy=RouterPolicy, policy_kwargs=dict(task_prior_std=cfg.task_prior_std))


def _on_policy_kwargs(env: RoutingVecEnv, cfg: AlgoConfig) -> dict[str, Any]:
    depth = env.engine.config.max_depth
    minibatch = cfg.minibatch * (depth if cfg.minibatch_unit == "episodes" else 1)
    return dict(
        **_router_policy(cfg),
        learning_rate=_Constant(cfg.lr),
        n_steps=depth,  # one rollout = one batch of num_envs whole episodes
        batch_size=minibatch,
        n_epochs=cfg.ppo_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
    )


def _a2c_kwargs(env: RoutingVecEnv, cfg: AlgoConfig) -> dict[str, Any]:
    return dict(
        **_router_policy(cfg),
        learning_rate=_Constant(cfg.lr),
        n_steps=env.engine.config.max_depth,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
    )


def _dqn_kwargs(env: RoutingVecEnv, cfg: AlgoConfig) -> dict[str, Any]:
    return dict(
        policy="MultiInputPolicy",
        learning_rate=_Constant(cfg.lr),
        buffer_size=100_000,
        learning_starts=env.num_envs * env.engine.config.max_depth,
        batch_size=cfg.minibatch,
        gamma=cfg.gamma,
        train_freq=(1, "step"),
        gradient_steps=1,
        exploration_fraction=0.1,
        policy_kwargs=dict(features_extractor_class=RouterFeaturesExtractor),
    )


SB3_ALGORITHMS: dict[str, tuple[type[BaseAlgorithm], Callable[[RoutingVecEnv, AlgoConfig], dict]]] = {
    "maskable_ppo": (MaskablePPO, _on_policy_kwargs),
    "ppo": (PPO, _on_policy_kwargs),
    "a2c": (A2C, _a2c_kwargs),
    "dqn": (DQN, _dqn_kwargs),
}


class StaticTrainer:
    """The static baseline: every instance takes the same network, with the head of its task.

    Runs through the engine like any agent (same data walk, optimizer, batch size and metrics); the
    pool must be :func:`static_pool_specs` (one input conv, hidden conv and FC of each kind, and
    ``n_tasks`` heads), so the route is ``[0, 1, 2, 3, 4 + task]``.
    """

    def __init__(self, engine: RoutingEngine) -> None:
        self.engine = engine
        if engine.config.max_depth != 5:
            raise ValueError("the static network has 5 layers: build its engine with max_depth=5")

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        k = int(obs["step"][0])
        if k < 4:
            return torch.full_like(obs["task"], k)
        return 4 + obs["task"]

    def learn_epoch(self, n_batches: int, progress: Progress) -> None:
        for _ in range(n_batches):
            self.engine.begin_batch()
            for _ in range(self.engine.config.max_depth):
                self.engine.step(self.act(self.engine.observation()))
            progress(self.engine.batch_size)

    def set_epoch(self, epoch: int) -> None:
        pass  # the pool's lr decays with the engine's passes

    def save(self, folder: Path) -> None:
        pass  # everything lives in the engine, which train.py checkpoints

    def load(self, folder: Path) -> None:
        pass


ALGORITHMS = (*SB3_ALGORITHMS, "static", "routing_network")
# the algorithms whose agent is RouterPolicy (and so take its options, e.g. task_prior_std)
ROUTER_POLICY_ALGORITHMS = tuple(
    name for name, (_, kwargs) in SB3_ALGORITHMS.items() if kwargs in (_on_policy_kwargs, _a2c_kwargs)
)
