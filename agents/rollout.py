"""Rollouts on the device, for SB3's on-policy algorithms on the routing env.

SB3's own ``collect_rollouts`` speaks to any ``VecEnv`` in numpy: per step it copies the observations to
the host and back, the actions to the host and back, the masks to the host, builds an info dict per
episode and stores everything in numpy. With the routing env all of that lives on one device already, so
:class:`DeviceRollouts` (mixed into PPO, A2C and MaskablePPO) keeps it there, and runs a whole batch of
episodes as one program (:class:`EpisodeProgram`): the engine's ``max_depth`` steps with the router's
choices between them (forward, masking, sampling, log-probability, value), on a GPU one CUDA graph. The
engine then scores the networks and trains the pool (its own graph), the rewards reach
:class:`agents.rollout_buffer.DeviceRolloutBuffer` with the steps, and GAE runs as a few batched kernels.
SB3's callbacks, logging and save/load are unchanged; PPO and MaskablePPO update as
:mod:`agents.ppo_update` says.

The collection also decides how the episode's reward reaches GAE (``reward_timing``):

* ``"per_step"`` (the paper, eq. 7): step ``t`` earns the collapse bonus of the module it chose, and the
  last step also earns minus the loss; the env's final info holds these ``step_rewards``.
* ``"terminal"``: the whole reward (minus the loss plus every chosen module's bonus) at the last step,
  as the env returns it.

And which advantage PPO takes (``advantage``): GAE's, or the self-critical one (Rennie et al. 2017):
before a batch is played the engine is given each instance's baseline route (the router's greedy route,
or the static network's, :meth:`routing_env.engine.RoutingEngine.set_baseline_routes`), which it scores
on the same instances before the pool's update; every step of an episode then gets the episode's return
minus its baseline route's reward (optionally blended with GAE's advantage). The critic keeps learning
GAE's returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback

from agents.config import ADVANTAGES, BASELINE_ROUTES, REWARD_TIMINGS
from agents.cuda_graph import CapturedProgram
from agents.policy import RouterPolicy
from agents.ppo_update import DevicePPOUpdate
from agents.rollout_buffer import DeviceRolloutBuffer
from routing_env.batch_state import EpisodeOutput
from routing_env.compiling import Compiled
from routing_env.engine import RoutingEngine
from routing_env.sb3_vec_env import RoutingSB3VecEnv
from routing_env.static_route import static_network_route

__all__ = [
    "LRNA2C",
    "LRNPPO",
    "DeviceRolloutBuffer",
    "DeviceRollouts",
    "EpisodeProgram",
    "HostCopy",
    "LRNMaskablePPO",
]


class HostCopy:
    """A copy of a device tensor to the host that does not wait for the device; :meth:`read` waits for the
    copy alone (long done when read a rollout later)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.event: torch.cuda.Event | None = None
        if tensor.is_cuda:
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = tensor

    def read(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


class EpisodeProgram:
    """A batch of episodes of ``engine`` with ``policy`` choosing, as one program: the engine's
    ``episode_steps`` (its rules, on its state tensors) with the policy's sampling between the steps
    (:meth:`RouterPolicy.sample_tensors`); every step's observation, action, value and log-probability
    land in ``(max_depth, B, ...)`` tensors kept between batches. With ``capture``, replayed as one CUDA
    graph (:class:`agents.cuda_graph.CapturedProgram`); with ``compile``, the policy's step runs through
    torch.compile (:class:`routing_env.compiling.Compiled`).
    """

    def __init__(
        self, policy: RouterPolicy, engine: RoutingEngine, capture: bool, compile: bool = False
    ) -> None:
        self.policy, self.engine = policy, engine
        self.sample = Compiled(policy.sample_tensors, compile, "the router's step of a rollout")
        depth, batch = engine.max_depth, engine.batch_size
        self.obs: dict[str, torch.Tensor] = {}  # (D, B, ...) per key, allocated at the first (eager) call
        self.actions = torch.zeros(depth, batch, dtype=torch.long, device=engine.device)
        self.values = torch.zeros(depth, batch, device=engine.device)
        self.log_probs = torch.zeros(depth, batch, device=engine.device)
        self.program = CapturedProgram(self._steps, capture)

    def fits(self, policy: RouterPolicy, engine: RoutingEngine) -> bool:
        return policy is self.policy and engine is self.engine

    def _choose(self, k: int, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        actions, values, log_probs = self.sample(obs)
        for key, value in obs.items():
            if key not in self.obs:
                self.obs[key] = value.new_zeros((self.engine.max_depth, *value.shape))
            self.obs[key][k] = value
        self.actions[k] = actions
        self.values[k] = values
        self.log_probs[k] = log_probs
        return actions

    def _steps(self) -> tuple[torch.Tensor]:
        with torch.no_grad():
            return (self.engine.episode_steps(self._choose),)

    def __call__(self, env: RoutingSB3VecEnv) -> EpisodeOutput:
        """Play the env's current batch (from its first step); the next batch begins."""
        return env.play_tensors(steps=lambda: self.program()[0])


class DeviceRollouts:
    """Mixin for SB3 on-policy algorithms: collect rollouts on a :class:`RoutingSB3VecEnv` with tensors on
    the device (module docstring). Other envs (e.g. a wrapped one) take SB3's own numpy path.

    A rollout of whole batches of episodes (``n_steps`` a multiple of ``max_depth``, the env at a batch's
    first step) runs batch by batch as :class:`EpisodeProgram`; the callbacks then hear ``on_step`` once per
    step, with the step's ``actions``, ``values``, ``log_probs``, ``rewards``, ``done`` and ``dones`` in
    their locals, after the batch.
    Other rollouts, or ``fused_rollout=False``, step the env one step at a time with SB3's policy call.

    :param reward_timing: ``"per_step"`` (paper eq. 7) or ``"terminal"`` (module docstring).
    :param fused_rollout: collect each batch as one program (False: step by step, the reference).
    :param fused_update: PPO and MaskablePPO update each minibatch as one program
        (:mod:`agents.ppo_update`; False: SB3's ``train()``). A2C ignores it.
    :param cuda_graph: on a CUDA device, replay those programs as CUDA graphs (False: run them eagerly).
    :param torch_compile: run the router's step of a rollout and each PPO minibatch's losses through
        torch.compile (:mod:`routing_env.compiling`; the env's ``compile`` setting).
    :param advantage: ``"gae"`` or ``"self_critical"`` (module docstring; :class:`agents.config.AgentConfig`).
    :param baseline_route: the self-critical baseline, ``"greedy"``, ``"static"`` or ``"sampled"``.
    :param self_critical_weight: the self-critical advantage's share of a blend with GAE's.
    :param self_imitation: PPO's self-imitation loss weight (:class:`agents.ppo_update.MinibatchUpdate`).
    """

    def __init__(
        self,
        *args: Any,
        reward_timing: str = "per_step",
        fused_rollout: bool = True,
        fused_update: bool = True,
        cuda_graph: bool = True,
        torch_compile: bool = False,
        advantage: str = "gae",
        baseline_route: str = "greedy",
        self_critical_weight: float = 1.0,
        self_imitation: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if reward_timing not in REWARD_TIMINGS:
            raise ValueError(f"reward_timing must be one of {REWARD_TIMINGS}, got {reward_timing!r}")
        if advantage not in ADVANTAGES or baseline_route not in BASELINE_ROUTES:
            raise ValueError(
                f"advantage must be one of {ADVANTAGES} and baseline_route one of {BASELINE_ROUTES}, got "
                f"{advantage!r}, {baseline_route!r}"
            )
        self.reward_timing = reward_timing
        self.advantage, self.baseline_route = advantage, baseline_route
        self.self_critical_weight = float(self_critical_weight)
        self.self_imitation = float(self_imitation)
        self._static_route: torch.Tensor | None = None
        self.fused_rollout, self.fused_update, self.cuda_graph = fused_rollout, fused_update, cuda_graph
        self.torch_compile = torch_compile
        self._episode_program: EpisodeProgram | None = None
        kwargs.setdefault("rollout_buffer_class", DeviceRolloutBuffer)
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        # device tensors (statistics only) and the episode program (CUDA graphs, device scratch)
        return [*super()._excluded_save_params(), "_unread_returns", "_episode_program", "_static_route"]

    def collect_rollouts(
        self, env, callback: BaseCallback, rollout_buffer, n_rollout_steps: int, *args: Any, **kwargs: Any
    ) -> bool:
        if not (isinstance(env, RoutingSB3VecEnv) and isinstance(rollout_buffer, DeviceRolloutBuffer)):
            if self.reward_timing == "per_step":
                raise ValueError(
                    "reward_timing='per_step' needs the RoutingSB3VecEnv itself and a DeviceRolloutBuffer; "
                    "with a wrapped env use reward_timing='terminal'"
                )
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps, *args, **kwargs)
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        engine = env.engine
        whole_batches = n_rollout_steps % engine.max_depth == 0 and engine.step_index == 0
        if self.fused_rollout and whole_batches and isinstance(self.policy, RouterPolicy):
            returns = self._collect_batches(env, callback, rollout_buffer, n_rollout_steps)
        elif self.advantage == "self_critical":
            raise ValueError(
                "the self-critical advantage needs rollouts of whole batches with the RouterPolicy "
                "(fused_rollout=True, n_steps a multiple of max_depth)"
            )
        else:
            returns = self._collect_steps(env, callback, rollout_buffer, n_rollout_steps)
        if returns is None:
            return False
        # SB3's episode statistics, copied to the host without waiting and read one rollout later, when
        # the copy is long done: a read now would wait for the whole rollout's work on the device.
        unread = getattr(self, "_unread_returns", None)
        if unread is not None:
            self.ep_info_buffer.extend(
                {"r": r, "l": engine.max_depth} for r in unread.read().flatten().tolist()
            )
        self._unread_returns = HostCopy(torch.stack(returns)) if returns else None
        callback.on_rollout_end()
        return True

    def _collect_batches(
        self,
        env: RoutingSB3VecEnv,
        callback: BaseCallback,
        rollout_buffer: DeviceRolloutBuffer,
        n_rollout_steps: int,
    ) -> list[torch.Tensor] | None:
        """Whole batches of episodes, each one :class:`EpisodeProgram`; the returns of each batch's
        episodes, or None when a callback stopped the rollout."""
        engine = env.engine
        program = self._episode_program
        if program is None or not program.fits(self.policy, engine):
            capture = self.cuda_graph and engine.device.type == "cuda"
            program = EpisodeProgram(self.policy, engine, capture, self.torch_compile)
            self._episode_program = program
        depth = engine.max_depth
        starts = torch.zeros(depth, env.num_envs, device=self.device)
        starts[0] = 1.0  # every batch begins new episodes
        returns, n_steps = [], 0
        self_critical: list[torch.Tensor] = []  # per batch (D, B): the self-critical advantage of each step
        while n_steps < n_rollout_steps:
            if self.advantage == "self_critical":
                engine.set_baseline_routes(self._baseline_routes(env))
            out = program(env)
            rewards = out.final["step_rewards"].t() if self.reward_timing == "per_step" else out.reward
            rollout_buffer.add_steps(
                program.obs, program.actions, rewards, starts, program.values, program.log_probs
            )
            returns.append(out.reward.sum(dim=0))
            if self.advantage == "self_critical":
                episode = returns[-1] - out.final["baseline_reward"]  # (B,): the return less the baseline's
                self_critical.append(episode[None].expand(depth, -1))
            for k in range(depth):
                n_steps += 1
                self.num_timesteps += env.num_envs
                actions, values, log_probs = program.actions[k], program.values[k], program.log_probs[k]
                rewards, done = out.reward[k], k == depth - 1
                dones = np.full(env.num_envs, done)  # SB3's name: StopTrainingOnMaxEpisodes counts them
                callback.update_locals(locals())
                if not callback.on_step():
                    return None
        # the rollout ends with its episodes: GAE needs no value after it
        zeros = torch.zeros(env.num_envs, device=self.device)
        rollout_buffer.compute_returns_and_advantage(last_values=zeros, dones=torch.ones_like(zeros))
        if self_critical:
            rollout_buffer.blend_advantages(torch.cat(self_critical), self.self_critical_weight)
        self._last_episode_starts = np.ones(env.num_envs, dtype=bool)
        return returns

    @torch.no_grad()
    def _baseline_routes(self, env: RoutingSB3VecEnv) -> torch.Tensor:
        """The self-critical baseline route of every episode of the batch begun, ``(B, max_depth)``."""
        engine = env.engine
        if self.baseline_route == "greedy":
            return engine.play_routes(lambda _k, obs: self.policy.greedy_tensors(obs))
        if self.baseline_route == "sampled":
            return engine.play_routes(lambda _k, obs: self.policy.sample_tensors(obs)[0])
        if self._static_route is None or self._static_route.device != engine.device:
            n_tasks = int(env.observation_space["task"].n)
            route = static_network_route(engine.pool, n_tasks, engine.max_depth)  # (n_tasks, D)
            self._static_route = route.to(engine.device)
        return self._static_route[engine.tasks]

    def _collect_steps(
        self,
        env: RoutingSB3VecEnv,
        callback: BaseCallback,
        rollout_buffer: DeviceRolloutBuffer,
        n_rollout_steps: int,
    ) -> list[torch.Tensor] | None:
        """Step by step with SB3's policy call; the returns of the episodes that ended, or None when a
        callback stopped the rollout."""
        obs = env.tensor_observation()
        episode_starts = torch.as_tensor(self._last_episode_starts, device=self.device, dtype=torch.float32)
        episode_return = torch.zeros(env.num_envs, device=self.device)
        returns = []
        n_steps, done = 0, False
        while n_steps < n_rollout_steps:
            with torch.no_grad():
                actions, values, log_probs = self.policy(obs)
            next_obs, rewards, done, final = env.step_tensors(actions)
            self.num_timesteps += env.num_envs
            dones = np.full(env.num_envs, done)
            callback.update_locals(locals())
            if not callback.on_step():
                return None
            n_steps += 1
            rollout_buffer.add_tensors(obs, actions, rewards, episode_starts, values, log_probs)
            episode_return = episode_return + rewards
            if done:
                if self.reward_timing == "per_step":
                    rollout_buffer.set_step_rewards(final["step_rewards"])
                returns.append(episode_return)
                episode_return = torch.zeros_like(episode_return)
            obs = next_obs
            episode_starts = torch.full_like(episode_starts, float(done))
        with torch.no_grad():
            last_values = self.policy.predict_values(obs)
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=torch.tensor(done))
        self._last_episode_starts = np.full(env.num_envs, done)
        return returns


class LRNMaskablePPO(DeviceRollouts, DevicePPOUpdate, MaskablePPO):
    """sb3-contrib's MaskablePPO with rollouts and updates on the device (:class:`DeviceRollouts`,
    :class:`agents.ppo_update.DevicePPOUpdate`)."""


class LRNPPO(DeviceRollouts, DevicePPOUpdate, PPO):
    """SB3's PPO with rollouts and updates on the device (:class:`DeviceRollouts`,
    :class:`agents.ppo_update.DevicePPOUpdate`)."""


class LRNA2C(DeviceRollouts, A2C):
    """SB3's A2C with rollouts on the device (:class:`DeviceRollouts`)."""
