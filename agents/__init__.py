"""The LRN router (a conditional transformer actor-critic) as Stable-Baselines3 policies, the trainers
behind train.py's ``--algo``, the training loop, evaluation and plots.

The classes load on first use, so importing ``agents.config`` or ``agents.algorithms`` (e.g. to parse
flags) imports neither torch nor SB3.
"""

from __future__ import annotations

from agents.config import AgentConfig, RouterConfig, RoutingNetworkConfig, RunConfig
from routing_env.lazy import lazy_attributes

_LAZY = {
    "LRNRouter": "agents.router",
    "RouterPolicy": "agents.policy",
    "RouterFeaturesExtractor": "agents.policy",
    "train": "agents.training",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [*_LAZY, "AgentConfig", "RouterConfig", "RoutingNetworkConfig", "RunConfig"]
