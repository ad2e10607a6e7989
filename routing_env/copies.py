"""Copies of the single env made by generic vectorisers, and worker processes.

Gymnasium's ``SyncVectorEnv`` / ``AsyncVectorEnv`` (``gymnasium.make_vec`` in ``"sync"`` or ``"async"``
mode) and SB3's ``DummyVecEnv`` / ``SubprocVecEnv`` build one :class:`routing_env.RoutingEnv` per
sub-env, and every copy trains its own module pool on its own episodes: a different MDP from one pool
shared by a batch (:class:`routing_env.RoutingVectorEnv`, :class:`routing_env.RoutingSB3VecEnv`). The
env says so once per process (:class:`SeparatePoolsWarning`).

A worker process (``AsyncVectorEnv``, ``SubprocVecEnv``) runs torch with one thread: OpenMP's thread
pool does not survive ``fork`` (the first parallel op in a forked child waits forever for threads that
are not there), and N workers with all cores each would only oversubscribe the CPU.
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings

# Modules whose code builds one env per sub-env (their frames on the stack mean "a vectoriser copy").
VECTORISER_MODULES = (
    "gymnasium.vector.sync_vector_env",
    "gymnasium.vector.async_vector_env",
    "stable_baselines3.common.vec_env.dummy_vec_env",
    "stable_baselines3.common.vec_env.subproc_vec_env",
)


class SeparatePoolsWarning(UserWarning):
    """Several copies of the single env each train their own module pool."""


def in_worker_process() -> bool:
    """True in a process started by :mod:`multiprocessing` (a vector env's worker)."""
    return multiprocessing.parent_process() is not None


def prepare_worker_process() -> None:
    """In a worker process, use one torch thread (fork-safe; see the module docstring)."""
    if in_worker_process():
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


def vectoriser_module() -> str | None:
    """The module of :data:`VECTORISER_MODULES` building the env being built, if any."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name in VECTORISER_MODULES:
            return name
        frame = frame.f_back
    return None


def warn_if_separate_pools(training: bool) -> None:
    """Warn that vectorised copies own separate pools, once where the user sees it: in the main
    process (sync vectorisers; the async vector env's probe copy), or in the workers of SB3's
    ``SubprocVecEnv``, whose parent builds no copy. The workers of Gymnasium's async vector env stay
    quiet: their parent already warned."""
    if not training:
        return
    module = vectoriser_module()
    if module is None or (
        in_worker_process() and module != "stable_baselines3.common.vec_env.subproc_vec_env"
    ):
        return
    warnings.warn(
        "RoutingEnv copies made by a generic vector env (gymnasium.make_vec in 'sync' or 'async' mode, "
        "SB3's DummyVecEnv or SubprocVecEnv) each train their own module pool on their own episodes, "
        "which changes the MDP (pool updates and the collapse bonus see one copy's episodes only). For "
        "one pool shared by a batch of episodes use gymnasium.make_vec(id, num_envs=N, "
        "vectorization_mode='vector_entry_point') or routing_env.RoutingSB3VecEnv.",
        SeparatePoolsWarning,
        stacklevel=3,
    )
