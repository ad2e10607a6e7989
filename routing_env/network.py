"""Running the networks a batch of routes describes.

An episode's observations never depend on module outputs (the mask follows from activation types and the
modules used so far), so the engine records the route step by step and runs the networks once, at the
last step: a function of (images, routes) alone, with fixed shapes in the sync-free dispatch modes, which
is what lets a whole training step of the pool run as one CUDA graph (:mod:`routing_env.pool_step`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from routing_env.modules import ModulePool


def run_routes(
    pool: ModulePool,
    bank_steps: list[list[int]],
    logits_type: int,
    images: torch.Tensor,
    route: torch.Tensor,
    dispatch: str,
    dropout: float = 0.0,
) -> torch.Tensor:
    """The logits ``(B, K)`` of every network: ``images`` ``(B, C, H, W)`` uint8 through ``route`` ``(B, D)``.

    At step ``k`` every bank that may stand there runs (``bank_steps[k]``, see
    :class:`routing_env.rules.RouteRules`) on the samples that chose it, as ``dispatch`` says
    (:mod:`routing_env.modules`; ``"compact"``: each bank on only its sub-batch, one host sync per call).
    ``dropout``: the rate of dropout on every hidden module's output (0 for evaluation).
    """
    batch, depth = route.shape
    bank_of = pool.action_bank[route]  # (B, D), -1 for PASS
    dup_of = pool.action_dup[route]  # (B, D)
    n_banks = len(pool.specs)
    if dispatch == "compact":
        # One host sync for the whole route: how many samples chose each bank at each step.
        cells = torch.arange(depth, device=route.device)[None, :] * (n_banks + 1) + bank_of + 1
        counts = torch.bincount(cells.flatten(), minlength=depth * (n_banks + 1)).view(depth, -1).tolist()
    acts: list[torch.Tensor | None] = [None] * len(pool.types)  # per type: (B, *shape)
    acts[0] = images.float().div_(255.0)
    for k in range(depth):
        bank, dup = bank_of[:, k], dup_of[:, k]
        new_acts = list(acts)
        if dispatch == "compact":
            order = torch.argsort(bank, stable=True)  # samples grouped by bank: PASS first, then bank 0, ...
            starts = [sum(counts[k][: b + 1]) for b in range(n_banks)]
        for b in bank_steps[k]:
            spec = pool.specs[b]
            t_in, t_out = pool.type_index[spec.in_type], pool.type_index[spec.out_type]
            h = acts[t_in]
            if h is None:  # no network holds this bank's input type yet, so none can have chosen it
                continue
            active = bank == b  # (B,)
            prev = new_acts[t_out]
            if dispatch == "compact":
                n_b = counts[k][b + 1]
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
