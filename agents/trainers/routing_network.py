"""The original routing network (Rosenbaum, Klinger & Riemer 2017) as a baseline in the LRN harness.

What it is
    "Routing Networks: Adaptive Selection of Non-linear Functions for Multi-Task Learning" routes each
    sample through a fixed number of layers, each layer picking one of its own set of modules; the
    router's state is the previous layer's output, the task and the depth. As the LRN paper describes
    it, its best router is *tabular*, one agent per task, trained with the Weighted Policy Learner
    (WPL, Abdallah & Lesser 2006) on a reward of +1 for a correct and -1 for a wrong prediction
    (optionally plus a "collaboration reward"), and it routes only the last 3 fully-connected layers
    after fixed convolutional layers.

    Here it runs through the same engine as every other algorithm (``pool="routing_network"``, see
    :func:`routing_env.modules.routing_network_pool_specs`, ``max_depth=5``): steps 0 and 1 are the
    fixed shared conv trunk (forced), steps 2, 3 and 4 pick one of their depth's ``n`` modules (FC
    from conv, hidden FC, head). The router is a table ``probs[task, depth, module]`` of shape
    ``(n_tasks, 3, n)``: row ``[t, d]`` is the policy of task ``t``'s agent at routed depth ``d``.
    Training samples routes from it; :meth:`RoutingNetworkTrainer.act` (evaluation) takes its argmax.
    The engine trains the modules as for every algorithm (Adam, ``--lr`` 1e-4, one step per batch).

    PASS is never chosen: the table has no PASS column, and the pool is built with
    ``allow_pass=False``, so the engine's mask admits none either.

Learners (``--rn-learner``)
    ``wpl`` (default): per ``(task, depth)`` state, Q-values of its modules are running means of the
    episode return ``G`` of the samples that chose them; then, for every state visited in the batch,
    the WPL update of Abdallah & Lesser: ``delta(a) = Q(a) - V`` with ``V = sum_a pi(a) Q(a)``;
    ``delta(a) *= 1 - pi(a)`` if ``delta(a) > 0`` else ``*= pi(a)``; ``pi += lr * delta``; then ``pi``
    is projected (Euclidean) onto the simplex with every probability >= ``epsilon``.
    ``reinforce``: a softmax table of logits, one REINFORCE step per batch with the state's batch mean
    return as baseline.

Rewards
    ``G = +1 / -1`` (the engine's final ``correct``), plus with ``--rn-rho > 0`` the collaboration reward
    of the original paper at every routed step: ``rho * (share of the batch that chose the same module
    at that depth)``; returns are undiscounted (``G_d`` = final reward + collaboration rewards of depths
    ``>= d``).

Deviations from the original paper (honestly)
    * Modules are the LRN paper's (32-channel 3x3 convs with instance norm, 256-wide FC layers with
      layer norm, linear heads), not the original's sizes and normalisations, so that every algorithm
      of this harness builds networks from the same kinds of modules.
    * ``n`` modules per routed depth is the env's ``duplicates`` (default 10). The original used as many
      modules per layer as tasks (10 on MNIST-MTL); MNIST-MTL and MIN-MTL here both have 10 tasks, so
      the default matches it (CIFAR-MTL has 20: pass ``--duplicates 20`` to match there).
    * The router's nominal state includes the previous module's output; the tabular agent (the
      original's best, used here) ignores it and sees only task and depth.
    * Updates are batched: one policy update per batch of ``batch_size`` episodes from per (task,
      depth, module) batch means (``index_add``, no per-sample loop), instead of one per sample. The
      Q-value step per batch is ``1 - (1 - q_lr) ** count`` (what ``count`` per-sample steps of size
      ``q_lr`` towards the same mean would give); a module's first visit sets its Q-value, and a
      module never tried yet gets ``delta = 0``. Q-values are Monte-Carlo returns, not bootstrapped.
    * The module optimizer is the harness's (Adam, lr 1e-4 decayed by ``--lr-decay`` per epoch), not
      the original's; the router's lr (``--rn-lr``) stays constant (no decay).
    * Constants the papers do not fix for this setting are ours: router lr 0.01 (WPL) / 0.1
      (REINFORCE), probability floor ``epsilon`` 0.01, Q-value step ``q_lr`` 0.05 per sample.
    * Evaluation routes greedily (argmax of the table).

Behaviour to expect
    The modules see no task input: the route is the only task information. On MNIST-MTL (digit ``t``
    is the positive class of task ``t`` only) modules shared by several tasks learn "no", so balanced
    accuracy stays at 0.5 until the tables give tasks distinct routes; on CIFAR-/MIN-MTL the label is a
    function of the image and accuracy rises under any routing. A larger ``--rn-lr`` settles the tables
    sooner (the tests use 1.0 to do so within a few dozen batches).

Flags of train.py: ``--algo routing_network`` (forces ``max_depth=5``, ``pool="routing_network"`` and no
collapse bonus), ``--rn-learner {wpl,reinforce}``, ``--rn-lr`` (default 0.01 for WPL, 0.1 for
REINFORCE), ``--rn-rho`` (collaboration reward weight, default 0), ``--duplicates`` (modules per depth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agents.config import RoutingNetworkConfig
from agents.trainers.base import BatchCallback, parameter_norm
from routing_env.engine import RoutingEngine

DEFAULT_LR = {"wpl": 0.01, "reinforce": 0.1}
TABLES_FILE = "router_tables.pt"


def project_to_simplex(v: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Euclidean projection of each row ``v[..., :]`` onto ``{p : p >= floor, sum(p) = 1}``."""
    n = v.shape[-1]
    z = 1.0 - n * floor
    if z < 0:
        raise ValueError(f"floor {floor} is too large for {n} actions")
    x = v - floor
    u = x.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - z
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / k > 0).sum(-1, keepdim=True).clamp(min=1)  # the condition holds on a prefix
    theta = css.gather(-1, rho - 1) / rho
    return (x - theta).clamp(min=0) + floor


def wpl_update(
    probs: torch.Tensor, q: torch.Tensor, known: torch.Tensor, lr: float, epsilon: float
) -> torch.Tensor:
    """One WPL step (Abdallah & Lesser 2006) of every row of ``probs``, ``(..., n)``.

    ``q`` holds the Q-values; where ``known`` is False (never tried) an action's delta is 0, and ``V``
    is the policy-weighted mean over the known actions.
    """
    pk = probs * known
    v = (pk * q).sum(-1, keepdim=True) / pk.sum(-1, keepdim=True).clamp(min=1e-12)
    delta = torch.where(known, q - v, torch.zeros_like(q))
    delta = torch.where(delta > 0, delta * (1 - probs), delta * probs)
    return project_to_simplex(probs + lr * delta, epsilon)


class RoutingNetworkTrainer:
    """Per-task tabular routers over the routed depths of a routing-network pool (module docstring).

    Args:
        engine: the training engine; its pool must admit exactly one module at the forced (trunk)
            steps and the same number ``n`` at every routed step (``routing_network_pool_specs``).
        n_tasks: number of tasks (one agent each).
        learner: ``"wpl"`` or ``"reinforce"``.
        lr: the router's learning rate (default :data:`DEFAULT_LR`).
        rho: weight of the collaboration reward (0: none).
        q_lr: per-sample step size of WPL's Q-value estimates.
        epsilon: WPL's probability floor (exploration); must be < 1 / n.
        seed: seeds the route sampling.
    """

    def __init__(
        self,
        engine: RoutingEngine,
        n_tasks: int,
        learner: str = "wpl",
        lr: float | None = None,
        rho: float = 0.0,
        q_lr: float = 0.05,
        epsilon: float = 0.01,
        seed: int = 0,
    ) -> None:
        if learner not in DEFAULT_LR:
            raise ValueError(f"learner must be one of {tuple(DEFAULT_LR)}, got {learner!r}")
        self.engine, self.n_tasks, self.learner = engine, int(n_tasks), learner
        self.lr = float(DEFAULT_LR[learner] if lr is None else lr)
        self.rho, self.q_lr, self.epsilon = float(rho), float(q_lr), float(epsilon)
        if self.lr <= 0 or self.rho < 0 or not 0 < self.q_lr <= 1:
            raise ValueError(f"need lr > 0, rho >= 0, 0 < q_lr <= 1; got {self.lr}, {self.rho}, {self.q_lr}")
        pool, depth = engine.pool, engine.max_depth
        allowed = pool.step_allowed(depth)[:, : pool.n_modules]  # PASS left out: never chosen
        self.forced: dict[int, int] = {}
        routed_steps, routed_actions = [], []
        for k in range(depth):
            ids = allowed[k].nonzero().flatten()
            if ids.numel() == 1:
                self.forced[k] = int(ids[0])
            else:
                routed_steps.append(k)
                routed_actions.append(ids)
        widths = {int(ids.numel()) for ids in routed_actions}
        if len(widths) > 1 or 0 in widths:
            raise ValueError(f"every routed step needs the same number (>= 2) of modules, got {widths}")
        self.n = widths.pop() if widths else 1
        self.routed_steps = routed_steps
        self.depth_of_step = {k: d for d, k in enumerate(routed_steps)}
        dev = engine.device
        # (R, n): the action id of module j of routed depth d.
        self.step_actions = (
            torch.stack(routed_actions).to(dev) if routed_actions else torch.zeros(0, 1, dtype=torch.long)
        )
        shape = (self.n_tasks, len(routed_steps), self.n)
        if learner == "wpl":
            self.table = torch.full(shape, 1.0 / self.n, device=dev)  # probabilities
            if self.n * self.epsilon >= 1:
                raise ValueError(f"epsilon={epsilon} leaves no room for learning with {self.n} modules")
        else:
            self.table = torch.zeros(shape, device=dev)  # logits
        self.q = torch.zeros(shape, device=dev)
        self.q_known = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.generator = torch.Generator(device=dev).manual_seed(int(seed))
        self.updates = 0

    # ----------------------------------------------------------------- policy
    @property
    def probs(self) -> torch.Tensor:
        """``(n_tasks, routed depths, n)``: every agent's policy."""
        if self.learner == "wpl":
            return self.table
        e = (self.table - self.table.amax(-1, keepdim=True)).exp()  # softmax; torch's is slow on
        return e / e.sum(-1, keepdim=True)  # tiny last dims on CPU (ms per call)

    def _choose(self, tasks: torch.Tensor, d: int, sample: bool) -> torch.Tensor:
        """Module index in ``[0, n)`` for each episode at routed depth ``d``, ``(B,)``."""
        p = self.probs[tasks, d]  # (B, n)
        if not sample:
            return p.argmax(-1)
        u = torch.rand(p.shape[0], 1, device=p.device, generator=self.generator)
        return (p.cumsum(-1) < u * p.sum(-1, keepdim=True)).sum(-1).clamp(max=self.n - 1)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deterministic routing (argmax of each task's table), for evaluation."""
        k = int(obs["step"][0])
        if k in self.forced:
            return torch.full_like(obs["task"], self.forced[k])
        d = self.depth_of_step[k]
        return self.step_actions[d][self._choose(obs["task"], d, sample=False)]

    # ----------------------------------------------------------------- training
    def learn_epoch(self, n_batches: int, after_batch: BatchCallback) -> int:
        engine = self.engine
        for done in range(1, n_batches + 1):
            engine.begin_batch()
            tasks = engine.tasks
            choices = []
            out = None
            for k in range(engine.max_depth):
                if k in self.forced:
                    actions = torch.full_like(tasks, self.forced[k])
                else:
                    d = self.depth_of_step[k]
                    choice = self._choose(tasks, d, sample=True)
                    choices.append(choice)
                    actions = self.step_actions[d][choice]
                out = engine.step(actions)  # the engine trains the modules
            if choices:
                final = out.final["correct"].float() * 2 - 1  # +1 correct, -1 wrong
                self.update(tasks, torch.stack(choices, dim=1), final)
            if after_batch(engine.batch_size):
                return done
        return n_batches

    def returns(self, choices: torch.Tensor, final_reward: torch.Tensor) -> torch.Tensor:
        """``(B, R)`` undiscounted returns: final reward plus the collaboration rewards from each depth."""
        g = final_reward[:, None].expand(-1, choices.shape[1])
        if self.rho == 0:
            return g
        batch, depths = choices.shape
        counts = torch.zeros(depths, self.n, device=choices.device)
        counts.scatter_add_(1, choices.t(), torch.ones_like(choices.t(), dtype=counts.dtype))
        share = counts.gather(1, choices.t()).t() / batch  # (B, R)
        collab = self.rho * share
        return g + collab.flip(1).cumsum(1).flip(1)

    def update(self, tasks: torch.Tensor, choices: torch.Tensor, final_reward: torch.Tensor) -> None:
        """One router update from a batch: ``tasks (B,)``, module indices ``choices (B, R)``, final
        reward ``(B,)``. Batched: per (task, depth, module) sums by ``index_add``."""
        g = self.returns(choices, final_reward.float())  # (B, R)
        depths = choices.shape[1]
        state = tasks[:, None] * depths + torch.arange(depths, device=tasks.device)[None, :]  # (B, R)
        cell = (state * self.n + choices).flatten()
        n_cells = self.table.numel()
        total = torch.zeros(n_cells, device=g.device).index_add_(0, cell, g.flatten())
        count = torch.zeros(n_cells, device=g.device).index_add_(0, cell, torch.ones_like(g.flatten()))
        total, count = total.view_as(self.table), count.view_as(self.table)
        visited = count.sum(-1, keepdim=True) > 0  # (T, R, 1)
        mean = total / count.clamp(min=1)
        if self.learner == "wpl":
            seen = count > 0
            step = 1 - (1 - self.q_lr) ** count  # 0 where unseen
            step = torch.where(self.q_known, step, seen.float())  # a first visit sets Q
            self.q += step * (mean - self.q)
            self.q_known |= seen
            new = wpl_update(self.table, self.q, self.q_known, self.lr, self.epsilon)
            self.table = torch.where(visited, new, self.table)
        else:
            state_total = total.sum(-1, keepdim=True)
            state_count = count.sum(-1, keepdim=True)
            baseline = state_total / state_count.clamp(min=1)
            # sum over samples of A * (onehot(a) - pi) = (total - count*b) - pi * (state_total - n_s*b)
            adv_sum = total - count * baseline
            grad = adv_sum - self.probs * adv_sum.sum(-1, keepdim=True)
            self.table += self.lr * grad / state_count.clamp(min=1)
        self.updates += 1

    def set_epoch(self, epoch: int) -> None:
        pass  # constant router lr (module docstring); the pool's lr decays with the engine's passes

    def router_lr(self, epoch: int) -> float:
        return self.lr

    def health(self) -> dict[str, float]:
        return {"router table norm": parameter_norm([self.table, self.q])}

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner,
            "lr": self.lr,
            "rho": self.rho,
            "table": self.table.cpu(),
            "probs": self.probs.cpu(),
            "q": self.q.cpu(),
            "q_known": self.q_known.cpu(),
            "generator": self.generator.get_state(),
            "updates": self.updates,
            "routed_steps": self.routed_steps,
            "step_actions": self.step_actions.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["learner"] != self.learner or tuple(state["table"].shape) != tuple(self.table.shape):
            raise ValueError(
                f"checkpoint holds a {state['learner']} router of shape {tuple(state['table'].shape)}, "
                f"this run a {self.learner} one of shape {tuple(self.table.shape)}"
            )
        dev = self.table.device
        self.table = state["table"].to(dev)
        self.q = state["q"].to(dev)
        self.q_known = state["q_known"].to(dev)
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])

    def save(self, folder: Path) -> None:
        torch.save(self.state_dict(), Path(folder) / TABLES_FILE)

    def load(self, folder: Path) -> None:
        self.load_state_dict(torch.load(Path(folder) / TABLES_FILE, weights_only=False))

    def weights(self) -> dict[str, Any]:
        return self.state_dict()  # the tables are the router; no optimizer state besides them

    def load_weights(self, weights: dict[str, Any]) -> None:
        self.load_state_dict(weights)


def build(
    env: Any, seed: int = 0, routing_network: RoutingNetworkConfig | None = None
) -> RoutingNetworkTrainer:
    """The trainer of ``--algo routing_network`` on the training env."""
    rn = routing_network or RoutingNetworkConfig()
    n_tasks = int(env.observation_space["task"].n)
    return RoutingNetworkTrainer(env.engine, n_tasks, rn.learner, rn.lr, rn.rho, seed=seed)
