"""Running the networks a batch of routes describes.

An episode's observations never depend on module outputs (the mask follows from activation types and the
modules used so far), so the engine records the route step by step and runs the networks once, at the
last step: a function of (images, routes) alone, with fixed shapes in the sync-free dispatch modes, which
is what lets a whole training step of the pool run as one CUDA graph (:mod:`routing_env.pool_step`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from routing_env.config import DISPATCH_MODES
from routing_env.modules import ModulePool

# Dispatch modes with fixed shapes and no host sync: a training step in them can be one CUDA graph.
SYNC_FREE_MODES = ("dense", "gathered", "gathered_nhwc", "patches", "grouped_gemm")
# What ``dispatch="auto"`` runs, per (device type, precision); ``scripts/benchmark.py --banks`` measures
# the choices. Measured before the stage plan and the newer modes: gathered beat dense on an H100
# (MNIST-MTL env epoch 10.4 s against 15.2 s, MIN-MTL 4 GB less memory); compact is ~2.5x faster than
# grouped on a 2-core CPU. Any other device: compact.
AUTO_DISPATCH = {
    ("cuda", "fp32"): "gathered",
    ("cuda", "bf16"): "gathered",
    ("cpu", "fp32"): "compact",
    ("cpu", "bf16"): "compact",  # bf16 autocast is CUDA's only
}


def resolve_dispatch(dispatch: str, device: torch.device, precision: str = "fp32") -> str:
    """The dispatch mode to run: ``dispatch`` itself, or for ``"auto"`` the default of ``device`` and
    ``precision``."""
    if dispatch not in DISPATCH_MODES:
        raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {dispatch!r}")
    return AUTO_DISPATCH.get((device.type, precision), "compact") if dispatch == "auto" else dispatch


class RoutePlan:
    """The order in which a pool's banks run on a batch of routes: stage by stage.

    PASS is the identity and no module depends on the step it stands at, so a network is the sequence of
    its modules. When the banks that change the activation type form no cycle between types (the pools
    built here: image -> conv -> fc -> logits), every route walks the types in one order, and a stage is
    either the ``r``-th module a route applies while it stays in a type (the banks that keep the type,
    e.g. ``hidden_conv``) or the module with which it leaves the type (the banks that change it). Every
    route has at most one module per stage, and a bank that changes the type runs once per batch instead
    of at every step where it may stand: the LRN pool's ``fc_from_conv`` (2.3 GB of weights on MIN-MTL)
    runs once, not ``max_depth - 2`` times. With a cycle between types a stage is a step.

    Args:
        pool: the module pool.
        bank_steps: per step, the banks that may run there (:meth:`ModulePool.bank_steps`).
    """

    def __init__(self, pool: ModulePool, bank_steps: Sequence[Sequence[int]]) -> None:
        self.pool = pool
        n_banks, depth = len(pool.specs), len(bank_steps)
        types = [(pool.type_index[s.in_type], pool.type_index[s.out_type]) for s in pool.specs]
        used = sorted({b for banks in bank_steps for b in banks})
        order = _type_order(len(pool.types), [types[b] for b in used if types[b][0] != types[b][1]])
        self.staged = order is not None
        # Per bank (and PASS, the last entry): its first stage, and the type it keeps (-1: it changes it).
        stage_base, keeps = [0] * (n_banks + 1), [-1] * (n_banks + 1)
        if self.staged:
            held = [{0}]  # the types a network may hold before each step (a superset): 0 is the image
            for banks in bank_steps:
                held.append(held[-1] | {types[b][1] for b in banks if types[b][0] in held[-1]})
            self.stage_banks: list[list[int]] = []
            for t in order:
                loops = [b for b in used if types[b] == (t, t)]
                steps = sum(any(b in bank_steps[k] for b in loops) and t in held[k] for k in range(depth))
                rounds = min(steps, sum(pool.specs[b].duplicates for b in loops))  # a module is used once
                for b in loops:
                    stage_base[b], keeps[b] = len(self.stage_banks), t
                self.stage_banks += [loops] * rounds
                leaving = [b for b in used if types[b][0] == t != types[b][1]]
                for b in leaving:
                    stage_base[b] = len(self.stage_banks)
                if leaving:
                    self.stage_banks.append(leaving)
        else:
            self.stage_banks = [list(banks) for banks in bank_steps]
        self.n_stages = len(self.stage_banks)
        stage_base[n_banks] = self.n_stages  # PASS goes to a column that is dropped
        device = pool.action_bank.device
        self.stage_base = torch.tensor(stage_base, device=device)
        self.keeps = torch.tensor(keeps, device=device)
        self.earlier = torch.ones(depth, depth, dtype=torch.bool, device=device).tril(-1)  # [k, j]: j < k

    def stages(self, route: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank ``(B, S)`` (-1: none) and the duplicate ``(B, S)`` each network runs at each stage."""
        bank = self.pool.action_bank[route]  # (B, D), -1 for PASS
        dup = self.pool.action_dup[route]  # (B, D)
        if not self.staged:
            return bank, dup
        keeps = self.keeps[bank]  # (B, D): the type a module keeps (-1: it changes the type, or PASS)
        # How many earlier modules of the route kept the same type: the round of a type-keeping module.
        rank = ((keeps[:, :, None] == keeps[:, None, :]) & self.earlier).sum(2)  # (B, D)
        stage = self.stage_base[bank] + rank * (keeps >= 0)  # (B, D); PASS -> the dropped column
        columns = (route.shape[0], self.n_stages + 1)
        bank_at = bank.new_full(columns, -1).scatter_(1, stage, bank)[:, : self.n_stages]
        dup_at = dup.new_zeros(columns).scatter_(1, stage, dup)[:, : self.n_stages]
        return bank_at, dup_at


def _type_order(n_types: int, edges: list[tuple[int, int]]) -> list[int] | None:
    """The types in an order every edge ``(a, b)`` goes forward in (Kahn's algorithm), or None if the
    edges have a cycle."""
    incoming = [0] * n_types
    for _, b in edges:
        incoming[b] += 1
    ready = [t for t in range(n_types) if incoming[t] == 0]
    order = []
    while ready:
        t = ready.pop(0)
        order.append(t)
        for a, b in edges:
            if a == t:
                incoming[b] -= 1
                if incoming[b] == 0:
                    ready.append(b)
    return order if len(order) == n_types else None


def run_routes(
    plan: RoutePlan,
    logits_type: int,
    images: torch.Tensor,
    route: torch.Tensor,
    dispatch: str,
    dropout: float = 0.0,
) -> torch.Tensor:
    """The logits ``(B, K)`` of every network: ``images`` ``(B, C, H, W)`` uint8 through ``route`` ``(B, D)``.

    At each stage of ``plan`` every bank of the stage runs on the samples that chose it, as ``dispatch``
    says (:mod:`routing_env.modules`; ``"compact"``: each bank on only its sub-batch, one host sync per
    call). ``dropout``: the rate of dropout on every hidden module's output (0 for evaluation).
    """
    pool = plan.pool
    batch = route.shape[0]
    bank_at, dup_at = plan.stages(route)  # (B, S), (B, S)
    n_banks = len(pool.specs)
    if dispatch == "compact":
        # One host sync for the whole route: how many samples run each bank at each stage.
        cells = torch.arange(plan.n_stages, device=route.device)[None, :] * (n_banks + 1) + bank_at + 1
        counts = torch.bincount(cells.flatten(), minlength=plan.n_stages * (n_banks + 1))
        counts = counts.view(plan.n_stages, -1).tolist()
    acts: list[torch.Tensor | None] = [None] * len(pool.types)  # per type: (B, *shape)
    acts[0] = images.float().div_(255.0)
    for s, banks in enumerate(plan.stage_banks):
        bank, dup = bank_at[:, s], dup_at[:, s]
        new_acts = list(acts)
        if dispatch == "compact":
            order = torch.argsort(bank, stable=True)  # samples grouped by bank: none first, then bank 0, ...
            starts = [sum(counts[s][: b + 1]) for b in range(n_banks)]
        for b in banks:
            spec = pool.specs[b]
            t_in, t_out = pool.type_index[spec.in_type], pool.type_index[spec.out_type]
            h = acts[t_in]
            if h is None:  # no network holds this bank's input type yet, so none can have chosen it
                continue
            active = bank == b  # (B,)
            prev = new_acts[t_out]
            if dispatch == "compact":
                n_b = counts[s][b + 1]
                if n_b == 0:
                    continue
                idx = order[starts[b] : starts[b] + n_b]  # (n_b,) the samples that chose b
                out = pool.banks[b](h[idx], dup[idx], active[idx], "dense")  # (n_b, *out_shape)
                if dropout > 0 and t_out != logits_type:
                    out = F.dropout(out, dropout)
                base = prev if prev is not None else out.new_zeros((batch, *out.shape[1:]))
                new_acts[t_out] = base.index_copy(0, idx, out)
            else:
                out = pool.banks[b](h, dup, active, dispatch)  # (B, *out_shape)
                if dropout > 0 and t_out != logits_type:
                    out = F.dropout(out, dropout)
                keep = active.view(-1, *([1] * (out.dim() - 1)))
                new_acts[t_out] = torch.where(keep, out, prev if prev is not None else torch.zeros_like(out))
        acts = new_acts
    return acts[logits_type]
