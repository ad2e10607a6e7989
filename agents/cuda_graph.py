"""Replaying a module's inference forward as a CUDA graph.

The router runs six times per batch of episodes while rollouts are collected and once per evaluation
batch, each time a few hundred small kernels on a fixed shape: launch-bound. Captured once per input
shape, a forward replays as one launch. Training forwards (with autograd) stay eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from routing_env.pool_step import no_garbage_collection, on_side_stream

WARMUP_CALLS = 2  # eager calls on a side stream before a capture (cuDNN and lazy initialisation)


class GraphedInference:
    """Calls ``fn(*tensors) -> tuple of tensors``, replaying a CUDA graph per input signature when the
    inputs are on a CUDA device and autograd is off; eagerly otherwise. ``fn`` must read only its inputs
    and parameters updated in place (as optimizers do), and must not sync with the host.
    """

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        self.fn = fn
        self.entries: dict[tuple, dict] = {}

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.is_grad_enabled() or not inputs[0].is_cuda:
            return self.fn(*inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        entry = self.entries.setdefault(key, {"warm": 0, "graph": None})
        if entry["graph"] is None:
            if entry["warm"] < WARMUP_CALLS:
                entry["warm"] += 1
                return on_side_stream(self.fn, *inputs)
            entry["inputs"] = [t.clone() for t in inputs]
            graph = torch.cuda.CUDAGraph()
            with no_garbage_collection(), torch.cuda.graph(graph):
                entry["outputs"] = self.fn(*entry["inputs"])
            entry["graph"] = graph
        for static, t in zip(entry["inputs"], inputs, strict=True):
            static.copy_(t)
        entry["graph"].replay()
        return tuple(o.clone() for o in entry["outputs"])

    def clear(self) -> None:
        self.entries.clear()
