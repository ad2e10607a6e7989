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

    With ``task_heads`` (the number of tasks, not in the paper) a task ends only in heads of its own, as
    the static network's tasks do: task ``t`` may take duplicate ``d`` of a head bank of ``n`` duplicates
    where ``d % m == t % m``, ``m = min(n, task_heads)`` (with as many duplicates as tasks, duplicate
    ``t``). Every task keeps at least one duplicate of every head bank, so the lookahead is unchanged.

    Args:
        pool: the module pool.
        max_depth: steps per network.
        device: where the tables live.
        task_heads: the number of tasks whose heads are their own, or None (any task takes any head).
        oracle_routes: a probe's oracle routing ``(n_tasks, n_kinds, max_depth)``, checked to end each task
            in a head of its own under ``task_heads`` (one clear error if not).
    """

    def __init__(
        self,
        pool: ModulePool,
        max_depth: int,
        device: torch.device,
        task_heads: int | None = None,
        oracle_routes: torch.Tensor | None = None,
    ) -> None:
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
        self.task_allowed = None if task_heads is None else self._task_allowed(int(task_heads)).to(device)
        if self.task_allowed is not None and oracle_routes is not None:
            heads = oracle_routes[..., -1].to(device)  # (T, K): a route's last step is its head
            tasks = torch.arange(heads.shape[0], device=device)[:, None].expand_as(heads)
            if not bool(self.task_allowed[tasks, heads].all()):
                raise ValueError("task_heads: the benchmark's oracle routing ends a task in another's head")

    def _task_allowed(self, n_tasks: int) -> torch.Tensor:
        """``(n_tasks, n_actions)`` bool: the actions each task may take; every non-head action, and the
        heads of its own (the class docstring's rule)."""
        pool = self.pool
        if n_tasks < 1:
            raise ValueError(f"task_heads must be >= 1 (the number of tasks), got {n_tasks}")
        bank, dup = pool.action_bank.cpu(), pool.action_dup.cpu()  # (A,) each; PASS: bank -1
        head = torch.tensor([pool.is_logits_type(s.out_type) for s in pool.specs] + [False])[bank]  # (A,)
        m = torch.tensor([s.duplicates for s in pool.specs] + [1])[bank].clamp(max=n_tasks)  # (A,)
        own = dup[None, :] % m == torch.arange(n_tasks)[:, None] % m  # (T, A)
        allowed = ~head[None, :] | own
        return allowed

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

    def mask(
        self, step: int, cur_type: torch.Tensor, used: torch.Tensor, tasks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, n_actions)`` bool: the valid actions at ``step`` of networks holding ``cur_type`` ``(B,)``
        and using the actions ``used`` ``(B, n_actions)``, of tasks ``tasks`` ``(B,)`` (needed with
        ``task_heads``)."""
        if step >= self.max_depth:
            return cur_type.new_zeros(cur_type.shape[0], self.pool.n_actions, dtype=torch.bool)
        mask = self.valid[step][cur_type] & ~used
        if self.task_allowed is not None:
            if tasks is None:
                raise ValueError("rules with task_heads need each network's task")
            mask = mask & self.task_allowed[tasks]
        return mask

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

    def random_routes(
        self, batch: int, generator: torch.Generator | None = None, tasks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(batch, max_depth)`` valid routes, each step uniform over the valid actions (benchmarks and
        tests; ``generator`` on the rules' device; ``tasks`` ``(batch,)`` with ``task_heads``)."""
        device = self.valid.device
        cur_type = torch.zeros(batch, dtype=torch.long, device=device)
        used = torch.zeros(batch, self.pool.n_actions, dtype=torch.bool, device=device)
        route = torch.empty(batch, self.max_depth, dtype=torch.long, device=device)
        for k in range(self.max_depth):
            mask = self.mask(k, cur_type, used, tasks)
            route[:, k] = torch.multinomial(mask.float(), 1, generator=generator).squeeze(1)
            cur_type = self.advance(cur_type, used, route[:, k])
        return route
