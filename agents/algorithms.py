"""The algorithms on the routing env, one entry each: every Stable-Baselines3 and sb3-contrib algorithm that
takes the env's spaces (a ``Dict`` observation, ``Discrete`` actions) with the policy it needs, and the
trainers train.py's ``--algo`` runs. docs/algorithms.md's table, ``tests/test_algorithms.py`` and the
``--algo`` flag all read :data:`ENTRIES`. Importing this module imports neither torch nor SB3 (classes and
builders load on use).

SAC, TD3, DDPG, TQC and CrossQ need continuous actions, HER a goal-conditioned env: they do not apply.

Add an algorithm to ``--algo``: write a builder (see :meth:`Algorithm.build`; it returns a
:class:`agents.trainers.base.Trainer`; for an SB3 algorithm a two-line function in
:mod:`agents.trainers.sb3`) and one :class:`Algorithm` entry.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ROUTER_POLICY = "agents.policy:RouterPolicy"
ROUTER_EXTRACTOR = "agents.policy:RouterFeaturesExtractor"
ROUTER_MASKS = "in the observation (the router masks its logits)"
ENV_MASKS = "none: the env replaces an invalid action and charges `invalid_action_penalty`"
# What a builder may take, besides the env (by keyword; each builder names those it uses).
BUILDER_ARGUMENTS = ("seed", "agent", "router", "routing_network")
SB3Library = Literal["stable-baselines3", "sb3-contrib"]


def load(path: str) -> Any:
    """The object a ``"module:name"`` string names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class SB3Setup:
    """How a Stable-Baselines3 or sb3-contrib algorithm runs on the env.

    Attributes:
        name: the algorithm's class name.
        library: ``"stable-baselines3"`` or ``"sb3-contrib"``.
        algo_class: ``"module:Class"``.
        policy: the policy: ``"module:Class"`` or one of the algorithm's policy names.
        policy_kwargs: its keyword arguments; a ``"module:Class"`` value under
            ``features_extractor_class`` is imported.
        env: ``"vec"`` (:class:`routing_env.RoutingSB3VecEnv`, one pool for a batch of episodes) or
            ``"flat"`` (one ``RoutingEnv`` in ``gymnasium.wrappers.FlattenObservation``: the policy takes
            a flat Box).
        masks: how the action mask reaches the agent.
        zoo: its RL Baselines3 Zoo name (``hyperparams/<zoo>.yml``); None where the zoo lacks it.
    """

    name: str
    library: SB3Library
    algo_class: str
    policy: str
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env: Literal["vec", "flat"] = "vec"
    masks: str = ENV_MASKS
    zoo: str | None = None

    def resolved_policy_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.policy_kwargs)
        if isinstance(kwargs.get("features_extractor_class"), str):
            kwargs["features_extractor_class"] = load(kwargs["features_extractor_class"])
        return kwargs

    def resolved_policy(self) -> Any:
        return load(self.policy) if ":" in self.policy else self.policy

    def policy_text(self) -> str:
        """The policy as docs/algorithms.md writes it."""
        text = f"`{self.policy.rpartition(':')[2]}`"
        extractor = self.policy_kwargs.get("features_extractor_class")
        if extractor:
            text += f" + `{extractor.rpartition(':')[2]}`"
        extra = {k: v for k, v in self.policy_kwargs.items() if k != "features_extractor_class"}
        if extra:
            text += " (" + ", ".join(f"`{k}={v!r}`" for k, v in extra.items()) + ")"
        if self.env == "flat":
            text += " on `FlattenObservation(gym.make(...))`"
        return text


@dataclass(frozen=True)
class Algorithm:
    """One algorithm on the env.

    Attributes:
        name: its name; the ``--algo`` name where it has a ``builder``.
        summary: one line for the help and the docs.
        builder: ``"module:function"`` that builds its trainer (:meth:`build`); None: not an ``--algo``
            (it runs on the env through SB3 or the RL Zoo, see ``sb3``).
        sb3: how it runs on the env as a Stable-Baselines3 / sb3-contrib algorithm (docs/algorithms.md's
            table); None for the harness's own (the static network, the routing network).
        env_settings: env settings the algorithm fixes (its pool, depth, bonus); a run may not set them
            otherwise.
    """

    name: str
    summary: str
    builder: str | None = None
    sb3: SB3Setup | None = None
    env_settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def router_policy(self) -> bool:
        """Its agent is :class:`agents.policy.RouterPolicy` (so it takes the router options)."""
        return self.sb3 is not None and self.sb3.policy == ROUTER_POLICY

    def build(self, env: Any, **arguments: Any) -> Any:
        """Its trainer on the training env (a :class:`routing_env.RoutingSB3VecEnv`).

        Args:
            env: the training env.
            arguments: any of ``seed`` (int), ``agent`` (:class:`agents.config.AgentConfig`), ``router``
                (:class:`agents.config.RouterConfig`) and ``routing_network``
                (:class:`agents.config.RoutingNetworkConfig`); the builder gets those it takes (the rest
                do not apply to it), the defaults where one is not given.
        """
        if self.builder is None:
            raise ValueError(f"{self.name} has no trainer of its own: run it through SB3 (see its sb3 setup)")
        unknown = sorted(set(arguments) - set(BUILDER_ARGUMENTS))
        if unknown:
            raise TypeError(f"unknown builder arguments {unknown}; known: {list(BUILDER_ARGUMENTS)}")
        function = load(self.builder)
        taken = inspect.signature(function).parameters
        return function(env, **{k: v for k, v in arguments.items() if k in taken})


def _sb3(name: str, library: SB3Library, zoo: str | None = None, **setup: Any) -> SB3Setup:
    """The setup of the algorithm class ``name`` of ``library``."""
    module = "stable_baselines3" if library == "stable-baselines3" else "sb3_contrib"
    return SB3Setup(name, library, f"{module}:{name}", zoo=zoo, **setup)


ENTRIES: list[Algorithm] = [
    Algorithm(
        "maskable_ppo",
        "sb3-contrib's MaskablePPO with the LRN router (RouterPolicy): the paper's method",
        "agents.trainers.sb3:maskable_ppo",
        # the RL Zoo has no MaskablePPO
        _sb3(
            "MaskablePPO", "sb3-contrib", policy=ROUTER_POLICY, masks=ROUTER_MASKS + " and `action_masks()`"
        ),
    ),
    Algorithm(
        "ppo",
        "SB3's PPO with RouterPolicy (the mask travels in the observation)",
        "agents.trainers.sb3:ppo",
        _sb3("PPO", "stable-baselines3", "ppo", policy=ROUTER_POLICY, masks=ROUTER_MASKS),
    ),
    Algorithm(
        "a2c",
        "SB3's A2C with RouterPolicy",
        "agents.trainers.sb3:a2c",
        _sb3("A2C", "stable-baselines3", "a2c", policy=ROUTER_POLICY, masks=ROUTER_MASKS),
    ),
    Algorithm(
        "trpo",
        "sb3-contrib's TRPO with RouterPolicy",
        sb3=_sb3(
            "TRPO",
            "sb3-contrib",
            "trpo",
            policy=ROUTER_POLICY,
            # TRPO differentiates the policy twice; only the plain attention kernel has second derivatives.
            policy_kwargs={"attention_backend": "math"},
            masks=ROUTER_MASKS,
        ),
    ),
    Algorithm(
        "dqn",
        "SB3's DQN over the router's encoder (RouterFeaturesExtractor); sees no mask, the env substitutes",
        "agents.trainers.sb3:dqn",
        _sb3(
            "DQN",
            "stable-baselines3",
            "dqn",
            policy="MultiInputPolicy",
            policy_kwargs={"features_extractor_class": ROUTER_EXTRACTOR},
        ),
    ),
    Algorithm(
        "qrdqn",
        "sb3-contrib's QR-DQN over the router's encoder",
        sb3=_sb3(
            "QRDQN",
            "sb3-contrib",
            "qrdqn",
            policy="MultiInputPolicy",
            policy_kwargs={"features_extractor_class": ROUTER_EXTRACTOR},
        ),
    ),
    Algorithm(
        "recurrent_ppo",
        "sb3-contrib's RecurrentPPO (an LSTM policy) over the router's encoder",
        sb3=_sb3(
            "RecurrentPPO",
            "sb3-contrib",
            "ppo_lstm",
            policy="MultiInputLstmPolicy",
            policy_kwargs={"features_extractor_class": ROUTER_EXTRACTOR},
        ),
    ),
    Algorithm(
        "ars",
        "sb3-contrib's ARS with a linear policy on the flattened observation",
        sb3=_sb3("ARS", "sb3-contrib", "ars", policy="LinearPolicy", env="flat"),
    ),
    Algorithm(
        "static",
        "one fixed network (input conv, hidden conv, two FC layers, a head per task) through the same engine",
        "agents.trainers.static:build",
        env_settings={"pool": "static", "max_depth": 5},
    ),
    Algorithm(
        "oracle_route",
        "a probe's oracle routing (a fixed route per task and kind of instance) through the LRN pool",
        "agents.trainers.fixed_route:oracle_route",
    ),
    Algorithm(
        "static_route",
        "the static network's route (a shared trunk, a head per task) through the LRN pool",
        "agents.trainers.fixed_route:static_route",
    ),
    Algorithm(
        "routing_network",
        "the original routing network (Rosenbaum et al. 2017): per-task tabular WPL routers over 3 FC depths",
        "agents.trainers.routing_network:build",
        env_settings={"pool": "routing_network", "max_depth": 5, "bonus_weight": 0.0},
    ),
]
# train.py's --algo: the entries with a trainer of their own.
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in ENTRIES if a.builder is not None}
# docs/algorithms.md's table: every SB3 / sb3-contrib algorithm that takes the env's spaces.
SB3_SETUPS: list[SB3Setup] = [a.sb3 for a in ENTRIES if a.sb3 is not None]


def router_policy_algorithms() -> tuple[str, ...]:
    """The ``--algo`` names whose agent is RouterPolicy (and so take its options, e.g. ``task_prior_std``)."""
    return tuple(name for name, a in ALGORITHMS.items() if a.router_policy)
