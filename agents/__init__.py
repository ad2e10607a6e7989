"""The LRN router (a conditional transformer actor-critic) as Stable-Baselines3 policies, plus the
training callbacks, evaluation and plots that train.py wires together."""

from agents.policy import RouterFeaturesExtractor, RouterPolicy
from agents.router import RouterConfig, RouterNetwork

__all__ = ["RouterConfig", "RouterFeaturesExtractor", "RouterNetwork", "RouterPolicy"]
