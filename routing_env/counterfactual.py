"""Counterfactual routes: what another route would have scored on the same instances.

A self-critical advantage (Rennie et al. 2017, "Self-critical sequence training") compares an episode's
reward with the reward of a baseline route (the router's greedy route, or the static network's) on the
*same* instance, which removes the instance's own difficulty from the learning signal. That needs two
things of the env, both here and batched (no per-sample Python):

* :func:`play_routes`: the routes a choice function builds for a batch's instances under the env's rules,
  on scratch state (the batch's own episodes are untouched);
* :func:`route_losses`: the loss of the batch's instances through given routes, with the pool as it is,
  training nothing (no gradient, no optimizer state).

:meth:`routing_env.engine.RoutingEngine.set_baseline_routes` asks the engine to score a batch's baseline
routes at its last step, before the pool's update, with the batch's own bonus rules
(:func:`baseline_rewards`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from routing_env.batch_state import BatchState, ChooseFn
from routing_env.pool_step import PoolStep
from routing_env.rewards import final_reward, route_bonus
from routing_env.rules import RouteRules


def play_routes(
    rules: RouteRules, images: torch.Tensor, tasks: torch.Tensor, choose: ChooseFn
) -> torch.Tensor:
    """The routes ``choose`` (``(k, obs) -> (B,)`` actions) builds for instances ``images`` ``(B, C, H, W)``
    of ``tasks`` ``(B,)``, on scratch state under the env's rules (:meth:`BatchState.over`): the same
    observations as the env's and an action the mask forbids replaced as the env replaces it.

    Returns:
        ``(B, max_depth)`` int64 action ids.
    """
    state = BatchState.over(rules, images, tasks)
    for k in range(rules.max_depth):
        state.to_step(k)
        mask = state.action_mask()  # (B, A)
        actions = choose(k, state.observe(k, mask)).to(tasks.device, torch.long).reshape(tasks.shape[0])
        state.advance(k, actions, mask)
    return state.route


@torch.no_grad()
def route_losses(
    pool_step: PoolStep, images: torch.Tensor, routes: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy loss ``(B,)`` and prediction ``(B,)`` of instances ``images`` through ``routes``
    ``(B, D)``, with the pool's current weights, as evaluation runs them (no dropout). Trains nothing:
    no gradient reaches the pool and its optimizer is not touched."""
    with torch.inference_mode(False):
        logits = pool_step.logits(images, routes)  # (B, K)
    return F.cross_entropy(logits, labels, reduction="none"), logits.argmax(dim=1)


def baseline_rewards(
    baseline_loss: torch.Tensor,
    baseline_routes: torch.Tensor,
    module_bonus: torch.Tensor,
    weight: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``baseline_loss`` and ``baseline_reward`` ``(B,)``: the reward of ``baseline_routes`` ``(B, D)``,
    whose loss is ``baseline_loss``, with the batch's collapse bonus ``module_bonus`` (``(M,)``, or
    ``(B, M)`` for the ``"task"`` scope) and the episodes' bonus weights ``weight`` ``(B,)``
    (:func:`routing_env.rewards.episode_bonus_weights`)."""
    reward = final_reward(baseline_loss, route_bonus(baseline_routes, module_bonus), weight)
    return {"baseline_loss": baseline_loss, "baseline_reward": reward}
