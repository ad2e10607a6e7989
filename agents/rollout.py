"""Rollouts on the device: a rollout buffer that keeps SB3's rollouts as torch tensors, and a rollout
collection that drives the routing env's engine with tensors, for SB3's on-policy algorithms.

SB3's own ``collect_rollouts`` speaks to any ``VecEnv`` in numpy: per step it copies the observations to
the host and back, the actions to the host and back, the masks to the host, builds an info dict per
episode and stores everything in numpy. With the routing env all of that lives on one device already, so
:class:`DeviceRollouts` (mixed into PPO, A2C and MaskablePPO) keeps it there: the policy reads the engine's
observation tensors, the engine takes the sampled action tensor, and :class:`DeviceRolloutBuffer` stores
both. SB3's ``train()`` (the PPO/A2C update), policies, callbacks, logging and save/load are unchanged.

The collection also decides how the episode's reward reaches GAE (``reward_timing``):

* ``"per_step"`` (the paper, eq. 7): step ``t`` earns the collapse bonus of the module it chose, and the
  last step also earns minus the loss; the env's final info holds these ``step_rewards``.
* ``"terminal"``: the whole reward (minus the loss plus every chosen module's bonus) at the last step,
  as the env returns it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableDictRolloutBufferSamples
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback

from agents.config import REWARD_TIMINGS
from routing_env.sb3_vec_env import RoutingSB3VecEnv


class DeviceRolloutBuffer(MaskableDictRolloutBuffer):
    """sb3-contrib's masked Dict rollout buffer, with its storage as torch tensors on the policy's device.

    ``add`` still takes SB3's numpy arguments (so SB3's own collection works with it); :meth:`add_tensors`
    takes device tensors without a copy to the host. ``values`` and ``returns`` read as numpy, as SB3's
    ``train()`` expects for its explained-variance log.
    """

    def reset(self) -> None:
        n, e, dev = self.buffer_size, self.n_envs, self.device
        self.mask_dims = int(self.action_space.n)
        self.obs = {
            key: torch.zeros((n, e, *shape), dtype=_torch_dtype(self.observation_space[key]), device=dev)
            for key, shape in self.obs_shape.items()
        }
        self.t_actions = torch.zeros((n, e), dtype=torch.long, device=dev)
        self.t_rewards = torch.zeros((n, e), device=dev)
        self.t_episode_starts = torch.zeros((n, e), device=dev)
        self.t_values = torch.zeros((n, e), device=dev)
        self.t_log_probs = torch.zeros((n, e), device=dev)
        self.t_advantages = torch.zeros((n, e), device=dev)
        self.t_returns = torch.zeros((n, e), device=dev)
        self.generator_ready = False
        self.pos, self.full = 0, False

    @property
    def values(self) -> np.ndarray:  # type: ignore[override]
        return self.t_values.cpu().numpy()

    @property
    def returns(self) -> np.ndarray:  # type: ignore[override]
        return self.t_returns.cpu().numpy()

    def add_tensors(
        self,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        rewards: torch.Tensor,
        episode_starts: torch.Tensor,
        values: torch.Tensor,
        log_probs: torch.Tensor,
    ) -> None:
        """Store one step of every env: ``obs`` ``{key: (n_envs, ...)}``, the rest ``(n_envs,)``."""
        p = self.pos
        for key, value in obs.items():
            self.obs[key][p] = value.reshape(self.obs[key].shape[1:])
        self.t_actions[p] = actions.reshape(-1)
        self.t_rewards[p] = rewards.reshape(-1)
        self.t_episode_starts[p] = episode_starts.reshape(-1)
        self.t_values[p] = values.reshape(-1)
        self.t_log_probs[p] = log_probs.reshape(-1)
        self.pos += 1
        self.full = self.pos == self.buffer_size

    def add(self, obs, action, reward, episode_start, value, log_prob, action_masks=None) -> None:  # type: ignore[override]
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), device=self.device)  # noqa: E731
        self.add_tensors(
            {k: as_tensor(v) for k, v in obs.items()},
            as_tensor(action),
            as_tensor(reward).float(),
            as_tensor(episode_start).float(),
            value,
            log_prob,
        )

    def set_step_rewards(self, step_rewards: torch.Tensor) -> None:
        """Replace the rewards of the episodes that just ended, ``(n_envs, T)``, by per-step rewards; the
        buffer must hold their ``T`` steps as its last ``T`` positions."""
        depth = step_rewards.shape[1]
        if self.pos < depth:
            raise ValueError(
                "per-step rewards need rollouts of whole episodes: n_steps = max_depth (or a multiple)"
            )
        self.t_rewards[self.pos - depth : self.pos] = step_rewards.t()

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: Any) -> None:
        """GAE(lambda), as SB3's, on the device."""
        last_values = last_values.reshape(-1).to(self.t_values)
        dones = torch.as_tensor(
            np.asarray(dones) if not torch.is_tensor(dones) else dones, device=self.device
        )
        last_gae = torch.zeros_like(last_values)
        for step in reversed(range(self.buffer_size)):
            if step == self.buffer_size - 1:
                next_non_terminal = 1.0 - dones.float()
                next_values = last_values
            else:
                next_non_terminal = 1.0 - self.t_episode_starts[step + 1]
                next_values = self.t_values[step + 1]
            delta = self.t_rewards[step] + self.gamma * next_values * next_non_terminal - self.t_values[step]
            last_gae = delta + self.gamma * self.gae_lambda * next_non_terminal * last_gae
            self.t_advantages[step] = last_gae
        self.t_returns = self.t_advantages + self.t_values

    def get(self, batch_size: int | None = None) -> Generator[MaskableDictRolloutBufferSamples, None, None]:  # type: ignore[override]
        assert self.full, "the rollout buffer is not full"
        total = self.buffer_size * self.n_envs
        indices = torch.randperm(total, device=self.device)
        batch_size = batch_size or total
        flat = {k: v.reshape(total, *v.shape[2:]) for k, v in self.obs.items()}
        columns = [self.t_actions, self.t_values, self.t_log_probs, self.t_advantages, self.t_returns]
        actions, values, log_probs, advantages, returns = (c.reshape(total) for c in columns)
        for start in range(0, total, batch_size):
            idx = indices[start : start + batch_size]
            observations = {k: v[idx] for k, v in flat.items()}
            yield MaskableDictRolloutBufferSamples(
                observations=observations,
                actions=actions[idx, None],
                old_values=values[idx],
                old_log_prob=log_probs[idx],
                advantages=advantages[idx],
                returns=returns[idx],
                action_masks=observations["action_mask"].float(),
            )


def _torch_dtype(space: spaces.Space) -> torch.dtype:
    if isinstance(space, spaces.Box):
        return torch.uint8 if space.dtype == np.uint8 else torch.float32
    if isinstance(space, spaces.MultiBinary):
        return torch.int8
    return torch.long


class DeviceRollouts:
    """Mixin for SB3 on-policy algorithms: collect rollouts on a :class:`RoutingSB3VecEnv` with tensors on
    the device (module docstring). Other envs (e.g. a wrapped one) take SB3's own numpy path.

    :param reward_timing: ``"per_step"`` (paper eq. 7) or ``"terminal"`` (module docstring).
    """

    def __init__(self, *args: Any, reward_timing: str = "per_step", **kwargs: Any) -> None:
        if reward_timing not in REWARD_TIMINGS:
            raise ValueError(f"reward_timing must be one of {REWARD_TIMINGS}, got {reward_timing!r}")
        self.reward_timing = reward_timing
        kwargs.setdefault("rollout_buffer_class", DeviceRolloutBuffer)
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_unread_returns"]  # device tensors, statistics only

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
            callback.update_locals(locals())
            if not callback.on_step():
                return False
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
        # SB3's episode statistics, read from the device one rollout late: by then the GPU is done with
        # them, so the read does not wait for this rollout's pool update.
        for batch_returns in getattr(self, "_unread_returns", []):
            self.ep_info_buffer.extend({"r": r, "l": env.engine.max_depth} for r in batch_returns.tolist())
        self._unread_returns = returns
        callback.on_rollout_end()
        return True


class LRNMaskablePPO(DeviceRollouts, MaskablePPO):
    """sb3-contrib's MaskablePPO with rollouts on the device (:class:`DeviceRollouts`)."""


class LRNPPO(DeviceRollouts, PPO):
    """SB3's PPO with rollouts on the device (:class:`DeviceRollouts`)."""


class LRNA2C(DeviceRollouts, A2C):
    """SB3's A2C with rollouts on the device (:class:`DeviceRollouts`)."""
