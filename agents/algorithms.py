"""The algorithms train.py can run: one entry each, saying how to build its trainer and which env
settings it needs. Importing this module imports neither torch nor SB3 (builders load on use).

Add an algorithm: write a builder ``build(env, cfg) -> Trainer`` (see :mod:`agents.trainers.base`; for an
SB3 algorithm, a two-line function in :mod:`agents.trainers.sb3`) and one :class:`Algorithm` entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Algorithm:
    """One algorithm of ``--algo``.

    Attributes:
        name: its ``--algo`` name.
        summary: one line for the help and README.
        builder: ``"module:function"``; the function takes the training env (a
            :class:`routing_env.RoutingSB3VecEnv`) and the :class:`agents.config.RunConfig` and returns a
            :class:`agents.trainers.base.Trainer`.
        env_settings: env settings the algorithm fixes (its pool, depth, bonus), over the run's flags.
        router_policy: its agent is :class:`agents.policy.RouterPolicy` (so it takes the router options).
    """

    name: str
    summary: str
    builder: str
    env_settings: Mapping[str, Any] = field(default_factory=dict)
    router_policy: bool = False

    def build(self, env: Any, cfg: Any) -> Any:
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)(env, cfg)


_ALL = [
    Algorithm(
        "maskable_ppo",
        "sb3-contrib's MaskablePPO with the LRN router (RouterPolicy): the paper's method",
        "agents.trainers.sb3:maskable_ppo",
        router_policy=True,
    ),
    Algorithm(
        "ppo",
        "SB3's PPO with RouterPolicy (the mask travels in the observation)",
        "agents.trainers.sb3:ppo",
        router_policy=True,
    ),
    Algorithm("a2c", "SB3's A2C with RouterPolicy", "agents.trainers.sb3:a2c", router_policy=True),
    Algorithm(
        "dqn",
        "SB3's DQN over the router's encoder (RouterFeaturesExtractor); sees no mask, the env substitutes",
        "agents.trainers.sb3:dqn",
    ),
    Algorithm(
        "static",
        "one fixed network (input conv, hidden conv, two FC layers, a head per task) through the same engine",
        "agents.trainers.static:StaticTrainer",
        env_settings={"pool": "static", "max_depth": 5},
    ),
    Algorithm(
        "routing_network",
        "the original routing network (Rosenbaum et al. 2017): per-task tabular WPL routers over 3 FC depths",
        "agents.trainers.routing_network:build",
        env_settings={"pool": "routing_network", "max_depth": 5, "bonus_weight": 0.0},
    ),
]
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in _ALL}


def router_policy_algorithms() -> tuple[str, ...]:
    """The algorithms whose agent is RouterPolicy (and so take its options, e.g. ``task_prior_std``)."""
    return tuple(name for name, a in ALGORITHMS.items() if a.router_policy)
