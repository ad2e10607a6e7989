"""Training the module pool: Adam, its learning-rate schedule, and the gradient of the episodes not yet
in an optimizer step.

Two Adams:

* ``freeze_unused=True`` (the paper: "if a module is not used in a batch of examples, its parameters will
  not be updated after that batch"): every module is its own Adam, stepped only in the updates whose
  episodes used it, with its own step count. A module no route used keeps its weights and its moments.
  Plain Adam would still move it: its gradient is zero, but its moments are not.
* ``freeze_unused=False``: one ``torch.optim.Adam`` over the whole pool.

Both are pure tensor code with no host sync, so the whole update can run inside a CUDA graph
(:mod:`routing_env.pool_step`).
"""

from __future__ import annotations

from typing import Any

import torch

from routing_env.modules import ModulePool
from routing_env.rewards import module_usage_counts

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


class PerModuleAdam:
    """Adam with one state per module (per duplicate row of each bank's parameters), stepped only where
    the module was used. With every module used at every step it is ``torch.optim.Adam``.

    Args:
        pool: the pool; parameter ``p`` of bank ``b`` has shape ``(duplicates_b, ...)``, row ``j`` being
            module ``j`` of the bank.
        lr: the learning rate (a float, or a 0-d tensor that a CUDA graph reads at replay).
        weight_decay: decoupled weight decay (AdamW's), applied to the modules stepped.
    """

    def __init__(self, pool: ModulePool, lr: float | torch.Tensor, weight_decay: float = 0.0) -> None:
        self.lr, self.weight_decay = lr, float(weight_decay)
        self.banks = [(pool.bank_offsets[b], list(bank.parameters())) for b, bank in enumerate(pool.banks)]
        self.state: dict[str, torch.Tensor] = {}
        for b, (_, params) in enumerate(self.banks):
            d = params[0].shape[0]
            self.state[f"{b}.steps"] = torch.zeros(d, device=params[0].device)
            for i, p in enumerate(params):
                self.state[f"{b}.{i}.exp_avg"] = torch.zeros_like(p)
                self.state[f"{b}.{i}.exp_avg_sq"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, used: torch.Tensor) -> None:
        """One update of the modules ``used`` (``(n_modules,)`` bool) from their ``.grad``.

        Each module's rows of its bank's parameters take one fused Adam step (torch's own kernel, as
        ``torch.optim.Adam(fused=True)``: one pass over the weights and their moments), at the module's own
        step count; the step's ``found_inf`` flag, set for the modules no route used, makes the kernel
        leave their weights and moments as they are."""
        update = torch._fused_adamw_ if self.weight_decay else torch._fused_adam_
        for b, (offset, params) in enumerate(self.banks):
            d = params[0].shape[0]
            mask = used[offset : offset + d].to(params[0].dtype)  # (d,)
            steps = self.state[f"{b}.steps"]
            steps.add_(mask)
            skip = 1 - mask  # (d,) 1: the kernel skips the module
            with_grad = [(i, p) for i, p in enumerate(params) if p.grad is not None]
            if not with_grad:
                continue
            exp_avgs = [self.state[f"{b}.{i}.exp_avg"] for i, _ in with_grad]
            exp_avg_sqs = [self.state[f"{b}.{i}.exp_avg_sq"] for i, _ in with_grad]
            for r in range(d):
                update(
                    [p[r] for _, p in with_grad],
                    [p.grad[r] for _, p in with_grad],
                    [m[r] for m in exp_avgs],
                    [v[r] for v in exp_avg_sqs],
                    [],
                    [steps[r]] * len(with_grad),
                    lr=self.lr,
                    beta1=BETAS[0],
                    beta2=BETAS[1],
                    weight_decay=self.weight_decay,
                    eps=EPS,
                    amsgrad=False,
                    maximize=False,
                    found_inf=skip[r],
                )

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.state):
            raise ValueError("the checkpoint's per-module Adam state does not fit this pool")
        for k, v in state.items():
            self.state[k].copy_(v)


class PoolOptimizer:
    """One Adam step on the pool for every ``update_every`` episodes, on their mean loss.

    Args:
        pool: the module pool.
        lr: the learning rate of the first pass over the split.
        lr_decay: factor on the learning rate after every pass.
        update_every: episodes per optimizer step (a vector env: its batch; the single env: ``batch_size``
            episodes of one each).
        freeze_unused: modules no episode of an update used stay as they are (module docstring).
        capturable: keep the learning rate and Adam's state on the device, as a CUDA graph needs.
        weight_decay: decoupled weight decay (AdamW's).
    """

    def __init__(
        self,
        pool: ModulePool,
        lr: float,
        lr_decay: float,
        update_every: int,
        freeze_unused: bool = True,
        capturable: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        self.pool = pool
        self.params = list(pool.parameters())
        self.base_lr, self.lr_decay, self.update_every = float(lr), float(lr_decay), int(update_every)
        self.freeze_unused, self.capturable = bool(freeze_unused), bool(capturable)
        device = self.params[0].device
        self._lr = torch.tensor(self.base_lr, device=device) if capturable else self.base_lr
        if self.freeze_unused:
            self.adam: PerModuleAdam | torch.optim.Optimizer = PerModuleAdam(pool, self._lr, weight_decay)
        else:
            fused = {"fused": True} if device.type == "cuda" else {}
            adam = torch.optim.AdamW if weight_decay else torch.optim.Adam
            decay = {"weight_decay": weight_decay} if weight_decay else {}
            self.adam = adam(self.params, lr=self._lr, capturable=capturable, **fused, **decay)
        self.used = torch.zeros(pool.n_modules, dtype=torch.bool, device=device)  # since the last step
        self.pending_episodes = 0
        self.passes = 0

    @property
    def lr(self) -> float:
        return self.lr_of_pass(self.passes)

    def lr_of_pass(self, passes: int) -> float:
        """The learning rate of the batches that begin in pass ``passes``."""
        return self.base_lr * self.lr_decay**passes

    def set_pass(self, passes: int) -> None:
        """The learning rate after ``passes`` completed passes: ``lr * lr_decay ** passes``."""
        self.passes = int(passes)
        value = self.lr
        if isinstance(self._lr, torch.Tensor):
            self._lr.fill_(value)
        else:
            self._lr = value
            if isinstance(self.adam, PerModuleAdam):
                self.adam.lr = value
            else:
                for group in self.adam.param_groups:
                    group["lr"] = value

    def mark_used(self, route: torch.Tensor) -> None:
        """Record the modules the routes ``(B, T)`` used (PASS and padding ids ``>= n_modules`` are not)."""
        self.used |= module_usage_counts(route, self.used.shape[0]) > 0

    def accumulate(self, loss_sum: torch.Tensor, n_episodes: int, route: torch.Tensor) -> None:
        """Add the gradient of ``n_episodes`` episodes' summed loss (their routes ``(B, T)``); step once
        ``update_every`` episodes are in."""
        (loss_sum / self.update_every).backward()
        self.mark_used(route)
        self.pending_episodes += n_episodes
        if self.pending_episodes >= self.update_every:
            self.step()
            self.zero_grad()
            self.pending_episodes = 0

    def step(self) -> None:
        if isinstance(self.adam, PerModuleAdam):
            self.adam.step(self.used)
        else:
            self.adam.step()
        self.used.zero_()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def copy_duplicate(self, bank: int, source: int = 0) -> None:
        """Make every duplicate of bank ``bank`` a copy of duplicate ``source``: its weights and its Adam
        state (moments; with ``freeze_unused`` also its step count), so the copies start on equal footing
        (upcycling, :func:`routing_env.static_route.upcycle`). Pending gradients of the bank are dropped."""
        params = list(self.pool.banks[bank].parameters())
        for p in params:
            p.copy_(p[source].clone().expand_as(p))
            p.grad = None
        if isinstance(self.adam, PerModuleAdam):
            rows = [k for k in self.adam.state if k.split(".")[0] == str(bank)]
            for key in rows:
                state = self.adam.state[key]
                state.copy_(state[source].clone().expand_as(state))
            return
        for p in params:  # one Adam over the pool: the moments are per parameter, the step count shared
            for key in ("exp_avg", "exp_avg_sq"):
                moment = self.adam.state.get(p, {}).get(key)
                if moment is not None:
                    moment.copy_(moment[source].clone().expand_as(moment))

    def state_dict(self) -> dict[str, Any]:
        """Adam's state and, between steps, the gradient accumulated so far and the modules it used (else
        a resumed run's next step would differ)."""
        pending = self.pending_episodes > 0
        return {
            "adam": self.adam.state_dict(),
            "pending_episodes": self.pending_episodes,
            "used": self.used.cpu(),
            "pending_grads": [None if p.grad is None else p.grad.detach().cpu().clone() for p in self.params]
            if pending
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adam.load_state_dict(state["adam"])
        self.pending_episodes = int(state["pending_episodes"])
        self.used.copy_(state["used"])
        grads = state["pending_grads"] or [None] * len(self.params)
        for param, grad in zip(self.params, grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device, param.dtype).clone()
