"""Limitless Routing Networks: the network-construction MDP as Gymnasium (and SB3) environments.

``import routing_env`` registers ``RoutingMNIST-v0``, ``RoutingCIFAR-v0`` and ``RoutingMIN-v0``; the
classes below load on first use, so importing the package (e.g. to read configs or parse flags) does
not import torch.
"""

from __future__ import annotations

from routing_env.config import RoutingConfig
from routing_env.lazy import lazy_attributes
from routing_env.registration import benchmark_of, register_benchmark, routing_env_ids

# public name -> the module that defines it
_LAZY = {
    "BankSpec": "routing_env.modules",
    "ModulePool": "routing_env.modules",
    "TensorType": "routing_env.modules",
    "lrn_pool_specs": "routing_env.modules",
    "DataError": "routing_env.benchmarks.base",
    "MTLBenchmark": "routing_env.benchmarks.base",
    "MTLSplit": "routing_env.benchmarks.base",
    "load_benchmark": "routing_env.benchmarks",
    "Pairs": "routing_env.benchmarks.tasks",
    "one_vs_all": "routing_env.benchmarks.tasks",
    "class_groups": "routing_env.benchmarks.tasks",
    "SeparatePoolsWarning": "routing_env.copies",
    "make_engine": "routing_env.build",
    "RoutingEngine": "routing_env.engine",
    "RoutingEnv": "routing_env.env",
    "RoutingVectorEnv": "routing_env.vector_env",
    "RoutingSB3VecEnv": "routing_env.sb3_vec_env",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [*_LAZY, "RoutingConfig", "benchmark_of", "register_benchmark", "routing_env_ids"]
