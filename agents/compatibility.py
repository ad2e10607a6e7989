"""Every Stable-Baselines3 and sb3-contrib algorithm that takes the routing env's spaces (a ``Dict``
observation, ``Discrete`` actions), with the policy it needs: README's algorithm table and
``tests/test_algorithms.py`` both read :data:`SETUPS`. Imports neither torch nor SB3.

SAC, TD3, DDPG, TQC and CrossQ need continuous actions, HER a goal-conditioned env: they do not apply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

ROUTER_EXTRACTOR = "agents.policy:RouterFeaturesExtractor"


@dataclass(frozen=True)
class AlgorithmSetup:
    """How to run one algorithm on the env.

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
    library: str
    algo_class: str
    policy: str
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env: str = "vec"
    masks: str = "none: the env replaces an invalid action and charges `invalid_action_penalty`"
    zoo: str | None = None

    def resolved_policy_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.policy_kwargs)
        if isinstance(kwargs.get("features_extractor_class"), str):
            kwargs["features_extractor_class"] = load(kwargs["features_extractor_class"])
        return kwargs

    def resolved_policy(self) -> Any:
        return load(self.policy) if ":" in self.policy else self.policy

    def policy_text(self) -> str:
        """The policy as README writes it."""
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


def load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


ROUTER_MASKS = "in the observation (the router masks its logits)"
SETUPS: list[AlgorithmSetup] = [
    AlgorithmSetup(
        "MaskablePPO",
        "sb3-contrib",
        "sb3_contrib:MaskablePPO",
        "agents.policy:RouterPolicy",
        masks=ROUTER_MASKS + " and `action_masks()`",
    ),  # the RL Zoo has no MaskablePPO
    AlgorithmSetup(
        "PPO",
        "stable-baselines3",
        "stable_baselines3:PPO",
        "agents.policy:RouterPolicy",
        masks=ROUTER_MASKS,
        zoo="ppo",
    ),
    AlgorithmSetup(
        "A2C",
        "stable-baselines3",
        "stable_baselines3:A2C",
        "agents.policy:RouterPolicy",
        masks=ROUTER_MASKS,
        zoo="a2c",
    ),
    AlgorithmSetup(
        "TRPO",
        "sb3-contrib",
        "sb3_contrib:TRPO",
        "agents.policy:RouterPolicy",
        # TRPO differentiates the policy twice; only the plain attention kernel has second derivatives.
        {"attention_backend": "math"},
        masks=ROUTER_MASKS,
        zoo="trpo",
    ),
    AlgorithmSetup(
        "DQN",
        "stable-baselines3",
        "stable_baselines3:DQN",
        "MultiInputPolicy",
        {"features_extractor_class": ROUTER_EXTRACTOR},
        zoo="dqn",
    ),
    AlgorithmSetup(
        "QRDQN",
        "sb3-contrib",
        "sb3_contrib:QRDQN",
        "MultiInputPolicy",
        {"features_extractor_class": ROUTER_EXTRACTOR},
        zoo="qrdqn",
    ),
    AlgorithmSetup(
        "RecurrentPPO",
        "sb3-contrib",
        "sb3_contrib:RecurrentPPO",
        "MultiInputLstmPolicy",
        {"features_extractor_class": ROUTER_EXTRACTOR},
        zoo="ppo_lstm",
    ),
    AlgorithmSetup("ARS", "sb3-contrib", "sb3_contrib:ARS", "LinearPolicy", env="flat", zoo="ars"),
]
