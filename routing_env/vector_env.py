"""The MDP as a Gymnasium vector env: ``num_envs`` episodes in lockstep on one batched engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from routing_env.batch_state import ChooseFn, EpisodeOutput, StepOutput
from routing_env.build import make_engine, observation_space, reseed_pool, to_numpy
from routing_env.config import RoutingConfig
from routing_env.engine import RoutingEngine


@dataclass
class LockstepStep:
    """One step of all episodes, as numpy: what both vector envs return, in their own conventions."""

    obs: dict[str, np.ndarray]
    rewards: np.ndarray  # (B,) float32
    done: bool
    invalid: np.ndarray  # (B,) bool
    final: dict[str, np.ndarray] | None  # last step only: route, loss, correct, ...
    final_obs: dict[str, np.ndarray] | None  # last step only: the terminal observation


def lockstep_config(num_envs: int, benchmark: str, kwargs: dict[str, Any]) -> RoutingConfig:
    """The config of a vector env of ``num_envs`` episodes per batch (its ``batch_size``)."""
    if "batch_size" in kwargs and int(kwargs["batch_size"]) != int(num_envs):
        raise ValueError(
            f"batch_size={kwargs['batch_size']} differs from num_envs={num_envs}: the vector env runs "
            "one batch of num_envs episodes per pool update"
        )
    return RoutingConfig.from_kwargs(**{**kwargs, "benchmark": benchmark, "batch_size": int(num_envs)})


class LockstepRouting:
    """``config.batch_size`` episodes on one :class:`RoutingEngine`; every episode ends at the same step,
    and the next batch begins at once (the vector envs' autoreset)."""

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self.engine: RoutingEngine
        self.engine, self.benchmark = make_engine(self.config)
        self.single_observation_space = observation_space(self.engine, self.benchmark)
        self.single_action_space = spaces.Discrete(self.engine.pool.n_actions)
        # Without a seed kwarg, the first seeded reset before any step draws the pool's initial weights.
        self._pool_seed_open = config.seed is None

    def observation(self) -> dict[str, np.ndarray]:
        return to_numpy(self.engine.observation())

    def step_tensor(self, actions: torch.Tensor) -> tuple[StepOutput, dict[str, torch.Tensor]]:
        """Step with an action tensor ``(B,)`` on the engine's device; after the last step the next batch
        begins at once. Returns the step's output and the next observation, as tensors (no host copy)."""
        out = self.engine.step(actions)
        self._pool_seed_open = False
        if out.done:
            self.engine.begin_batch()
        return out, self.engine.observation()

    def play_tensor(
        self, choose: ChooseFn | None = None, steps: Callable[[], torch.Tensor] | None = None
    ) -> EpisodeOutput:
        """All steps of the current batch at once (:meth:`RoutingEngine.play`), from its first step; the
        next batch begins at once."""
        out = self.engine.play(choose, steps)
        self._pool_seed_open = False
        self.engine.begin_batch()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The engine's state (pool, optimizer, walk); a later seeded reset keeps these pool weights."""
        self.engine.load_state_dict(state)
        self._pool_seed_open = False

    def reset(self, seed: int | None) -> dict[str, np.ndarray]:
        if seed is not None:
            self.engine.seed(seed)
            if self._pool_seed_open:
                reseed_pool(self.engine.pool, self.config, self.benchmark, seed)
                self._pool_seed_open = False
        self.engine.begin_batch()
        return self.observation()

    def step(self, actions: np.ndarray) -> LockstepStep:
        actions = np.asarray(actions).reshape(-1)
        n = self.engine.pool.n_actions
        if actions.shape[0] != self.engine.batch_size:
            raise ValueError(f"expected {self.engine.batch_size} actions, got {actions.shape[0]}")
        if not np.issubdtype(actions.dtype, np.integer) or actions.min() < 0 or actions.max() >= n:
            raise ValueError(f"actions must be integers in [0, {n}), got {actions!r}")
        out = self.engine.step(torch.as_tensor(actions))
        self._pool_seed_open = False
        final = final_obs = None
        if out.done:
            final = to_numpy(out.final, skip=("reward",))
            final_obs = self.observation()
            self.engine.begin_batch()
        return LockstepStep(
            obs=self.observation(),
            rewards=out.reward.float().cpu().numpy(),
            done=out.done,
            invalid=out.invalid.cpu().numpy(),
            final=final,
            final_obs=final_obs,
        )


class RoutingVectorEnv(VectorEnv):
    """``num_envs`` LRN episodes in lockstep, one instance each (``gymnasium.make_vec`` with
    ``vectorization_mode="vector_entry_point"``).

    Spaces, actions, rewards and kwargs are those of :class:`routing_env.RoutingEnv`, batched; the
    collapse bonus counts and the pool update run over the ``num_envs`` episodes of each batch
    (``batch_size`` is ``num_envs``). All episodes end together after ``max_depth`` steps and the next
    batch starts in the same step (``AutoresetMode.SAME_STEP``). ``infos`` follow Gymnasium 1.x's
    layout for that mode (as ``SyncVectorEnv`` builds them, every key ``k`` with its mask ``_k``): before
    the last step ``invalid_action``; at the last step ``final_obs`` (an object array of the terminal
    observations) and ``final_info``, whose keys are ``invalid_action``, ``route``, ``loss``,
    ``correct``, ``prediction``, ``bonus``, ``reward_loss``, ``reward_bonus``, ``task``, ``kind``,
    ``label``, ``pair_index`` and ``epoch`` (arrays over the envs).

    Seeding follows :class:`routing_env.RoutingEnv`: without a ``seed`` kwarg the first seeded reset
    before any step (or loaded state) also draws the pool's initial weights.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 128, benchmark: str = "mnist", **kwargs: Any) -> None:
        self.core = LockstepRouting(lockstep_config(num_envs, benchmark, kwargs))
        self.num_envs = int(num_envs)
        self.engine = self.core.engine
        self.config = self.core.config
        self.single_observation_space = self.core.single_observation_space
        self.single_action_space = self.core.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.action_names = self.engine.pool.action_names

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        engine_seed = int(self.np_random.integers(2**62)) if seed is not None else None
        return self.core.reset(engine_seed), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        s = self.core.step(actions)

        def every() -> np.ndarray:  # a mask "this env has the key", one array per key
            return np.ones(self.num_envs, dtype=bool)

        step_info = {"invalid_action": s.invalid, "_invalid_action": every()}
        infos: dict[str, Any] = step_info
        if s.done:
            # Gymnasium's same-step autoreset: the step's info moves into final_info, the top level holds
            # the (empty) info of the resets; final_obs holds one observation dict per env.
            for key, value in s.final.items():
                step_info[key], step_info[f"_{key}"] = value, every()
            final_obs = np.empty(self.num_envs, dtype=object)
            final_obs[:] = [{k: v[i] for k, v in s.final_obs.items()} for i in range(self.num_envs)]
            infos = {
                "final_obs": final_obs,
                "_final_obs": every(),
                "final_info": step_info,
                "_final_info": every(),
            }
        terminated = np.full(self.num_envs, s.done)
        truncated = np.zeros(self.num_envs, dtype=bool)
        return s.obs, s.rewards, terminated, truncated, infos

    def action_masks(self) -> np.ndarray:
        """``(num_envs, n_actions)`` bool: the valid actions of every episode now."""
        return self.engine.action_mask().to("cpu", copy=True).numpy()

    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state)
