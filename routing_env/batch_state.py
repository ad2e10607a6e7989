"""A batch of B network-construction episodes in lockstep: its state, the choice function that drives it,
and what its steps return.

A batch's state (images, tasks, the routes so far, the modules used, the current activation type) lives in
tensors allocated once and written in place, and one step is a fixed sequence of kernels on them
(:meth:`BatchState.advance`). So the ``max_depth`` steps of a batch, with the agent's choices between
them, are one fixed-shape program (:meth:`routing_env.engine.RoutingEngine.episode_steps`) that a caller
may capture as one CUDA graph and hand back to :meth:`routing_env.engine.RoutingEngine.play`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from routing_env.rules import RouteRules


@dataclass
class StepOutput:
    """What one lockstep step returns (all tensors ``(B,)`` on the engine's device).

    ``final`` is only set at the last step: a dict of ``(B, ...)`` tensors with the route, the loss,
    whether the prediction was right, the reward and its parts, and where each pair came from.
    """

    reward: torch.Tensor
    invalid: torch.Tensor
    done: bool
    final: dict[str, torch.Tensor] | None = None


@dataclass
class EpisodeOutput:
    """What a whole batch of episodes returns (:meth:`routing_env.engine.RoutingEngine.play`).

    ``reward`` and ``invalid`` are ``(max_depth, B)``: the reward of every step as
    :meth:`routing_env.engine.RoutingEngine.step` returns it (the invalid-action penalty; at the last step
    also the final reward) and whether the step's action was invalid. ``final`` is the last step's
    ``final`` dict.
    """

    reward: torch.Tensor
    invalid: torch.Tensor
    final: dict[str, torch.Tensor]


# Picks every episode's action at step ``k`` from the observation at that step: ``(k, obs) -> (B,)`` int64.
ChooseFn = Callable[[int, dict[str, torch.Tensor]], torch.Tensor]


class BatchState:
    """The state of ``batch_size`` episodes of networks under ``rules``, one batch after another.

    Attributes:
        images: ``(B, C, H, W)`` the batch's images, and ``tasks`` ``(B,)`` their tasks (allocated once:
            :meth:`begin` writes them in place).
        route: ``(B, max_depth)`` the actions taken so far (``pad_action`` where unfilled).
        used: ``(B, n_actions)`` bool, the modules each network holds; ``cur_type`` ``(B,)`` each network's
            current activation type (0 = the image).
        labels, kinds, pair_index, pair_epoch: ``(B,)`` each, the drawn pairs' labels, kinds of instance,
            indices in the split and the pass each was drawn in (the draw's own tensors, fresh per batch).
        step: the index of the next step; ``open``: a batch is begun and not finished.
        baseline_routes: ``(B, max_depth)`` routes to score at the batch's end, or None (this batch only).

    Args:
        rules: the validity rules (their pool and ``max_depth``).
        batch_size: episodes in lockstep.
        image_shape: ``(C, H, W)`` and ``image_dtype`` of one image.
        device: where the state lives.
    """

    labels: torch.Tensor
    kinds: torch.Tensor
    pair_index: torch.Tensor
    pair_epoch: torch.Tensor

    @torch.inference_mode(False)  # written in place by every batch, whatever the caller's mode
    def __init__(
        self,
        rules: RouteRules,
        batch_size: int,
        image_shape: tuple[int, ...],
        image_dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        # Allocated once: a captured episode_steps reads and writes these very tensors at every replay.
        b = int(batch_size)
        self.images = torch.zeros((b, *image_shape), dtype=image_dtype, device=device)
        self.tasks = torch.zeros(b, dtype=torch.long, device=device)
        self._allocate_routes(rules, b, device)

    @classmethod
    @torch.inference_mode(False)
    def over(cls, rules: RouteRules, images: torch.Tensor, tasks: torch.Tensor) -> BatchState:
        """A scratch state at step 0 over the caller's ``images`` ``(B, C, H, W)`` and ``tasks`` ``(B,)``
        (not copied), for routes built beside a batch (:func:`routing_env.counterfactual.play_routes`)."""
        state = cls.__new__(cls)
        state.images, state.tasks = images, tasks
        state._allocate_routes(rules, tasks.shape[0], tasks.device)
        return state

    def _allocate_routes(self, rules: RouteRules, b: int, device: torch.device) -> None:
        self.rules, self.pad_action = rules, rules.pool.n_actions
        self.route = torch.full((b, rules.max_depth), self.pad_action, dtype=torch.long, device=device)
        self.used = torch.zeros(b, rules.pool.n_actions, dtype=torch.bool, device=device)
        self.cur_type = torch.zeros(b, dtype=torch.long, device=device)  # type 0 = the image
        self.step = 0
        self.open = False
        self.baseline_routes: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    @torch.inference_mode(False)  # tensors the pool trains on must not be inference tensors
    def begin(
        self,
        images: torch.Tensor,
        tasks: torch.Tensor,
        labels: torch.Tensor,
        kinds: torch.Tensor,
        pair_index: torch.Tensor,
        pair_epoch: torch.Tensor,
    ) -> None:
        """Start the episodes on the drawn pairs (``(B, ...)`` each, as
        :meth:`routing_env.data_walk.PairDraws.draw` returns them)."""
        self.labels, self.kinds, self.pair_index, self.pair_epoch = labels, kinds, pair_index, pair_epoch
        self.images.copy_(images)
        self.tasks.copy_(tasks)
        self.route.fill_(self.pad_action)
        self.used.zero_()
        self.cur_type.zero_()
        self.to_step(0)
        self.open = True
        self.baseline_routes = None

    def close(self) -> None:
        """End the batch: the next one must be begun; its baseline routes are forgotten."""
        self.open = False
        self.baseline_routes = None

    def check(self) -> None:
        if not self.open:
            raise RuntimeError("call begin_batch() (env.reset()) before step()")

    def to_step(self, k: int) -> None:
        """Make ``k`` the next step (its action mask is computed when asked)."""
        self.step, self._mask = k, None

    def action_mask(self) -> torch.Tensor:
        """``(B, n_actions)`` bool: the valid actions at the next step, computed once per step."""
        if self._mask is None:
            self._mask = self.rules.mask(self.step, self.cur_type, self.used, self.tasks)
        return self._mask

    def observe(self, k: int, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The observation at step ``k`` with action mask ``mask``; ``image`` and ``task`` are the batch's
        own tensors (valid until the next :meth:`begin`), the rest fresh tensors."""
        return {
            "image": self.images,
            "task": self.tasks,
            "route": self.route.clone(),  # the steps write the route in place
            "step": torch.full_like(self.tasks, k),
            "action_mask": mask.to(torch.int8),
        }

    def advance(self, k: int, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Step ``k`` of every episode, in place: an action the mask ``(B, A)`` forbids becomes PASS where
        valid, else the lowest valid module; the route, the modules used and the current type take the
        action. Returns whether each action was valid, ``(B,)`` bool."""
        valid = mask.gather(1, actions[:, None]).squeeze(1)  # (B,)
        actions = torch.where(valid, actions, self.rules.substitute(mask))
        self.route[:, k] = actions
        self.cur_type.copy_(self.rules.advance(self.cur_type, self.used, actions))
        return valid

    def record(self) -> dict[str, torch.Tensor]:
        """The batch's ``route`` and ``task`` (copies: the next batch writes them in place), ``kind``,
        ``label``, ``pair_index`` and ``epoch`` (the pass each pair was drawn in), ``(B, ...)`` each."""
        return {
            "route": self.route.clone(),
            "task": self.tasks.clone(),
            "kind": self.kinds,
            "label": self.labels,
            "pair_index": self.pair_index,
            "epoch": self.pair_epoch,
        }
