"""Which action may come next: the pool's per-step rules, the lookahead that avoids dead ends, and the
batched action mask built from them."""

from __future__ import annotations

import torch

from routing_env.modules import ModulePool


class RouteRules:
    """The validity rules of networks of ``max_depth`` steps built from ``pool``.

    An action is valid at step ``k`` for a network holding activation type ``t`` when the pool's step
    rules admit it at ``k`` (:meth:`ModulePool.step_allowed`), it reads ``t`` (PASS reads any type), the
    network does not use it yet (PASS may repeat), and a head is still reachable after it. The last
    condition is a lookahead: the step rules alone admit dead ends (in the static pool, a PASS at step 2
    leaves conv features that no later step can turn into logits).

    Args:
        pool: the module pool.
        max_depth: steps per network.
        device: where the tables live.
    """

    def __init__(self, pool: ModulePool, max_depth: int, device: torch.device) -> None:
        self.pool, self.max_depth = pool, int(max_depth)
        self.step_allowed = pool.step_allowed(self.max_depth).to(device)  # (D, A)
        self.bank_steps = pool.bank_steps(self.max_depth)  # per step: the banks that may run
        logits_types = {pool.type_index[s.out_type] for s in pool.specs if pool.is_logits_type(s.out_type)}
        if len(logits_types) != 1:
            raise ValueError("the pool's heads must all write one logits type")
        self.logits_type = logits_types.pop()
        self.completable = self._completable().to(device)  # (D, n_types)
        first = pool.module_out_type.to(device)[self.step_allowed[0, : pool.n_modules]]
        if not bool(self.completable[0][first].any()):
            raise ValueError(
                f"the module pool admits no complete network in max_depth={self.max_depth} steps"
            )

    def _completable(self) -> torch.Tensor:
        """``(max_depth, n_types)`` bool: a network holding type ``t`` after step ``k`` can still end in a
        head. Backward induction over the step rules; module reuse is ignored (the middle steps always
        admit PASS, so reuse never blocks the pools built here)."""
        pool, depth = self.pool, self.max_depth
        allowed = self.step_allowed.cpu()
        in_t, out_t = pool.module_in_type.cpu(), pool.module_out_type.cpu()
        ok = torch.zeros(depth, len(pool.types), dtype=torch.bool)
        ok[depth - 1, self.logits_type] = True
        for k in range(depth - 2, -1, -1):
            nxt = allowed[k + 1]
            for t in range(len(pool.types)):
                via_module = (nxt[: pool.n_modules] & (in_t == t) & ok[k + 1, out_t]).any()
                ok[k, t] = via_module | (nxt[pool.pass_action] & ok[k + 1, t])
        return ok

    def mask(self, step: int, cur_type: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """``(B, n_actions)`` bool: the valid actions at ``step`` of networks holding ``cur_type`` ``(B,)``
        and using the actions ``used`` ``(B, n_actions)``."""
        batch = cur_type.shape[0]
        if step >= self.max_depth:
            return torch.zeros(batch, self.pool.n_actions, dtype=torch.bool, device=cur_type.device)
        fits = self.pool.module_in_type[None, :] == cur_type[:, None]  # (B, M)
        fits = torch.cat([fits, fits.new_ones(batch, 1)], dim=1)  # PASS fits any type
        out_type = torch.cat(  # PASS keeps the current type
            [self.pool.module_out_type[None, :].expand(batch, -1), cur_type[:, None]], dim=1
        )
        finishes = self.completable[step][out_type]  # (B, A)
        return fits & self.step_allowed[step][None, :] & ~used & finishes
