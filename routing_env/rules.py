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
        n_types = len(pool.types)
        types = torch.arange(n_types, device=device)
        # The type after each action from each type (PASS keeps it), and which actions fit each type.
        self.next_type = torch.cat(  # (n_types, A)
            [pool.module_out_type.to(device)[None, :].expand(n_types, -1), types[:, None]], dim=1
        )
        reads = pool.module_in_type.to(device)[None, :] == types[:, None]  # (n_types, M)
        fits = torch.cat([reads, reads.new_ones(n_types, 1)], dim=1)  # (n_types, A): PASS fits any type
        # (D, n_types, A): every rule but module reuse, for each step and type held.
        self.valid = fits[None] & self.step_allowed[:, None, :] & self.completable[:, self.next_type]
        # For an invalid action: PASS where valid, else the lowest valid module (the highest preference).
        n_actions = pool.n_actions
        self.preference = torch.arange(n_actions, 0, -1, device=device)  # (A,) module m: A - m
        self.preference[pool.pass_action] = n_actions + 1

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
        if step >= self.max_depth:
            return cur_type.new_zeros(cur_type.shape[0], self.pool.n_actions, dtype=torch.bool)
        return self.valid[step][cur_type] & ~used

    def substitute(self, mask: torch.Tensor) -> torch.Tensor:
        """``(B,)``: what replaces an invalid action under ``mask`` ``(B, n_actions)``: PASS where it is
        valid, else the lowest valid module."""
        return (mask * self.preference).argmax(dim=1)

    def advance(self, cur_type: torch.Tensor, used: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Take valid ``actions`` ``(B,)``: marks them in ``used`` ``(B, n_actions)`` (in place; PASS may
        repeat, so it is never marked) and returns the type each network holds after them ``(B,)``."""
        used.scatter_(1, actions[:, None], True)
        used[:, self.pool.pass_action] = False
        return self.next_type[cur_type, actions]

    def random_routes(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(batch, max_depth)`` valid routes, each step uniform over the valid actions (benchmarks and
        tests; ``generator`` on the rules' device)."""
        device = self.valid.device
        cur_type = torch.zeros(batch, dtype=torch.long, device=device)
        used = torch.zeros(batch, self.pool.n_actions, dtype=torch.bool, device=device)
        route = torch.empty(batch, self.max_depth, dtype=torch.long, device=device)
        for k in range(self.max_depth):
            mask = self.mask(k, cur_type, used)
            route[:, k] = torch.multinomial(mask.float(), 1, generator=generator).squeeze(1)
            cur_type = self.advance(cur_type, used, route[:, k])
        return route
