"""The batched engine: B network-construction episodes in lockstep, as tensors on one device.

Every env in this package is a thin view of a :class:`RoutingEngine`; the trainers that need no SB3
(the static network, the routing network) and the evaluation drive it directly, through the same
contract (see the class docstring), so both faces of the MDP are one.

A step records each episode's module (the observation and the mask depend only on the activation types and
the modules used, never on activations). At the last step the engine runs the networks, computes each
one's loss and reward and, when training, updates the pool (:class:`routing_env.pool_step.PoolStep`, on a
GPU one CUDA graph). No per-sample Python and no host-device copies happen in :meth:`RoutingEngine.step`;
the only host syncs are in the ``compact`` and ``grouped`` dispatch modes meant for CPUs. A batch's state
is tensors allocated once and written in place (:class:`routing_env.batch_state.BatchState`), so the
``max_depth`` steps of a batch are one fixed-shape program (:meth:`RoutingEngine.episode_steps`) that a
caller may capture as one CUDA graph and hand back to :meth:`RoutingEngine.play`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from routing_env.batch_state import BatchState, ChooseFn, EpisodeOutput, StepOutput
from routing_env.benchmarks.base import MTLSplit
from routing_env.config import RoutingConfig, resolve_device
from routing_env.counterfactual import baseline_rewards, play_routes, route_losses
from routing_env.data_walk import PairDraws
from routing_env.modules import ModulePool
from routing_env.network import resolve_dispatch
from routing_env.oracle_route import oracle_losses
from routing_env.pool_step import PoolStep
from routing_env.rewards import UsageWindow, batch_rewards, episode_bonus_weights, step_bonuses
from routing_env.rules import RouteRules
from routing_env.stats import EpisodeStats


class RoutingEngine:
    """Runs ``batch_size`` episodes in lockstep over one data split with one module pool.

    The contract every user of the engine (envs, trainers, evaluation) keeps:

    * :meth:`begin_batch` starts ``batch_size`` episodes on the next pairs of the split;
    * :meth:`observation` and :meth:`action_mask` give the state as ``(B, ...)`` tensors;
    * :meth:`step` takes ``(B,)`` actions; after ``max_depth`` steps its output is ``done`` with
      ``final`` set, and the next call must be :meth:`begin_batch`;
    * or :meth:`play` runs all ``max_depth`` steps of a batch at once, asking a choice function for the
      actions (the same rules as :meth:`step`, as one fixed-shape program: :meth:`episode_steps`);
    * :meth:`seed` restarts the data walk, :meth:`stats` / :meth:`reset_stats` read the running means of
      the training episodes, :meth:`state_dict` / :meth:`load_state_dict` checkpoint everything but the
      pool's owner's other state.

    Attributes read from outside: ``pool``, ``data``, ``config``, ``device``, ``batch_size``,
    ``max_depth``, ``training``, ``dispatch``, ``rules``, ``walk`` (``walk.epoch`` = passes completed),
    ``optimizer`` (a :class:`PoolOptimizer`, or None when frozen), ``oracle_routes`` (a probe's oracle
    routing, or None), ``batch`` (the :class:`BatchState`), and the batch begun's ``tasks``, ``labels`` and
    ``kinds`` (kind of instance, 0 without kinds), ``(B,)`` each, and ``step_index`` (the next step).

    Args:
        pool: the module pool (shared with other engines, e.g. a test engine, by passing the same one).
        data: the split whose pairs the episodes take.
        config: the env's configuration (max_depth, batch_size, bonus, lr, dispatch, seed, split).
        batch_size: episodes in lockstep; default ``config.batch_size``.
        update_every: episodes per optimizer step and in the collapse-bonus window; default
            ``batch_size`` (the single env runs one episode at a time and updates every
            ``config.batch_size``).
        hflip: with ``config.augment``, mirrored images keep their labels (the benchmark says).
        oracle_routes: the benchmark's oracle routing resolved against ``pool``, ``(n_tasks, n_kinds,
            max_depth)`` action ids (:mod:`routing_env.oracle_route`), or None; what
            ``config.loss_source="oracle"`` scores routes against.
        n_tasks: the benchmark's number of tasks; needed with ``config.task_heads`` (each task's own
            heads, :class:`routing_env.rules.RouteRules`).
    """

    def __init__(
        self,
        pool: ModulePool,
        data: MTLSplit,
        config: RoutingConfig,
        batch_size: int | None = None,
        update_every: int | None = None,
        hflip: bool = True,
        oracle_routes: torch.Tensor | None = None,
        n_tasks: int | None = None,
    ) -> None:
        if len(data) == 0:
            raise ValueError("the data split is empty")
        self.config = config
        self.device = resolve_device(config.device)
        self.pool = pool.to(self.device)
        self.data = data.to(self.device)
        self.oracle_routes = None if oracle_routes is None else oracle_routes.to(self.device)
        if config.loss_source == "oracle" and self.oracle_routes is None:
            raise ValueError("loss_source='oracle' needs the benchmark's oracle routing (oracle_routes)")
        self.batch_size = int(batch_size or config.batch_size)
        self.max_depth = int(config.max_depth)
        self.update_every = int(update_every or self.batch_size)
        self.dispatch = resolve_dispatch(config.dispatch, self.device, config.precision)
        if config.task_heads and n_tasks is None:
            raise ValueError("task_heads=True needs the benchmark's number of tasks (n_tasks)")
        task_heads = n_tasks if config.task_heads else None
        self.rules = RouteRules(self.pool, self.max_depth, self.device, task_heads, self.oracle_routes)
        self.pad_action = pool.n_actions  # fills the unfilled part of a route
        self.pool_step = PoolStep.of_engine(
            self.pool, self.rules, config, self.dispatch, self.update_every, self.batch_size
        )
        self.optimizer = self.pool_step.optimizer
        self.draws = PairDraws(
            self.data, config.sequential, bool(config.augment) and config.split == "train", hflip
        )
        self.walk = self.draws.walk
        window = max(self.update_every, self.batch_size)
        self.usage = UsageWindow(window, self.max_depth, self.pad_action, self.device)
        self._stats = EpisodeStats(self.device)
        images = self.data.images  # (N, C, H, W)
        self.batch = BatchState(self.rules, self.batch_size, images.shape[1:], images.dtype, self.device)
        self.seed(config.seed)

    # The batch begun's state, read from outside (BatchState says what each is).
    images = property(lambda self: self.batch.images)  # (B, C, H, W)
    tasks = property(lambda self: self.batch.tasks)  # (B,)
    labels = property(lambda self: self.batch.labels)  # (B,)
    kinds = property(lambda self: self.batch.kinds)  # (B,)
    pair_index = property(lambda self: self.batch.pair_index)  # (B,)
    step_index = property(lambda self: self.batch.step)

    @property
    def training(self) -> bool:
        return self.optimizer is not None

    def seed(self, seed: int | None) -> None:
        """Restart the walk over the data from a fresh (seeded) order and empty the collapse-bonus window,
        so that a re-seeded engine replays a fresh one's episodes (with a frozen pool); the pool and its
        optimizer are untouched."""
        self.draws.seed(seed)
        self._set_pool_lr()
        self.batch.step = 0
        self.batch.close()
        self.usage.clear()

    def _set_pool_lr(self) -> None:
        if self.optimizer is not None:  # the pass of the batch's first pair: the same as the router's epoch
            self.optimizer.set_pass(self.walk.first_pass)

    # ----------------------------------------------------------------- episodes
    @torch.inference_mode(False)  # tensors the pool trains on must not be inference tensors
    def begin_batch(self) -> None:
        """Start ``batch_size`` new episodes on the next pairs of the split."""
        self.batch.begin(*self.draws.draw(self.batch_size))
        self._set_pool_lr()

    def action_mask(self) -> torch.Tensor:
        """``(B, n_actions)`` bool: the actions that keep each network valid at the current step. Computed
        once per step (the observation, SB3's ``action_masks`` and :meth:`step` all ask); do not modify."""
        return self.batch.action_mask()

    def observation(self) -> dict[str, torch.Tensor]:
        """The state as tensors: image, task, route so far, step and action mask (all ``(B, ...)``); a
        snapshot (copies), which later steps and batches leave as it is."""
        obs = self.batch.observe(self.step_index, self.action_mask())
        return {**obs, "image": obs["image"].clone(), "task": obs["task"].clone()}

    def step(self, actions: torch.Tensor) -> StepOutput:
        """Add one module (or PASS) to every network; at the last step, score and train.

        Args:
            actions: ``(B,)`` action ids in ``[0, n_actions)``; ids the mask forbids are replaced by
                PASS where valid, else by the lowest valid module, and cost ``invalid_action_penalty``.
        """
        self.batch.check()
        k = self.step_index
        if k >= self.max_depth:
            raise RuntimeError("the episodes of this batch are over; call begin_batch() (env.reset())")
        actions = actions.to(self.device, torch.long).reshape(self.batch_size)
        valid = self.batch.advance(k, actions, self.action_mask())
        invalid = ~valid
        self.batch.to_step(k + 1)
        reward = invalid * -self.config.invalid_action_penalty  # (B,) float
        self._stats.add_invalid(invalid)
        if self.step_index < self.max_depth:
            return StepOutput(reward=reward, invalid=invalid, done=False)
        final = self._finish()
        return StepOutput(reward=reward + final["reward"], invalid=invalid, done=True, final=final)

    def play(
        self, choose: ChooseFn | None = None, steps: Callable[[], torch.Tensor] | None = None
    ) -> EpisodeOutput:
        """All ``max_depth`` steps of the batch begun, then its end (the networks scored, the pool
        trained), as ``max_depth`` calls of :meth:`step` would do them.

        Args:
            choose: picks the actions of step ``k`` from its observation, ``(k, obs) -> (B,)``; the
                observation holds the batch's own ``image`` and ``task`` tensors (copy them to keep them).
            steps: instead of ``choose``, a callable that runs :meth:`episode_steps` itself and returns its
                result (e.g. the replay of a CUDA graph captured from it).
        """
        if (choose is None) == (steps is None):
            raise ValueError("pass one of choose and steps")
        self.batch.check()
        if self.step_index != 0:
            raise RuntimeError("play() runs a whole batch: call it right after begin_batch()")
        valid = steps() if steps is not None else self.episode_steps(choose)  # (D, B)
        self.batch.to_step(self.max_depth)
        invalid = ~valid
        self._stats.add_invalid(invalid)
        reward = -invalid.float() * self.config.invalid_action_penalty  # (D, B)
        final = self._finish()
        reward[-1] += final["reward"]
        return EpisodeOutput(reward=reward, invalid=invalid, final=final)

    def episode_steps(self, choose: ChooseFn) -> torch.Tensor:
        """The ``max_depth`` steps of the batch begun, on its state tensors, asking ``choose`` for each
        step's actions; returns whether each action was valid, ``(max_depth, B)`` bool.

        A fixed sequence of kernels on tensors allocated once (no host sync, no Python state changed), so
        that it can be captured as one CUDA graph with the caller's ``choose`` (if that is capturable too).
        Call it through :meth:`play`, which checks the batch and ends it.
        """
        batch, valid = self.batch, []
        for k in range(self.max_depth):
            mask = self.rules.mask(k, batch.cur_type, batch.used, batch.tasks)  # (B, A)
            actions = choose(k, batch.observe(k, mask)).reshape(self.batch_size)
            valid.append(batch.advance(k, actions, mask))
        return torch.stack(valid)

    # ----------------------------------------------------------------- counterfactual routes
    def play_routes(self, choose: ChooseFn) -> torch.Tensor:
        """The routes ``(B, max_depth)`` that ``choose`` builds for the batch begun, on scratch state: the
        batch's own episodes are untouched (:func:`routing_env.counterfactual.play_routes`)."""
        self.batch.check()
        return play_routes(self.rules, self.images, self.tasks, choose)

    def route_losses(self, routes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss ``(B,)`` and prediction ``(B,)`` of the batch's pairs through ``routes`` ``(B, max_depth)``
        with the pool as it is now; trains nothing (:func:`routing_env.counterfactual.route_losses`)."""
        self.batch.check()
        if self.config.loss_source == "oracle":
            return self._oracle_losses(routes.to(self.device))[1:]
        return route_losses(self.pool_step, self.images, routes.to(self.device), self.labels)

    def _oracle_losses(self, routes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``loss_source="oracle"``: step losses ``(B, T)``, loss and prediction of ``routes`` ``(B, T)`` on
        the batch's pairs (:func:`routing_env.oracle_route.oracle_losses`)."""
        n_classes = self.pool.types[self.rules.logits_type].shape[0]
        return oracle_losses(self.oracle_routes, routes, self.tasks, self.kinds, self.labels, n_classes)

    def set_baseline_routes(self, routes: torch.Tensor | None) -> None:
        """Score ``routes`` ``(B, max_depth)`` on the batch begun at its last step, before the pool's update
        and with the batch's bonus rules: ``final`` then holds ``baseline_loss`` and ``baseline_reward``
        (a self-critical advantage's baseline). For this batch only."""
        self.batch.check()
        self.batch.baseline_routes = None if routes is None else routes.to(self.device, torch.long)

    def _finish(self) -> dict[str, torch.Tensor]:
        """The batch's end: every network scored (and, when training, the pool updated), the rewards, the
        batch's record (:meth:`BatchState.record`) and, with baseline routes, their loss and reward."""
        batch, cfg = self.batch, self.config
        baseline = batch.baseline_routes
        baseline_loss = self.route_losses(baseline)[0] if baseline is not None else None  # before the update
        step_loss = None  # (B, T): where each step's share of the loss is known (the oracle's table)
        if cfg.loss_source == "oracle":
            step_loss, loss, prediction = self._oracle_losses(batch.route)  # (B, T), (B,), (B,)
        else:  # rewards use the loss before the pool's update, as the paper's MDP defines them: (B,) each
            loss, prediction = self.pool_step(batch.images, batch.route, batch.labels, self.batch_size)
        self.usage.push(batch.route, batch.tasks)
        kinds = self.pool.action_bank[: self.pool.n_modules]  # (M,) each module's bank
        module_bonus = self.usage.bonus(cfg.bonus_scope, batch.tasks, kinds)  # (M,); "task": (B, M)
        step_bonus = step_bonuses(batch.route, module_bonus)  # (B, T)
        weight = episode_bonus_weights(batch.pair_epoch, cfg.bonus_weight, cfg.bonus_warmup, cfg.bonus_until)
        rewards = batch_rewards(loss, batch.route, step_bonus, weight, step_loss)  # weight: (B,)
        correct = prediction == batch.labels
        self._stats.add_episodes(loss, correct, rewards["reward"], rewards["bonus"])
        batch.close()
        counterfactual = {}
        if baseline is not None:
            counterfactual = baseline_rewards(baseline_loss, baseline, module_bonus, weight)
        return {**rewards, **counterfactual, "correct": correct, "prediction": prediction, **batch.record()}

    # ----------------------------------------------------------------- statistics and checkpoints
    def reset_stats(self) -> None:
        """Zero the running sums behind :meth:`stats`."""
        self._stats.reset()

    def stats(self) -> dict[str, float]:
        """Means over the episodes finished since :meth:`reset_stats`: train loss, accuracy, reward,
        bonus, and invalid actions per episode."""
        return self._stats.means()

    def state_dict(self) -> dict[str, Any]:
        """Pool, optimizer, data walk, bonus window and the running sums behind :meth:`stats`. Taken
        between batches it resumes exactly: the batch drawn but not yet stepped is drawn again after
        :meth:`load_state_dict`."""
        draws = self.draws.state_dict(before_last_draw=self.batch.open and self.step_index == 0)
        walk = draws["walk"]
        return {
            "pool": self.pool.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "walk": {**walk, "order": walk["order"].cpu()},
            "usage": self.usage.state_dict(),
            "augment_generator": draws["augment_generator"],
            "stats": self._stats.sums.to("cpu", copy=True),  # updated in place: a copy
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; call ``begin_batch`` (``env.reset()``) afterwards."""
        self.pool.load_state_dict(state["pool"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.draws.load_state_dict(state)
        self.pool_step.reset_graph()  # the optimizer's state tensors were replaced
        self._set_pool_lr()
        self.usage.load_state_dict(state["usage"])
        if "stats" in state:  # checkpoints written before the sums travelled lack them
            self._stats.sums.copy_(state["stats"])
        self.batch.close()
        self.batch.step = 0
