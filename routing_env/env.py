"""The LRN network-construction MDP as a single-instance Gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from routing_env.build import make_engine, observation_space, reseed_pool, to_numpy
from routing_env.config import RoutingConfig
from routing_env.copies import prepare_worker_process, warn_if_separate_pools
from routing_env.render import RENDER_MODES, RouteView, route_image, route_text


class RoutingEnv(gym.Env):
    """Build a neural network for one (image, task) instance, one module per step.

    ## Description
    The env holds a shared pool of modules (LRN paper section 5.2): input convs, hidden convs, hidden
    fully-connected layers and output heads, ``duplicates`` copies of each. An episode builds one
    network for one instance of a multi-task benchmark (MNIST-MTL, CIFAR-MTL or MIN-MTL) in exactly
    ``max_depth`` steps, runs it on the instance and trains the pool on the networks agents build.

    ## Action space
    ``Discrete(n_modules + 1)``: module ids ``0 .. n_modules-1`` (bank by bank, see
    ``env.unwrapped.action_names``), and ``n_modules`` = PASS. Valid actions:

    * step 0: an input module (reads the image);
    * steps ``1 .. max_depth-2``: a module whose input type is the current activation's type and that
      this network does not use yet, or PASS (keep the current activation);
    * step ``max_depth-1``: an output head that fits the current activation (PASS is not valid); with
      ``task_heads=True`` (not in the paper) only a head of the instance's own task (duplicate ``task``
      of each head kind when there are as many duplicates as tasks).

    ``action_masks()`` (sb3-contrib's convention) and ``obs["action_mask"]`` give the valid ones. An
    invalid action does not crash the env: PASS is taken instead where it is valid, else the
    lowest-numbered valid module; the step costs ``invalid_action_penalty`` and
    ``info["invalid_action"]`` is True.

    ## Observation space
    ``Dict``: ``image`` (uint8, ``(C, H, W)``), ``task`` (``Discrete(n_tasks)``), ``route`` (the action
    ids so far, ``n_actions`` where no step was taken yet), ``step`` (``Discrete(max_depth + 1)``) and
    ``action_mask`` (``MultiBinary(n_actions)``).

    ## Rewards
    0 before the last step (minus ``invalid_action_penalty`` at a step with an invalid action). At the
    last step: minus the cross-entropy loss of the built network on the instance plus
    ``bonus_weight`` times the sum, over the modules the network uses, of the collapse bonus
    ``r_i = 1 - (c_i - c_min) / (c_max - c_min)`` (paper eq. 6; 0 for all when all counts are equal),
    with counts ``c`` over this env's last ``batch_size`` episodes (``bonus_scope="task"``: only those of
    the episode's task; ``"kind"``: ``c_min`` and ``c_max`` within the module's kind).

    ## Module training
    The env accumulates the gradient of each episode's loss and takes one Adam step on the pool every
    ``batch_size`` episodes (lr ``lr``, times ``lr_decay`` after each pass over the training pairs).
    The reward uses the loss before the step. ``split="test"`` walks the test pairs once per pass, in
    order, with a frozen pool; ``train_modules=False`` freezes the pool on any split.

    ## Episode end
    Always after ``max_depth`` steps (``terminated=True``); never truncated.

    ## Info
    Every step: ``invalid_action``. Last step: ``route``, ``loss``, ``correct``, ``prediction``,
    ``bonus``, ``reward_loss`` (= -loss), ``reward_bonus`` (= bonus_weight * bonus), ``step_rewards``
    (the same reward spread over the steps as the paper's eq. 7 assigns it: each step's module's bonus,
    the loss at the last step; they sum to the reward), ``task``, ``kind`` (the pair's kind of instance on
    a probe benchmark, else 0), ``label``, ``pair_index`` and ``epoch`` (the pass over the split the pair
    came from).

    ## Arguments
    See :class:`routing_env.config.RoutingConfig`: ``data_root``, ``download``, ``data_seed``,
    ``split``, ``max_pairs``, ``duplicates`` (10), ``max_depth`` (6), ``batch_size`` (128),
    ``bonus_weight`` (1), ``bonus_warmup`` (0), ``invalid_action_penalty`` (1), ``lr`` (1e-4),
    ``lr_decay`` (0.97), ``train_modules``, ``device`` ("auto"), ``seed``, ``dispatch``, ``pool``,
    ``benchmark_kwargs``; and Gymnasium's ``render_mode`` (``"ansi"``: the route being built as text;
    ``"rgb_array"``: the image with the route drawn under it).

    ## Seeding
    ``seed`` seeds the pool's initial weights and the data walk. Without it, the first
    ``reset(seed=s)`` before any step (or ``load_state_dict``) also draws the pool's initial weights
    from ``s``, so two fresh envs reset with the same seed and given the same actions return the same
    rewards. A later ``reset(seed=s)`` restarts the data walk (and empties the collapse-bonus window)
    only. Every ``reset(seed=s)`` leaves ``np_random`` in the same state, whatever came before
    (Gymnasium's ``check_env`` asks for that).

    ## Copies
    Every ``RoutingEnv`` owns its module pool. Gymnasium's sync / async vector envs and SB3's
    DummyVecEnv / SubprocVecEnv build one copy per sub-env, so each trains its own pool (a
    :class:`routing_env.copies.SeparatePoolsWarning` says so). For one pool shared by a batch of episodes
    use ``gymnasium.make_vec(id, num_envs=128, vectorization_mode="vector_entry_point")`` or
    :class:`routing_env.RoutingSB3VecEnv` (SB3). In a worker process the env runs torch with one thread
    (safe after ``fork``). Pickling (and ``copy.deepcopy``) keeps the config, the pool, its optimizer and
    the data walk, not the data: it is loaded again on unpickling.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, benchmark: str = "mnist", render_mode: str | None = None, **kwargs: Any) -> None:
        prepare_worker_process()
        config = RoutingConfig.from_kwargs(benchmark=benchmark, **kwargs)
        self._build(config, render_mode)
        warn_if_separate_pools(bool(config.train_modules))

    def _build(self, config: RoutingConfig, render_mode: str | None) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES} or None, got {render_mode!r}")
        self.config = config
        self.render_mode = render_mode
        # One episode at a time; the pool is updated (and the bonus counted) every batch_size episodes.
        self.engine, self.benchmark = make_engine(
            self.config, batch_size=1, update_every=self.config.batch_size
        )
        self.observation_space = observation_space(self.engine, self.benchmark)
        self.action_space = spaces.Discrete(self.engine.pool.n_actions)
        self.action_names = self.engine.pool.action_names
        # The pool's initial weights follow the first seeded reset until a step was taken (no seed kwarg).
        self._pool_seed_open = self.config.seed is None
        self._episode_open = False
        self._final: dict[str, Any] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            # One draw for the walk and the pool alike, so the generator's state after a seeded reset
            # depends on the seed alone, not on whether the pool's weights were still open to seeding.
            episode_seed = int(self.np_random.integers(2**62))
            self.engine.seed(episode_seed)
            if self._pool_seed_open:
                reseed_pool(self.engine.pool, self.config, self.benchmark, episode_seed)
                self._pool_seed_open = False
        self.engine.begin_batch()
        self._episode_open, self._final = True, None
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        # Only one integer in range: np.int64(action) would truncate 1.5 or True to 1.
        a = np.asarray(action)
        if (
            a.size != 1
            or not np.issubdtype(a.dtype, np.integer)
            or not self.action_space.contains(a.reshape(()))
        ):
            raise ValueError(f"action {action!r} is outside the action space {self.action_space}")
        out = self.engine.step(torch.tensor([int(a.reshape(()))]))
        self._pool_seed_open = False
        info: dict[str, Any] = {"invalid_action": bool(out.invalid[0])}
        if out.done:
            final = {k: v[0] for k, v in to_numpy(out.final, skip=("reward",)).items()}
            info.update({k: v.tolist() for k, v in final.items()})  # route, step_rewards: lists
            self._episode_open, self._final = False, info
        return self._obs(), float(out.reward[0]), bool(out.done), False, info

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: the route being built as text; ``"rgb_array"``: ``(H, W, 3)`` uint8, the image
        with the route drawn under it (see :func:`routing_env.render.route_image`); None without a
        ``render_mode``."""
        if self.render_mode is None:
            return None
        if not self._episode_open and self._final is None:
            raise RuntimeError("render() before reset(): there is no episode to show")
        return route_text(self._view()) if self.render_mode == "ansi" else route_image(self._view())

    def _view(self) -> RouteView:
        obs = self._obs()
        task = int(obs["task"])
        pool = self.engine.pool
        return RouteView(
            image=obs["image"],
            task=task,
            task_name=self.benchmark.task_names[task] if self.benchmark.task_names else str(task),
            label=int(self.engine.labels[0]),
            route=obs["route"],
            step=int(obs["step"]),
            action_names=self.action_names,
            action_bank=pool.action_bank.cpu().numpy(),
            action_dup=pool.action_dup.cpu().numpy(),
            valid=obs["action_mask"].astype(bool),
            final=self._final,
        )

    def action_masks(self) -> np.ndarray:
        """The valid actions now, ``(n_actions,)`` bool (sb3-contrib's MaskablePPO calls this)."""
        return self.engine.action_mask()[0].to("cpu", copy=True).numpy()

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in to_numpy(self.engine.observation()).items()}

    # Pool checkpoints: an SB3 model file holds the agent, not the env's pool and its optimizer.
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)
        self._pool_seed_open = False  # a later seeded reset keeps the loaded pool

    # Pickling keeps what cannot be rebuilt (pool, optimizer, walk); the data is loaded again.
    def __getstate__(self) -> dict[str, Any]:
        if self._episode_open and self.engine.step_index > 0:
            raise TypeError(
                "a RoutingEnv cannot be pickled or copied mid-episode (the network being built lives on "
                "the autograd tape); do it right after reset() or after the last step"
            )
        return {
            "config": self.config,
            "render_mode": self.render_mode,
            "engine": self.engine.state_dict(),
            "np_random": self._np_random,
            "np_random_seed": self._np_random_seed,
            "pool_seed_open": self._pool_seed_open,
            "episode_open": self._episode_open,
            "spec": self.spec,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        prepare_worker_process()
        self._build(state["config"], state["render_mode"])
        self.engine.load_state_dict(state["engine"])
        self._np_random, self._np_random_seed = state["np_random"], state["np_random_seed"]
        self._pool_seed_open, self.spec = state["pool_seed_open"], state["spec"]
        if state["episode_open"]:
            self.engine.begin_batch()  # the state holds the walk before this episode's draw: same pair
            self._episode_open = True
