"""Replaying fixed-shape programs as CUDA graphs.

The router runs a few hundred small kernels per call on a fixed shape, and so do a batch's rollout and a
PPO minibatch update around it: launch-bound. Captured once per input shape, such a program replays as
one launch. :class:`CapturedProgram` captures any function of tensors that keeps to the rules below;
:class:`GraphedInference` is the router's inference forward (autograd off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from routing_env.pool_step import no_garbage_collection, on_side_stream

WARMUP_CALLS = 2  # eager calls on a side stream before a capture (cuDNN, lazy state, optimizer moments)


@dataclass
class _Capture:
    """One input signature's graph: its eager warm-up calls so far, static inputs and outputs."""

    warm: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: tuple[torch.Tensor, ...] = ()


class CapturedProgram:
    """Calls ``fn(*inputs) -> tuple of tensors``; with ``capture``, replays a CUDA graph of it per input
    signature (shapes, dtypes, devices) after :data:`WARMUP_CALLS` eager calls on a side stream.

    Every call does what an eager call does, so ``fn`` must keep to what a replay can repeat: read only its
    inputs and tensors that persist between calls (parameters, buffers written in place); leave its results
    in its outputs or in persistent tensors, in place; never sync with the host (no ``.item()``, no
    data-dependent shapes); draw random numbers from torch's default generator (graph-safe); and, if it
    steps an optimizer, use one built with ``capturable=True``. Python code in ``fn`` runs at capture only.

    Args:
        fn: the program.
        capture: replay CUDA graphs (the caller says whether ``fn`` runs on a CUDA device); False runs
            ``fn`` eagerly at every call.
        before_capture: called right before each capture (e.g. ``optimizer.zero_grad(set_to_none=True)``,
            so that the graph's backward allocates the gradients it writes in the graph's own memory).
        clone_outputs: return copies of the graph's outputs; False returns the graph's own tensors, which
            the next replay overwrites (saves a copy when the caller consumes them at once).
    """

    def __init__(
        self,
        fn: Callable[..., tuple[torch.Tensor, ...]],
        capture: bool,
        before_capture: Callable[[], None] | None = None,
        clone_outputs: bool = True,
    ) -> None:
        self.fn, self.capture = fn, capture
        self.before_capture, self.clone_outputs = before_capture, clone_outputs
        self.entries: dict[tuple, _Capture] = {}

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.capture:
            return self.fn(*inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        entry = self.entries.setdefault(key, _Capture())
        if entry.graph is None:
            if entry.warm < WARMUP_CALLS:
                entry.warm += 1
                return on_side_stream(self.fn, *inputs)
            self._capture(entry, inputs)
        for static, t in zip(entry.inputs, inputs, strict=True):
            static.copy_(t)
        entry.graph.replay()
        return tuple(o.clone() for o in entry.outputs) if self.clone_outputs else entry.outputs

    def _capture(self, entry: _Capture, inputs: tuple[torch.Tensor, ...]) -> None:
        entry.inputs = [t.clone() for t in inputs]
        if self.before_capture is not None:
            self.before_capture()
        graph = torch.cuda.CUDAGraph()
        with no_garbage_collection(), torch.cuda.graph(graph):
            entry.outputs = tuple(self.fn(*entry.inputs))
        entry.graph = graph

    @property
    def captured(self) -> int:
        """How many graphs were captured."""
        return sum(entry.graph is not None for entry in self.entries.values())

    def clear(self) -> None:
        """Forget every graph (they are captured again)."""
        self.entries.clear()


class GraphedInference(CapturedProgram):
    """A module's inference forward ``fn(*tensors) -> tuple of tensors``, replayed as a CUDA graph per input
    signature when the inputs are on a CUDA device and autograd is off; eager otherwise (training)."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        super().__init__(fn, capture=True)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if torch.is_grad_enabled() or not inputs[0].is_cuda:
            return self.fn(*inputs)
        return super().__call__(*inputs)
