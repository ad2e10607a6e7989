"""One step of the module pool on a batch of built networks: run them, score them and, when training,
backpropagate and update the pool. Eagerly, or on a GPU as one CUDA graph.

A lockstep batch has fixed shapes (images, routes and labels of ``batch_size`` episodes), and in the
sync-free dispatch modes (:data:`routing_env.network.SYNC_FREE_MODES`) the whole step is a fixed sequence
of kernels. Captured once, it replays as one launch: the engine's share of an LRN epoch is then bound by
arithmetic rather than by launching a few thousand small kernels per batch from Python.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from routing_env.compiling import Compiled
from routing_env.config import RoutingConfig
from routing_env.modules import ModulePool
from routing_env.network import SYNC_FREE_MODES, RoutePlan, run_routes
from routing_env.pool_optimizer import PoolOptimizer
from routing_env.rules import RouteRules

WARMUP_STEPS = 2  # eager steps (on a side stream) before the capture, as torch.cuda.graph requires


def on_side_stream(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a side CUDA stream, ordered after and before the current one: how the eager calls
    before a capture must run (torch.cuda.graph's warm-up rule)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    return out


@contextlib.contextmanager
def no_garbage_collection() -> Iterator[None]:
    """No cyclic garbage collection inside: collecting an old CUDA graph (or a tensor it owns) while a new
    one is being captured frees device memory mid-capture, which invalidates the capture."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PoolStep:
    """Runs the networks of a batch and trains the pool on them.

    Args:
        pool: the module pool.
        bank_steps: per step, the banks that may run (:class:`routing_env.rules.RouteRules`).
        logits_type: the type index of the heads' output.
        dispatch: how chosen modules run (:mod:`routing_env.modules`).
        optimizer: the pool's optimizer; None for a frozen pool.
        cuda_graph: replay the training step as a CUDA graph (needs a CUDA device, a sync-free dispatch, an
            optimizer built with ``capturable=True`` and one update per batch).
        bf16: run the modules under bf16 autocast (CUDA).
        module_dropout: dropout rate on hidden modules' outputs while training.
        compile: run the networks' forward through torch.compile (:mod:`routing_env.compiling`).
    """

    def __init__(
        self,
        pool: ModulePool,
        bank_steps: list[list[int]],
        logits_type: int,
        dispatch: str,
        optimizer: PoolOptimizer | None,
        cuda_graph: bool = False,
        bf16: bool = False,
        module_dropout: float = 0.0,
        compile: bool = False,
    ) -> None:
        self.pool, self.bank_steps, self.logits_type = pool, bank_steps, logits_type
        self.dispatch, self.optimizer, self.cuda_graph = dispatch, optimizer, cuda_graph
        self.bf16, self.module_dropout = bf16, module_dropout
        if cuda_graph and (optimizer is None or not optimizer.capturable or dispatch not in SYNC_FREE_MODES):
            raise ValueError(
                f"a CUDA-graph pool step needs a capturable optimizer and a dispatch of {SYNC_FREE_MODES}"
            )
        self.plan = RoutePlan(pool, bank_steps)
        self.forward = Compiled(self._forward, compile, "the pool's forward")
        self.reset_graph()

    @classmethod
    def of_engine(
        cls,
        pool: ModulePool,
        rules: RouteRules,
        config: RoutingConfig,
        dispatch: str,
        update_every: int,
        batch_size: int,
    ) -> PoolStep:
        """The pool step of an engine with env settings ``config``: its optimizer (none for a frozen pool),
        a CUDA graph where one can replay it (a GPU, a sync-free dispatch, one update per batch), bf16 and
        compile as ``config`` says."""
        device = pool.action_bank.device
        graphed = (
            config.cuda_graph
            and device.type == "cuda"
            and dispatch in SYNC_FREE_MODES
            and update_every == batch_size
            and bool(config.train_modules)
        )
        optimizer = (
            PoolOptimizer(
                pool,
                config.lr,
                config.lr_decay,
                update_every,
                config.freeze_unused,
                capturable=graphed,
                weight_decay=config.weight_decay,
            )
            if config.train_modules
            else None
        )
        return cls(
            pool,
            rules.bank_steps,
            rules.logits_type,
            dispatch,
            optimizer,
            graphed,
            bf16=config.precision == "bf16" and device.type == "cuda",
            module_dropout=config.module_dropout,
            compile=config.compile,
        )

    def reset_graph(self) -> None:
        """Forget the captured graph (after the optimizer's state tensors were replaced, e.g. on load)."""
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_steps = 0
        self._static: dict[str, torch.Tensor] = {}

    def logits(self, images: torch.Tensor, route: torch.Tensor, training: bool = False) -> torch.Tensor:
        """The networks' logits ``(B, K)`` in fp32."""
        return self.forward(images, route, self.module_dropout if training else 0.0)

    def _forward(self, images: torch.Tensor, route: torch.Tensor, dropout: float) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            logits = run_routes(self.plan, self.logits_type, images, route, self.dispatch, dropout)
        return logits.float()

    def __call__(
        self, images: torch.Tensor, route: torch.Tensor, labels: torch.Tensor, n_episodes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss ``(B,)`` (before any update) and prediction ``(B,)`` of every network; trains the pool on
        the batch when it has an optimizer.

        Module training is the env's own business: it runs with autograd whatever the caller's mode
        (``torch.no_grad()``, ``torch.inference_mode()``).
        """
        if self.optimizer is None:
            with torch.inference_mode(False), torch.no_grad():
                logits = self.logits(images, route)
                return F.cross_entropy(logits, labels, reduction="none"), logits.argmax(dim=1)
        with torch.inference_mode(False), torch.enable_grad():
            if not self.cuda_graph:
                return self._eager(images, route, labels, n_episodes)
            if self._graph is None and self._eager_steps < WARMUP_STEPS:
                self._eager_steps += 1
                return on_side_stream(self._eager, images, route, labels, n_episodes)
            if self._graph is None:
                self._capture(images, route, labels, n_episodes)
            self._static["images"].copy_(images)
            self._static["route"].copy_(route)
            self._static["labels"].copy_(labels)
            self._graph.replay()
            return self._static["loss"].clone(), self._static["prediction"].clone()

    def _eager(
        self, images: torch.Tensor, route: torch.Tensor, labels: torch.Tensor, n_episodes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(images, route, training=True)
        loss = F.cross_entropy(logits, labels, reduction="none")
        prediction = logits.detach().argmax(dim=1)
        self.optimizer.accumulate(loss.sum(), n_episodes, route)
        return loss.detach(), prediction

    def _capture(
        self, images: torch.Tensor, route: torch.Tensor, labels: torch.Tensor, n_episodes: int
    ) -> None:
        static = {"images": images.clone(), "route": route.clone(), "labels": labels.clone()}
        optimizer = self.optimizer
        optimizer.zero_grad()  # the graph's backward then writes fresh gradients, never accumulates
        graph = torch.cuda.CUDAGraph()
        with no_garbage_collection():
            self._record(graph, static)
        self._graph, self._static = graph, static
        torch.cuda.empty_cache()  # the eager warm-up's cached blocks: the graph has its own pool now

    def _record(self, graph: torch.cuda.CUDAGraph, static: dict[str, torch.Tensor]) -> None:
        optimizer = self.optimizer
        with torch.cuda.graph(graph):
            logits = self.logits(static["images"], static["route"], training=True)
            loss = F.cross_entropy(logits, static["labels"], reduction="none")
            (loss.sum() / optimizer.update_every).backward()
            optimizer.mark_used(static["route"])
            optimizer.step()
            static["loss"] = loss.detach()
            static["prediction"] = logits.detach().argmax(dim=1)
