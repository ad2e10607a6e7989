"""A rollout buffer that keeps SB3's rollouts as torch tensors on the policy's device, and GAE on them."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableDictRolloutBufferSamples

# Above this many elements of GAE's (T, T, n_envs) weights, GAE runs SB3's loop over the steps instead.
GAE_MATRIX_LIMIT = 1 << 22


class DeviceRolloutBuffer(MaskableDictRolloutBuffer):
    """sb3-contrib's masked Dict rollout buffer, with its storage as torch tensors on the policy's device.

    ``add`` still takes SB3's numpy arguments (so SB3's own collection works with it); :meth:`add_tensors`
    and :meth:`add_steps` take device tensors without a copy to the host. ``values`` and ``returns`` read
    as numpy, as SB3's ``train()`` expects for its explained-variance log. The storage is allocated once
    and written in place (a captured PPO update reads it: :mod:`agents.ppo_update`).
    """

    def reset(self) -> None:
        n, e, dev = self.buffer_size, self.n_envs, self.device
        self.mask_dims = int(self.action_space.n)
        if getattr(self, "t_actions", None) is None:
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

    def add_steps(
        self,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        rewards: torch.Tensor,
        episode_starts: torch.Tensor,
        values: torch.Tensor,
        log_probs: torch.Tensor,
    ) -> None:
        """Store ``T`` steps of every env at once: ``obs`` ``{key: (T, n_envs, ...)}`` (a Discrete id may
        be ``(T, n_envs)``), the rest ``(T, n_envs)``."""
        steps = actions.shape[0]
        if self.pos + steps > self.buffer_size:
            raise ValueError(f"{steps} steps do not fit: {self.pos} of {self.buffer_size} are stored")
        rows = slice(self.pos, self.pos + steps)
        for key, value in obs.items():
            self.obs[key][rows] = value.reshape(steps, *self.obs[key].shape[1:])
        for store, value in (
            (self.t_actions, actions),
            (self.t_rewards, rewards),
            (self.t_episode_starts, episode_starts),
            (self.t_values, values),
            (self.t_log_probs, log_probs),
        ):
            store[rows] = value
        self.pos += steps
        self.full = self.pos == self.buffer_size

    def add_tensors(self, obs: dict[str, torch.Tensor], *columns: torch.Tensor) -> None:
        """Store one step of every env: ``obs`` ``{key: (n_envs, ...)}``, then the actions, rewards,
        episode starts, values and log-probabilities, each ``(n_envs,)`` (as :meth:`add_steps`)."""
        self.add_steps(
            {key: value[None] for key, value in obs.items()}, *(c.reshape(1, self.n_envs) for c in columns)
        )

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
        """GAE(lambda), as SB3's, on the device (:func:`gae_advantages`)."""
        last_values = last_values.reshape(-1).to(self.t_values)
        dones = torch.as_tensor(
            np.asarray(dones) if not torch.is_tensor(dones) else dones, device=self.device
        )
        last_non_terminal = (1.0 - dones.float()).expand(self.n_envs)
        self.t_advantages.copy_(
            gae_advantages(
                self.t_rewards,
                self.t_values,
                self.t_episode_starts,
                last_values,
                last_non_terminal,
                self.gamma,
                self.gae_lambda,
            )
        )
        torch.add(self.t_advantages, self.t_values, out=self.t_returns)

    def blend_advantages(self, advantages: torch.Tensor, weight: float) -> None:
        """Replace the stored advantages by ``weight * advantages + (1 - weight) * stored`` (``advantages``
        ``(buffer_size, n_envs)``, e.g. self-critical ones); the returns the critic learns stay GAE's."""
        if advantages.shape != self.t_advantages.shape:
            raise ValueError(
                f"advantages of shape {tuple(advantages.shape)}; the buffer holds "
                f"{tuple(self.t_advantages.shape)}"
            )
        self.t_advantages.mul_(1.0 - weight).add_(advantages.to(self.t_advantages), alpha=weight)

    def flat(self) -> dict[str, Any]:
        """The storage as views of ``buffer_size * n_envs`` transitions (step-major): ``obs`` (a dict),
        ``actions``, ``values``, ``log_probs``, ``advantages``, ``returns``."""
        total = self.buffer_size * self.n_envs
        columns = {
            "actions": self.t_actions,
            "values": self.t_values,
            "log_probs": self.t_log_probs,
            "advantages": self.t_advantages,
            "returns": self.t_returns,
        }
        return {
            "obs": {k: v.view(total, *v.shape[2:]) for k, v in self.obs.items()},
            **{k: v.view(total) for k, v in columns.items()},
        }

    def permutation(self) -> torch.Tensor:
        """A random order of the stored transitions, ``(buffer_size * n_envs,)``: one PPO epoch's
        minibatches are its consecutive slices (``get`` and the captured update draw it alike)."""
        return torch.randperm(self.buffer_size * self.n_envs, device=self.device)

    def get(self, batch_size: int | None = None) -> Generator[MaskableDictRolloutBufferSamples, None, None]:  # type: ignore[override]
        assert self.full, "the rollout buffer is not full"
        total = self.buffer_size * self.n_envs
        indices = self.permutation()
        batch_size = batch_size or total
        flat = self.flat()
        for start in range(0, total, batch_size):
            idx = indices[start : start + batch_size]
            observations = {k: v[idx] for k, v in flat["obs"].items()}
            yield MaskableDictRolloutBufferSamples(
                observations=observations,
                actions=flat["actions"][idx, None],
                old_values=flat["values"][idx],
                old_log_prob=flat["log_probs"][idx],
                advantages=flat["advantages"][idx],
                returns=flat["returns"][idx],
                action_masks=observations["action_mask"].float(),
            )


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    episode_starts: torch.Tensor,
    last_values: torch.Tensor,
    last_non_terminal: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """GAE(lambda) advantages ``(T, E)`` of ``T`` steps of ``E`` envs, as SB3's
    ``RolloutBuffer.compute_returns_and_advantage`` defines them: with ``delta_t = r_t + gamma *
    V_{t+1} * n_t - V_t`` and ``c_t = gamma * lambda * n_t`` (``n_t``: step ``t + 1`` continues the
    episode; ``last_*`` for the step after the rollout),

        A_t = delta_t + c_t A_{t+1} = sum_{j >= t} (c_t ... c_{j-1}) delta_j.

    The sum is a few batched kernels over a ``(T, T, E)`` weight tensor instead of SB3's loop of ``T``
    steps of small kernels; long rollouts (over :data:`GAE_MATRIX_LIMIT` weights) run the loop.
    """
    steps, envs = rewards.shape
    next_values = torch.cat([values[1:], last_values[None]])  # (T, E)
    non_terminal = torch.cat([1.0 - episode_starts[1:], last_non_terminal[None]])  # (T, E)
    delta = rewards + gamma * next_values * non_terminal - values
    carry = gamma * gae_lambda * non_terminal  # (T, E): how much of A_{t+1} reaches A_t
    if steps * steps * envs > GAE_MATRIX_LIMIT:
        advantages = torch.empty_like(delta)
        last = torch.zeros_like(last_values)
        for t in reversed(range(steps)):
            last = delta[t] + carry[t] * last
            advantages[t] = last
        return advantages
    index = torch.arange(steps, device=rewards.device)
    later = index[None, :] >= index[:, None]  # (T, T): [t, j] = j >= t
    # products[t, j] = c_t ... c_j for j >= t (the factors before t are 1)
    products = torch.where(later[..., None], carry[None], 1.0).cumprod(dim=1)  # (T, T, E)
    weights = torch.cat([torch.ones_like(products[:, :1]), products[:, :-1]], dim=1)  # c_t ... c_{j-1}
    return (weights * later[..., None] * delta[None]).sum(dim=1)


def _torch_dtype(space: spaces.Space) -> torch.dtype:
    if isinstance(space, spaces.Box):
        return torch.uint8 if space.dtype == np.uint8 else torch.float32
    if isinstance(space, spaces.MultiBinary):
        return torch.int8
    return torch.long
