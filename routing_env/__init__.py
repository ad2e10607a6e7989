"""Limitless Routing Networks: the network-construction MDP as Gymnasium (and SB3) environments.

``import routing_env`` registers ``RoutingMNIST-v0``, ``RoutingCIFAR-v0`` and ``RoutingMIN-v0``.
"""

from gymnasium.envs.registration import register

from routing_env.benchmarks import DataError, MTLBenchmark, MTLSplit, load_benchmark
from routing_env.config import RoutingConfig, make_engine
from routing_env.engine import EngineConfig, RoutingEngine
from routing_env.env import RoutingEnv
from routing_env.modules import BankSpec, ModulePool, TensorType, lrn_pool_specs
from routing_env.sb3_vec_env import RoutingVecEnv
from routing_env.vector_env import RoutingVectorEnv

register(
    id="RoutingMNIST-v0",
    entry_point="routing_env.env:RoutingEnv",
    vector_entry_point="routing_env.vector_env:RoutingVectorEnv",
    kwargs={"benchmark": "mnist"},
)
register(
    id="RoutingCIFAR-v0",
    entry_point="routing_env.env:RoutingEnv",
    vector_entry_point="routing_env.vector_env:RoutingVectorEnv",
    kwargs={"benchmark": "cifar"},
)
register(
    id="RoutingMIN-v0",
    entry_point="routing_env.env:RoutingEnv",
    vector_entry_point="routing_env.vector_env:RoutingVectorEnv",
    kwargs={"benchmark": "min"},
)

__all__ = [
    "BankSpec",
    "DataError",
    "EngineConfig",
    "MTLBenchmark",
    "MTLSplit",
    "ModulePool",
    "RoutingConfig",
    "RoutingEngine",
    "RoutingEnv",
    "RoutingVecEnv",
    "RoutingVectorEnv",
    "TensorType",
    "load_benchmark",
    "lrn_pool_specs",
    "make_engine",
]
