"""SB3 and sb3-contrib algorithms on the routing env: one rollout is one batch of whole episodes.

* ``maskable_ppo`` (the paper's method), ``ppo``, ``a2c``: the LRN router
  (:class:`agents.policy.RouterPolicy`), with rollouts kept on the device (:mod:`agents.rollout`);
* ``dqn``: SB3's DQN over the router's encoder (:class:`agents.policy.RouterFeaturesExtractor`); it does
  not see masks, the env substitutes invalid actions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from agents.config import AgentConfig, RewardTiming, RouterConfig
from agents.policy import RouterFeaturesExtractor, RouterPolicy
from agents.rollout import LRNA2C, LRNPPO, DeviceRollouts, LRNMaskablePPO
from agents.trainers.base import BatchCallback, parameter_norm
from routing_env.sb3_vec_env import RoutingSB3VecEnv
from routing_env.static_route import static_network_route


class _StopAtBoundary(Exception):
    """Raised out of ``learn`` when the batch callback asks to stop between two batches."""


class _BatchBoundaries(BaseCallback):
    """Calls the loop's batch callback between batches: at the start of a rollout that begins a batch
    (the last batch's updates are done, the next batch is drawn but not stepped), except the first of a
    ``learn`` call. On-policy algorithms start a rollout per batch, DQN one per step: a batch begins when
    the timesteps so far are a whole number of batches."""

    def __init__(self, after_batch: BatchCallback, batch_size: int, batch_steps: int) -> None:
        super().__init__()
        self.after_batch, self.batch_size, self.batch_steps = after_batch, batch_size, batch_steps
        self.batches = 0
        self.started = False

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps % self.batch_steps:
            return  # within a batch
        if not self.started:
            self.started = True
            return
        self.batches += 1
        if self.after_batch(self.batch_size):
            raise _StopAtBoundary


class Constant:
    """A picklable constant schedule (SB3 saves the schedule with the model)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, _progress_remaining: float) -> float:
        return self.value


class SB3Trainer:
    """An SB3 algorithm on a :class:`RoutingSB3VecEnv`; every rollout is one batch of episodes.

    Args:
        algo_class: the SB3 algorithm.
        env: the training env (its engine's device is the agent's).
        kwargs: the algorithm's constructor arguments (policy, hyper-parameters).
        seed: seeds the agent.
        lr: the agent's learning rate in epoch 0.
        lr_decay: factor on it after every epoch.
        reward_timing: how an episode's reward reaches an on-policy algorithm's GAE (see
            :class:`agents.config.AgentConfig`).
        agent: the agent's settings whose values change or act during the run: the entropy
            coefficient's schedule (:meth:`agents.config.AgentConfig.ent_coef_at`, applied by
            :meth:`set_epoch`) and, for the device rollouts, the advantage; None: SB3's constants.
    """

    def __init__(
        self,
        algo_class: type[BaseAlgorithm],
        env: RoutingSB3VecEnv,
        kwargs: dict[str, Any],
        *,
        seed: int,
        lr: float,
        lr_decay: float,
        reward_timing: RewardTiming,
        agent: AgentConfig | None = None,
    ) -> None:
        self.algo_class, self.env = algo_class, env
        self.lr, self.lr_decay = lr, lr_decay
        self.agent = agent
        self.device = str(env.engine.device)
        if issubclass(algo_class, OnPolicyAlgorithm):
            kwargs = {**kwargs, "reward_timing": reward_timing}
        if agent is not None and issubclass(algo_class, DeviceRollouts):
            kwargs.update(
                advantage=agent.advantage,
                baseline_route=agent.baseline_route,
                self_critical_weight=agent.self_critical_weight,
                self_imitation=agent.self_imitation,
            )
        elif agent is not None and agent.advantage != "gae":
            raise ValueError(
                f"the self-critical advantage needs an on-policy router algorithm, not {algo_class}"
            )
        if issubclass(algo_class, DeviceRollouts):  # the env's switch turns off every CUDA graph of a run
            kwargs["cuda_graph"] = env.config.cuda_graph
            kwargs["torch_compile"] = env.config.compile
            if env.engine.device.type == "cuda":  # one fused kernel per router update
                kwargs["policy_kwargs"] = {**kwargs["policy_kwargs"], "optimizer_kwargs": {"fused": True}}
        # torch.distributions checks every sample's support with a host sync; our masks already
        # guarantee it, and the syncs cost several ms per batch on a GPU.
        torch.distributions.Distribution.set_default_validate_args(False)
        self.model: BaseAlgorithm = algo_class(
            env=env, seed=seed, device=self.device, verbose=0, learning_rate=Constant(self.lr), **kwargs
        )

    def router_lr(self, epoch: int) -> float:
        return self.lr * self.lr_decay**epoch

    def set_epoch(self, epoch: int) -> None:
        lr = self.router_lr(epoch)
        self.model.learning_rate = lr
        self.model.lr_schedule = Constant(lr)
        if self.agent is not None and self.agent.ent_coef_end is not None and hasattr(self.model, "ent_coef"):
            self.model.ent_coef = self.agent.ent_coef_at(epoch)

    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        batch_steps = self.env.num_envs * self.env.engine.max_depth
        callback = _BatchBoundaries(after_batch, self.env.num_envs, batch_steps)
        try:
            # log_interval=None: the run writes its own metrics (SB3's would read the device every rollout)
            self.model.learn(
                n_batches * batch_steps, reset_num_timesteps=False, callback=callback, log_interval=None
            )
        except _StopAtBoundary:
            return callback.batches
        after_batch(self.env.num_envs)  # the last batch: its update ended learn()
        return n_batches

    def health(self) -> dict[str, float]:
        # SB3 read the losses of its last update to the host to log them; the norm is one device read.
        logger = getattr(self.model, "_logger", None)  # none before the first learn() (upcycling's phase)
        logged = logger.name_to_value if logger is not None else {}
        values = {k.removeprefix("train/"): float(v) for k, v in logged.items() if k.endswith("loss")}
        values["router parameter norm"] = parameter_norm(self.model.policy.parameters())
        return values

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.model.policy.set_training_mode(False)
        return self.model.policy._predict(obs, deterministic=True).reshape(-1)

    def save(self, folder: Path) -> None:
        self.model.save(folder / "agent.zip")

    def load(self, folder: Path) -> None:
        self.model = self.algo_class.load(folder / "agent.zip", env=self.env, device=self.device)
        # load() re-seeds the env (set_random_seed -> env.seed), and the reset that starts the next
        # learn() would restart the engine's data walk from that seed, undoing the walk restored from the
        # checkpoint. Drop those seeds: the reset just begins the next batch of the restored walk.
        self.env._reset_seeds()

    def weights(self) -> dict[str, Any]:
        """The policy's parameters and buffers (the router; not its optimizer's moments)."""
        return {k: v.detach().cpu() for k, v in self.model.policy.state_dict().items()}

    def load_weights(self, weights: dict[str, Any]) -> None:
        self.model.policy.load_state_dict(weights)


def _trainer(
    algo_class: type[BaseAlgorithm],
    env: RoutingSB3VecEnv,
    kwargs: dict[str, Any],
    seed: int,
    agent: AgentConfig,
) -> SB3Trainer:
    """The agent learns at ``agent.router_lr`` (default the pool's lr), decayed as the pool's per epoch."""
    lr = env.config.lr if agent.router_lr is None else agent.router_lr
    return SB3Trainer(
        algo_class,
        env,
        kwargs,
        seed=seed,
        lr=lr,
        lr_decay=env.config.lr_decay,
        reward_timing=agent.reward_timing,
        agent=agent,
    )


def router_policy(env: RoutingSB3VecEnv, router: RouterConfig) -> dict[str, Any]:
    """The policy arguments of every algorithm that trains :class:`RouterPolicy`; with ``static_start``,
    the static network's route through ``env``'s pool."""
    policy_kwargs = dataclasses.asdict(router)
    if router.static_start > 0:
        n_tasks = int(env.observation_space["task"].n)
        route = static_network_route(env.engine.pool, n_tasks, env.engine.max_depth)
        policy_kwargs["static_route"] = route.tolist()
    return dict(policy=RouterPolicy, policy_kwargs=policy_kwargs)


def rollout_kwargs(env: RoutingSB3VecEnv, agent: AgentConfig, router: RouterConfig) -> dict[str, Any]:
    """On-policy arguments shared by PPO and A2C: RouterPolicy (with ``explore_epsilon``), and one rollout
    = one batch of ``num_envs`` whole episodes."""
    policy = router_policy(env, router)
    policy["policy_kwargs"]["explore_epsilon"] = agent.explore_epsilon
    return dict(
        **policy,
        n_steps=env.engine.max_depth,
        gamma=agent.gamma,
        gae_lambda=agent.gae_lambda,
        ent_coef=agent.ent_coef,
        vf_coef=agent.vf_coef,
        max_grad_norm=agent.max_grad_norm,
    )


def ppo_kwargs(env: RoutingSB3VecEnv, agent: AgentConfig, router: RouterConfig) -> dict[str, Any]:
    minibatch = agent.minibatch * (env.engine.max_depth if agent.minibatch_unit == "episodes" else 1)
    return dict(
        **rollout_kwargs(env, agent, router),
        batch_size=minibatch,
        n_epochs=agent.ppo_epochs,
        clip_range=agent.clip_range,
    )


def maskable_ppo(
    env: RoutingSB3VecEnv, seed: int = 0, agent: AgentConfig | None = None, router: RouterConfig | None = None
) -> SB3Trainer:
    agent, router = agent or AgentConfig(), router or RouterConfig()
    return _trainer(LRNMaskablePPO, env, ppo_kwargs(env, agent, router), seed, agent)


def ppo(
    env: RoutingSB3VecEnv, seed: int = 0, agent: AgentConfig | None = None, router: RouterConfig | None = None
) -> SB3Trainer:
    agent, router = agent or AgentConfig(), router or RouterConfig()
    return _trainer(LRNPPO, env, ppo_kwargs(env, agent, router), seed, agent)


def a2c(
    env: RoutingSB3VecEnv, seed: int = 0, agent: AgentConfig | None = None, router: RouterConfig | None = None
) -> SB3Trainer:
    agent, router = agent or AgentConfig(), router or RouterConfig()
    return _trainer(LRNA2C, env, rollout_kwargs(env, agent, router), seed, agent)


def dqn(env: RoutingSB3VecEnv, seed: int = 0, agent: AgentConfig | None = None) -> SB3Trainer:
    """SB3's DQN over the router's encoder (with its default architecture)."""
    from stable_baselines3 import DQN

    agent = agent or AgentConfig()
    kwargs = dict(
        policy="MultiInputPolicy",
        buffer_size=100_000,
        learning_starts=env.num_envs * env.engine.max_depth,
        batch_size=agent.minibatch,
        gamma=agent.gamma,
        train_freq=(1, "step"),
        gradient_steps=1,
        exploration_fraction=0.1,
        policy_kwargs=dict(features_extractor_class=RouterFeaturesExtractor),
    )
    return _trainer(DQN, env, kwargs, seed, agent)
