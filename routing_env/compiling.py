"""torch.compile for the fixed-shape programs (``compile=True``): the pool's forward and loss here, the
router's step of a rollout and a PPO minibatch's losses in :mod:`agents`.

Each program is a function of tensors that reads its parameters and writes nothing in place, so a failed
compile loses nothing: :class:`Compiled` then says so in one line and runs the function as it is. Inductor
fuses the many small elementwise and reduction kernels of these programs into a few; it compiles without
CUDA graphs of its own (``mode="default"``), so the programs' own captures (:mod:`routing_env.pool_step`,
:mod:`agents.cuda_graph`) replay the compiled kernels: the eager warm-up calls before a capture are the
ones that compile. Random numbers come from torch's own generator (inductor's ``fallback_random``), so a
compiled program draws what the eager one draws and a CUDA graph can replay the draws.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import torch

# Inductor's options for every program: torch's own random kernels (see the module docstring).
INDUCTOR_OPTIONS = {"fallback_random": True}
# torch.compile's backend for the programs; the CPU tests set "aot_eager" (inductor's tracing without its
# code generation, which takes minutes on a small CPU).
BACKEND = "inductor"


class Compiled:
    """``fn`` through ``torch.compile`` when ``enabled``; where compiling fails (no compiler, an op
    inductor cannot lower), one warning line on stderr and ``fn`` itself from then on.

    Args:
        fn: a function of tensors without side effects on its inputs (a failed call is repeated eagerly).
        enabled: compile it; False calls ``fn``.
        what: what ``fn`` is, for the warning.
        backend: torch.compile's backend; default :data:`BACKEND`.
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool, what: str, backend: str | None = None) -> None:
        backend = backend or BACKEND
        self.fn, self.what = fn, what
        self.compiled: Callable[..., Any] | None = None
        self.failed: str | None = None
        self.calls = 0
        if enabled:
            try:
                options = INDUCTOR_OPTIONS if backend == "inductor" else None
                # Each program runs at a few fixed shapes (a training batch, an evaluation batch), each
                # replayed by its own CUDA graph: a kernel per shape, never dynamo's shape-generic
                # recompile on the second shape it sees.
                self.compiled = torch.compile(fn, backend=backend, options=options, dynamic=False)
            except Exception as e:  # noqa: BLE001 (no backend here: run eagerly, and say so)
                self._fall_back(e)

    @property
    def active(self) -> bool:
        """Whether calls go through the compiled function."""
        return self.compiled is not None

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args)
        first = self.calls == 0
        try:
            with _backward_compiled_with_forward():
                out = self.compiled(*args)
        except Exception as e:
            # A compile error surfaces at a call: at the first, or at a recompile (a new shape).
            if not (first or isinstance(e, torch._dynamo.exc.TorchDynamoException)):
                raise
            self._fall_back(e)
            return self.fn(*args)
        self.calls += 1
        return out

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        self.failed = f"{type(error).__name__}: {reason}"
        sys.stderr.write(f"warning: torch.compile failed for {self.what} ({self.failed}); it runs eagerly\n")


def _backward_compiled_with_forward() -> contextlib.AbstractContextManager:
    """AOTAutograd compiles a backward at its first use by default, in the caller's ``backward()``, where
    :class:`Compiled` cannot catch a failure: compile it with the forward instead."""
    from torch._functorch import config

    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)
