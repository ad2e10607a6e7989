"""The LRN agent as a library: the router (a conditional transformer actor-critic) as Stable-Baselines3
policies, device rollouts, the trainers behind ``--algo`` (:mod:`agents.algorithms`), evaluation.

The classes load on first use, so importing ``agents.config`` or ``agents.algorithms`` (e.g. to parse
flags) imports neither torch nor SB3. Nothing here knows about training runs (their folders, flags or
loop: :mod:`training_run`).
"""

from __future__ import annotations

from agents.config import AgentConfig, RouterConfig, RoutingNetworkConfig
from routing_env.lazy import lazy_attributes

_LAZY = {
    "LRNRouter": "agents.router",
    "RouterPolicy": "agents.policy",
    "RouterFeaturesExtractor": "agents.policy",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [*_LAZY, "AgentConfig", "RouterConfig", "RoutingNetworkConfig"]
