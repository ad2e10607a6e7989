"""The agent's configuration, as dataclasses: the one home of the defaults of the SB3 agent
(:class:`AgentConfig`), the LRN router (:class:`RouterConfig`) and the original routing network's tabular
router (:class:`RoutingNetworkConfig`). Imports neither torch nor SB3.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from routing_env.config import Precision, check_choices, from_known_kwargs

MinibatchUnit = Literal["episodes", "transitions"]
RewardTiming = Literal["per_step", "terminal"]
DecoderQueries = Literal["valid", "all"]
CriticEncoder = Literal["shared", "separate"]
RoutingNetworkLearner = Literal["wpl", "reinforce"]
TaskPriorSteps = Literal["all", "head"]
InstancePriorSteps = Literal["all", "first"]
Advantage = Literal["gae", "self_critical"]
BaselineRoute = Literal["greedy", "static", "sampled"]
REWARD_TIMINGS = typing.get_args(RewardTiming)
ADVANTAGES, BASELINE_ROUTES = typing.get_args(Advantage), typing.get_args(BaselineRoute)


@dataclass
class AgentConfig:
    """Hyper-parameters of the SB3 agent (the paper's defaults).

    Attributes:
        router_lr: router learning rate; default the pool's ``lr``.
        gamma: discount.
        gae_lambda: GAE lambda.
        minibatch: PPO minibatch size, counted in ``minibatch_unit``.
        minibatch_unit: ``"episodes"`` (64 episodes = 64 * max_depth transitions, matching the paper's
            batch of 128 episodes) or ``"transitions"``.
        ppo_epochs: PPO passes over each batch.
        clip_range: PPO's clip range.
        ent_coef: entropy coefficient.
        vf_coef: value-loss coefficient.
        max_grad_norm: gradient clipping norm.
        reward_timing: how the episode's reward reaches GAE: ``"per_step"`` (the paper, eq. 7: each step
            earns the collapse bonus of the module it chose, the last step also minus the loss) or
            ``"terminal"`` (all of it at the last step).
        advantage: not in the paper: PPO's advantage: ``"gae"`` (GAE from the critic) or
            ``"self_critical"`` (Rennie et al. 2017: the episode's return minus the reward of
            ``baseline_route`` on the same instance, with the same bonus rules, given to every step of
            the episode; the instance's own difficulty drops out). The critic still learns GAE's returns.
        baseline_route: the self-critical baseline: ``"greedy"`` (the router's most likely route for the
            instance, decoded before the batch is played), ``"static"`` (the static network's route
            through the pool, ``routing_env/static_route.py``) or ``"sampled"`` (a second route drawn from
            the router's policy for the same instance: the two-sample baseline of Kool et al. 2019, "Buy 4
            REINFORCE samples, get a baseline for free", which unlike the greedy route does not agree with
            the played route once the policy is sure, and compares alternatives while it is not).
        self_critical_weight: with ``advantage="self_critical"``, its share of a blend with GAE's:
            ``w * self_critical + (1 - w) * gae`` (1: the self-critical advantage alone).
        ent_coef_end: not in the paper: the entropy coefficient goes linearly from ``ent_coef`` (epoch 0)
            to this value over ``ent_coef_epochs`` epochs, then stays; None: constant ``ent_coef``.
        ent_coef_epochs: the epochs of that schedule (epoch ``ent_coef_epochs`` and later use
            ``ent_coef_end``).
        explore_epsilon: not in the paper: with this probability a step's module is drawn uniformly from
            the valid actions instead of from the router (epsilon over modules); the log-probabilities
            PPO's ratio compares are the mixture's. Deterministic (evaluation) routes are the router's.
        self_imitation: not in the paper: weight of a self-imitation loss (Oh et al. 2018) in PPO's
            update, ``-mean(max(A, 0) * log pi(a))`` on the advantages before normalisation: the actions of
            episodes that beat their baseline (with ``advantage="self_critical"``: their greedy route) are
            imitated without PPO's ratio or clipping, a gradient that does not vanish as the router's
            probability of the better action does; 0: none. PPO and MaskablePPO's fused update only.
    """

    router_lr: float | None = None
    gamma: float = 0.99
    gae_lambda: float = 0.95
    minibatch: int = 64
    minibatch_unit: MinibatchUnit = "episodes"
    ppo_epochs: int = 1
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    reward_timing: RewardTiming = "per_step"
    advantage: Advantage = "gae"
    baseline_route: BaselineRoute = "greedy"
    self_critical_weight: float = 1.0
    ent_coef_end: float | None = None
    ent_coef_epochs: int = 0
    explore_epsilon: float = 0.0
    self_imitation: float = 0.0

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 <= self.self_critical_weight <= 1:
            raise ValueError(f"self_critical_weight must lie in [0, 1], got {self.self_critical_weight}")
        if not 0 <= self.explore_epsilon < 1:
            raise ValueError(f"explore_epsilon must lie in [0, 1), got {self.explore_epsilon}")
        if not self.self_imitation >= 0:
            raise ValueError(f"self_imitation must be >= 0, got {self.self_imitation}")
        if int(self.ent_coef_epochs) < 0:
            raise ValueError(f"ent_coef_epochs must be >= 0, got {self.ent_coef_epochs}")
        if self.ent_coef_end is not None and int(self.ent_coef_epochs) < 1:
            raise ValueError("ent_coef_end needs ent_coef_epochs >= 1 (the epochs it takes to get there)")
        for name in ("minibatch", "ppo_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.router_lr is not None and not self.router_lr > 0:
            raise ValueError(f"router_lr must be > 0, got {self.router_lr}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma}, {self.gae_lambda}")

    def ent_coef_at(self, epoch: int) -> float:
        """The entropy coefficient of ``epoch`` (the schedule of ``ent_coef_end``)."""
        if self.ent_coef_end is None:
            return float(self.ent_coef)
        share = min(1.0, max(0, int(epoch)) / int(self.ent_coef_epochs))
        return float(self.ent_coef + (self.ent_coef_end - self.ent_coef) * share)


@dataclass
class RouterConfig:
    """The LRN router's architecture (the paper's: d_model 256, 4 heads, d_ff 512, one layer each) and
    arithmetic.

    Attributes:
        d_model: width of every embedding and of the transformer.
        n_heads: attention heads.
        d_ff: feed-forward width of the transformer layers.
        n_encoder_layers: encoder layers.
        n_decoder_layers: decoder (actor) layers.
        conv_channels: channels of the instance encoder's two convolutions.
        task_prior_std: not in the paper: std of a learned per-task bias on the action logits, 0 = none.
            A random start of a few units gives each task its own preferred modules from the first
            batch, so routes are task-specific before PPO has any signal.
        task_prior_steps: where the task prior applies: ``"all"`` (every step) or ``"head"`` (the last
            step only, where the route picks its output head; the modules before it start task-blind).
        static_start: not in the paper: start the router at the static network. A learned per-(task,
            step) bias on the action logits, initialised to this many units on the static network's route
            through the pool (``routing_env/static_route.py``: a trunk shared by every task, the task's own
            head) and 0 elsewhere; 0 = none. The router still chooses every module: PPO moves away from
            the static network where another route earns more. Needs ``max_depth >= 5``. How soft: with
            ``n`` other valid actions at a step (9 to 20 in the paper's pool with 10 duplicates and depth
            6) a fresh router takes the static action with probability about ``e^s / (e^s + n)``: 10 pins
            it (> 0.999 per step), 5 nearly (0.88-0.94 per step, the whole route 0.6 of the time; MIN-MTL
            runs with either never left it), 3 loosely (0.50-0.69 per step, the whole route 6 %) and 2
            barely (0.27-0.45), so a soft start (2-3) keeps alternatives sampled and trained.
        instance_prior_std: not in the paper: std of a learned linear bias on the action logits from the
            instance's image on a coarse grid (its mean over ``instance_prior_grid`` x
            ``instance_prior_grid`` cells per channel, normalised per instance), 0 = none. Like a hash
            router or a random MoE gate: from the first batch, instances of one task that look different
            take different duplicates, so the duplicates train on different clusters of instances (and can
            specialise) before PPO has any signal; PPO then trains the bias with the rest of the router.
            With ``g * g * C`` features of unit variance the bias's std over instances is about
            ``std * g * sqrt(C)``.
        instance_prior_grid: the grid of ``instance_prior_std`` (cells per side).
        instance_prior_steps: where the instance prior applies: ``"all"`` (every step: an independent
            split of the instances at each step, so up to ``duplicates ** depth`` routes per task) or
            ``"first"`` (the first step only: the instances split over the first module's duplicates, and
            the router, which reads the route so far, carries the split on or not).
        decoder_queries: ``"valid"``: the decoder's queries attend only to the actions valid now (the
            paper's router input holds the valid modules); ``"all"``: every action, masked after scoring.
        normalize_instance: layer-normalise the instance token to the embeddings' scale (a fresh conv
            encoder's token is ~20 times smaller than an embedding).
        critic_encoder: ``"shared"`` (the critic pools the actor's encoding) or ``"separate"`` (its own
            encoder: the value loss no longer shapes the actor's).
        precision: the router's arithmetic, in the rollout, the update and evaluation: ``"fp32"`` or
            ``"bf16"`` (the conv encoder and the transformers under bf16 autocast, on tensor cores on a
            GPU; the parameters, Adam, the output layers (action scores, value), the losses, GAE and the
            value targets stay fp32).
    """

    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 512
    n_encoder_layers: int = 1
    n_decoder_layers: int = 1
    conv_channels: tuple[int, int] = (32, 64)
    task_prior_std: float = 0.0
    task_prior_steps: TaskPriorSteps = "all"
    static_start: float = 0.0
    instance_prior_std: float = 0.0
    instance_prior_grid: int = 4
    instance_prior_steps: InstancePriorSteps = "all"
    decoder_queries: DecoderQueries = "all"
    normalize_instance: bool = False
    critic_encoder: CriticEncoder = "shared"
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        check_choices(self)
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if len(self.conv_channels) != 2:
            raise ValueError(f"conv_channels must hold 2 numbers, got {self.conv_channels}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        for name in ("task_prior_std", "static_start", "instance_prior_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if int(self.instance_prior_grid) < 1:
            raise ValueError(f"instance_prior_grid must be >= 1, got {self.instance_prior_grid}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RouterConfig:
        """Like the constructor, but an unknown keyword gets one error that lists the known ones."""
        return from_known_kwargs(cls, kwargs, "router keywords")


@dataclass
class RoutingNetworkConfig:
    """The original routing network's tabular router (``--algo routing_network``).

    Attributes:
        learner: ``"wpl"`` (Weighted Policy Learner) or ``"reinforce"``.
        lr: the tables' learning rate; default 0.01 for WPL, 0.1 for REINFORCE.
        rho: weight of the collaboration reward (0: none).
    """

    learner: RoutingNetworkLearner = "wpl"
    lr: float | None = None
    rho: float = 0.0

    def __post_init__(self) -> None:
        check_choices(self)
        if (self.lr is not None and not self.lr > 0) or not self.rho >= 0:
            raise ValueError(f"the routing network needs lr > 0 and rho >= 0, got {self.lr}, {self.rho}")
