"""The MDP as a Stable-Baselines3 ``VecEnv``, on the same batched engine as the Gymnasium vector env."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from routing_env.batch_state import ChooseFn, EpisodeOutput
from routing_env.config import RoutingConfig
from routing_env.registration import benchmark_of
from routing_env.vector_env import LockstepRouting, lockstep_config


class RoutingSB3VecEnv(VecEnv):
    """``num_envs`` LRN episodes in lockstep for SB3 and sb3-contrib (``MaskablePPO`` gets the action
    masks through ``env_method("action_masks")``).

    Args:
        env_id: a routing env id (``"RoutingMNIST-v0"``, ``"module:MyBench-v0"``, ...) or a benchmark
            name (``"mnist"``, ``"cifar"``, ``"min"``).
        num_envs: episodes per batch (the pool update and the bonus count run over them).
        **kwargs: the env kwargs of :class:`routing_env.RoutingEnv` (``batch_size`` is ``num_envs``).

    SB3 conventions: ``reset()`` returns only observations; at the last step ``dones`` is all True,
    the returned observations are the next batch's first ones and ``infos[i]["terminal_observation"]``
    holds the terminal one, beside ``route``, ``loss``, ``correct``, ``bonus``, ``epoch`` and an SB3
    ``episode`` record (return ``r``, length ``l``).
    """

    def __init__(self, env_id: str = "RoutingMNIST-v0", num_envs: int = 128, **kwargs: Any) -> None:
        self._init(lockstep_config(num_envs, benchmark_of(env_id), kwargs))

    @classmethod
    def from_config(cls, config: RoutingConfig) -> RoutingSB3VecEnv:
        """The vector env of ``config`` (``num_envs`` = ``config.batch_size``)."""
        env = cls.__new__(cls)
        env._init(config)
        return env

    def _init(self, config: RoutingConfig) -> None:
        num_envs = config.batch_size
        self.core = LockstepRouting(config)
        self.engine = self.core.engine
        self.config = self.core.config
        self.action_names = self.engine.pool.action_names
        self.render_mode = None
        super().__init__(num_envs, self.core.single_observation_space, self.core.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(num_envs, dtype=np.float64)

    def reset(self) -> dict[str, np.ndarray]:
        seed = self._seeds[0]
        obs = self.core.reset(seed)
        self._returns[:] = 0.0
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        s = self.core.step(self._actions)
        self._actions = None
        self._returns += s.rewards
        dones = np.full(self.num_envs, s.done)
        if not s.done:
            infos = [{"invalid_action": bool(x)} for x in s.invalid]
            return s.obs, s.rewards, dones, infos
        depth = self.engine.max_depth
        infos = [
            {
                "invalid_action": bool(s.invalid[i]),
                "terminal_observation": {k: v[i] for k, v in s.final_obs.items()},
                "episode": {"r": float(self._returns[i]), "l": depth},
                **{k: v[i] for k, v in s.final.items()},
            }
            for i in range(self.num_envs)
        ]
        self._returns[:] = 0.0
        return s.obs, s.rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        return self.engine.action_mask().to("cpu", copy=True).numpy()

    # --- the same steps as tensors on the engine's device, for rollouts that stay there
    # (agents.rollout.DeviceRollouts): no host copies, no info dicts.
    def tensor_observation(self) -> dict[str, torch.Tensor]:
        """The current observation of every env, ``{key: (num_envs, ...)}`` on the engine's device."""
        return self.engine.observation()

    def step_tensors(
        self, actions: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool, dict[str, torch.Tensor] | None]:
        """One step from an action tensor ``(num_envs,)``: the next observation (the next batch's first
        after the last step), the rewards ``(num_envs,)``, whether the episodes ended, and at their end
        the engine's final tensors (``step_rewards``, ``loss``, ``route``, ...)."""
        out, obs = self.core.step_tensor(actions)
        return obs, out.reward, out.done, out.final

    def play_tensors(
        self, choose: ChooseFn | None = None, steps: Callable[[], torch.Tensor] | None = None
    ) -> EpisodeOutput:
        """All ``max_depth`` steps of the current batch at once, the episodes' actions picked by
        ``choose(k, obs)`` (or by ``steps``, a captured run of the engine's ``episode_steps``: see
        :meth:`RoutingEngine.play`); the next batch begins at once. The env must be at a batch's first
        step. Returns every step's rewards and invalid flags ``(max_depth, num_envs)`` and the final
        tensors."""
        return self.core.play_tensor(choose, steps)

    def close(self) -> None:
        pass

    # --- SB3's per-sub-env attribute API: every sub-env is a view of the one engine.
    def has_attr(self, attr_name: str) -> bool:
        return hasattr(self, attr_name)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            return list(self.action_masks()[idx])
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]

    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state)
