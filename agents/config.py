"""Configuration of a training run, as dataclasses: the one home of every default train.py exposes.

Importing this module imports neither torch nor SB3, so train.py checks its flags in well under a second.
``RunConfig`` nests the env's :class:`routing_env.RoutingConfig`, the agent's :class:`AgentConfig`, the
router's :class:`RouterConfig` and the routing network's :class:`RoutingNetworkConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routing_env.config import RoutingConfig, from_known_kwargs

MINIBATCH_UNITS = ("episodes", "transitions")
RN_LEARNERS = ("wpl", "reinforce")
DECODER_QUERIES = ("valid", "all")
CRITIC_ENCODERS = ("shared", "separate")
REWARD_TIMINGS = ("per_step", "terminal")
TASK_PRIOR_STEPS = ("all", "head")

# Named settings ({"section.field": value}) that a run starts from before its flags (README "Presets").
# The paper's explicit rules (per-step rewards, eq. 7; unused modules not updated) are on in both.
PAPER_READINGS = {"router.decoder_queries": "valid"}  # the router's input holds the valid modules
PRESETS: dict[str, dict[str, object]] = {
    # The best LRN this project measured (README "Results"): a per-task prior on the router's logits (not in
    # the paper), a small bonus, and the reward at the last step with one Adam over the pool. The paper's
    # per-step rewards and frozen unused modules did not beat it in the study.
    "best": {
        "env.bonus_weight": 0.1,
        "router.task_prior_std": 3.0,
        "agent.reward_timing": "terminal",
        "env.freeze_unused": False,
    },
    "paper": {**PAPER_READINGS, "env.bonus_weight": 1.0, "router.task_prior_std": 0.0},
}


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
    """

    router_lr: float | None = None
    gamma: float = 0.99
    gae_lambda: float = 0.95
    minibatch: int = 64
    minibatch_unit: str = "episodes"
    ppo_epochs: int = 1
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    reward_timing: str = "per_step"

    def __post_init__(self) -> None:
        if self.reward_timing not in REWARD_TIMINGS:
            raise ValueError(f"reward_timing must be one of {REWARD_TIMINGS}, got {self.reward_timing!r}")
        if self.minibatch_unit not in MINIBATCH_UNITS:
            raise ValueError(f"minibatch_unit must be one of {MINIBATCH_UNITS}, got {self.minibatch_unit!r}")
        for name in ("minibatch", "ppo_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.router_lr is not None and not self.router_lr > 0:
            raise ValueError(f"router_lr must be > 0, got {self.router_lr}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma}, {self.gae_lambda}")


@dataclass
class RouterConfig:
    """The LRN router's architecture (the paper's: d_model 256, 4 heads, d_ff 512, one layer each).

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
            the static network where another route earns more. Needs ``max_depth >= 5``.
        decoder_queries: ``"valid"``: the decoder's queries attend only to the actions valid now (the
            paper's router input holds the valid modules); ``"all"``: every action, masked after scoring.
        normalize_instance: layer-normalise the instance token to the embeddings' scale (a fresh conv
            encoder's token is ~20 times smaller than an embedding).
        critic_encoder: ``"shared"`` (the critic pools the actor's encoding) or ``"separate"`` (its own
            encoder: the value loss no longer shapes the actor's).
    """

    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 512
    n_encoder_layers: int = 1
    n_decoder_layers: int = 1
    conv_channels: tuple[int, int] = (32, 64)
    task_prior_std: float = 0.0
    task_prior_steps: str = "all"
    static_start: float = 0.0
    decoder_queries: str = "all"
    normalize_instance: bool = False
    critic_encoder: str = "shared"

    def __post_init__(self) -> None:
        if self.decoder_queries not in DECODER_QUERIES:
            raise ValueError(
                f"decoder_queries must be one of {DECODER_QUERIES}, got {self.decoder_queries!r}"
            )
        if self.critic_encoder not in CRITIC_ENCODERS:
            raise ValueError(f"critic_encoder must be one of {CRITIC_ENCODERS}, got {self.critic_encoder!r}")
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if len(self.conv_channels) != 2:
            raise ValueError(f"conv_channels must hold 2 numbers, got {self.conv_channels}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        for name in ("task_prior_std", "static_start"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.task_prior_steps not in TASK_PRIOR_STEPS:
            raise ValueError(
                f"task_prior_steps must be one of {TASK_PRIOR_STEPS}, got {self.task_prior_steps!r}"
            )

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

    learner: str = "wpl"
    lr: float | None = None
    rho: float = 0.0

    def __post_init__(self) -> None:
        if self.learner not in RN_LEARNERS:
            raise ValueError(f"learner must be one of {RN_LEARNERS}, got {self.learner!r}")
        if (self.lr is not None and not self.lr > 0) or not self.rho >= 0:
            raise ValueError(f"the routing network needs lr > 0 and rho >= 0, got {self.lr}, {self.rho}")


@dataclass
class RunConfig:
    """One training run: what train.py's flags set and what a sweep trial varies.

    Attributes:
        preset: a named set of settings that flags then override (:data:`PRESETS`): ``"best"`` (the default:
            the best LRN this project measured, with a per-task prior, which is not in the paper) or
            ``"paper"`` (the paper's setting, as README reads it).
        env_id: a routing env id (``RoutingMNIST-v0``, ``RoutingCIFAR-v0``, ``RoutingMIN-v0``, or a
            registered ``module:Id``).
        algo: the algorithm (see ``agents.algorithms.ALGORITHMS``).
        epochs: passes over the training pairs.
        seed: seeds the pool's weights, the data order and the agent.
        out: run folder; default ``runs/<env>-<algo>-s<seed>``.
        limit_test: evaluate on only this many test pairs (and validation pairs, with ``val_fraction``).
        eval_batch_size: episodes per evaluation batch.
        checkpoint: write a checkpoint after every epoch (a MIN-MTL one is ~7 GB).
        checkpoint_every_minutes: within an epoch, also write a checkpoint between two batches once
            this many minutes have passed since the last one (0: after every batch), so that a stopped
            run loses minutes, not its epoch.
        progress: show a progress bar.
        tf32: use TF32 matmuls and convolutions on CUDA (about 2x faster on Hopper).
        threads: torch's CPU threads; default the cores this process may use (CPU affinity and cgroup
            quota), at most torch's own default.
        env: the training env's settings (``benchmark`` and ``seed`` follow ``env_id`` and ``seed``).
        agent: the SB3 agent's hyper-parameters.
        router: the router's architecture.
        routing_network: the original routing network's router.
    """

    preset: str = "best"
    env_id: str = "RoutingMNIST-v0"
    algo: str = "maskable_ppo"
    epochs: int = 100
    seed: int = 0
    out: Path | None = None
    limit_test: int | None = None
    eval_batch_size: int = 512
    checkpoint: bool = True
    checkpoint_every_minutes: float = 10.0
    progress: bool = True
    tf32: bool = True
    threads: int | None = None
    env: RoutingConfig = field(default_factory=RoutingConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    routing_network: RoutingNetworkConfig = field(default_factory=RoutingNetworkConfig)

    def __post_init__(self) -> None:
        from agents.algorithms import ALGORITHMS, router_policy_algorithms
        from routing_env.registration import benchmark_of

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {self.algo!r}; known: {', '.join(ALGORITHMS)}")
        if int(self.epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if int(self.eval_batch_size) < 1 or (self.limit_test is not None and int(self.limit_test) < 1):
            raise ValueError("eval_batch_size and limit_test must be >= 1")
        if not self.checkpoint_every_minutes >= 0:
            raise ValueError(f"checkpoint_every_minutes must be >= 0, got {self.checkpoint_every_minutes}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for option in ("task_prior_std", "static_start"):
            if getattr(self.router, option) > 0 and self.algo not in router_policy_algorithms():
                raise ValueError(
                    f"{option} is a RouterPolicy option: use algo {', '.join(router_policy_algorithms())}"
                    f" (not {self.algo})"
                )
        if self.router.static_start > 0 and self.env.max_depth < 5:
            raise ValueError(
                f"static_start starts at the static network's 5 layers: it needs max_depth >= 5, got "
                f"{self.env.max_depth}"
            )
        settings = {"benchmark": benchmark_of(self.env_id), "seed": self.seed, "split": "train"}
        settings.update(ALGORITHMS[self.algo].env_settings)  # e.g. the static pool, 5 layers
        self.env = self.env.replace(**settings)
        if self.out is None:
            self.out = Path("runs") / f"{self.env_id.rpartition(':')[2]}-{self.algo}-s{self.seed}"
        self.out = Path(self.out)

    @property
    def test_env(self) -> RoutingConfig:
        """The evaluation env: the test split, ``limit_test`` pairs, a frozen pool."""
        return self.env.replace(split="test", max_pairs=self.limit_test)

    @property
    def router_lr(self) -> float:
        return self.env.lr if self.agent.router_lr is None else self.agent.router_lr

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able values (``config.json``)."""
        return json_ready(dataclasses.asdict(self))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
