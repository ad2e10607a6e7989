"""PPO's update as one program per minibatch, for SB3's PPO and sb3-contrib's MaskablePPO.

SB3's ``train()`` spends a minibatch's time in Python and kernel launches: distribution objects, an eager
router forward and backward, ``clip_grad_norm_``, Adam, and four ``.item()`` reads that wait for the device.
:class:`MinibatchUpdate` writes the same update as one function of the minibatch's indices into the
rollout buffer: gather, router forward, masked log-probabilities and entropies straight from the logits,
the advantage normalisation, clipped surrogate, value loss, entropy loss, backward, gradient clipping by the
global norm and the optimizer's step, and the numbers SB3 logs, left on the device. On a GPU it replays as a
CUDA graph per minibatch shape (:class:`agents.cuda_graph.CapturedProgram`; the optimizer is made
capturable, its learning rate a device tensor, so the per-epoch schedule needs no new capture); on a CPU
the same function runs eagerly. :class:`DevicePPOUpdate` puts it in ``train()`` and reads the logged
numbers once per rollout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.type_aliases import Schedule

from agents.cuda_graph import CapturedProgram
from agents.policy import RouterPolicy
from agents.rollout_buffer import DeviceRolloutBuffer
from routing_env.compiling import Compiled

# What each minibatch update leaves on the device, in order (SB3's train/ log keys).
STATS = ("policy_gradient_loss", "value_loss", "entropy_loss", "clip_fraction", "approx_kl", "loss")


class MinibatchUpdate:
    """One PPO update of ``policy`` on one minibatch of ``buffer``, as SB3's ``train()`` does it, as one
    program (module docstring).

    Args:
        policy: the router policy; its optimizer takes the step.
        buffer: the rollout buffer the minibatches come from (its storage persists across rollouts).
        ent_coef: entropy coefficient.
        vf_coef: value-loss coefficient.
        max_grad_norm: gradient clipping by the global norm.
        normalize_advantage: normalise the advantages per minibatch (SB3's).
        clip_value: clip the value prediction around the old value (``clip_range_vf`` is set).
        capture: replay CUDA graphs (the policy is on a CUDA device).
        compile: compute the losses through torch.compile (:class:`routing_env.compiling.Compiled`); the
            backward, the clipping and the optimizer's step stay as they are.
        self_imitation: weight of a self-imitation loss (Oh et al. 2018), ``-mean(max(A, 0) * log pi(a))``
            on the advantages before normalisation: the actions of episodes that beat their baseline are
            imitated without PPO's ratio or clipping, a gradient that does not vanish with ``pi(a)``
            (:attr:`agents.config.AgentConfig.self_imitation`); 0: none.
    """

    def __init__(
        self,
        policy: RouterPolicy,
        buffer: DeviceRolloutBuffer,
        ent_coef: float,
        vf_coef: float,
        max_grad_norm: float,
        normalize_advantage: bool,
        clip_value: bool,
        capture: bool,
        compile: bool = False,
        self_imitation: float = 0.0,
    ) -> None:
        self.policy, self.buffer, self.optimizer = policy, buffer, policy.optimizer
        self.ent_coef, self.vf_coef, self.max_grad_norm = (
            float(ent_coef),
            float(vf_coef),
            float(max_grad_norm),
        )
        self.normalize_advantage, self.clip_value = bool(normalize_advantage), bool(clip_value)
        self.self_imitation = float(self_imitation)
        self.capture = capture and _make_capturable(self.optimizer, buffer.device)
        # the learning-rate tensors the captured optimizer step reads
        self.rates = [group["lr"] for group in self.optimizer.param_groups] if self.capture else []
        # 1 - clip_range, 1 + clip_range, clip_range, clip_range_vf: device scalars the graphs read
        self.ranges = torch.zeros(4, device=buffer.device)
        self.flat = buffer.flat()
        self.losses = Compiled(self._losses, compile, "the PPO minibatch losses")
        self.program = CapturedProgram(
            self._update,
            self.capture,
            before_capture=lambda: self.optimizer.zero_grad(set_to_none=True),
            clone_outputs=False,
        )

    def fits(self, policy: RouterPolicy, buffer: DeviceRolloutBuffer, settings: tuple) -> bool:
        """Whether this program is still the update of ``policy`` on ``buffer`` with ``settings``."""
        return (
            policy is self.policy
            and policy.optimizer is self.optimizer
            and buffer is self.buffer
            and (settings == self.settings)
        )

    @property
    def settings(self) -> tuple:
        return (
            self.ent_coef, self.vf_coef, self.max_grad_norm, self.normalize_advantage, self.clip_value,
            self.self_imitation,
        )  # fmt: skip

    def set_ranges(self, clip_range: float, clip_range_vf: float | None) -> None:
        # Each bound from Python's double, as SB3's clamp and comparison convert them (one fill each).
        for i, value in enumerate((1 - clip_range, 1 + clip_range, clip_range, clip_range_vf or 0.0)):
            self.ranges[i].fill_(value)

    def adopt_learning_rate(self) -> None:
        """SB3's learning-rate update writes a float into each parameter group; a captured step reads the
        group's device tensor, so move the float into it."""
        if not self.capture:
            return
        for group, rate in zip(self.optimizer.param_groups, self.rates, strict=True):
            if group["lr"] is not rate:
                rate.fill_(float(group["lr"]))
                group["lr"] = rate

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """Update on the transitions ``indices`` ``(n,)``; returns :data:`STATS` ``(6,)`` (on a GPU the
        graph's own tensor, valid until the next call)."""
        return self.program(indices)[0]

    def _update(self, indices: torch.Tensor) -> tuple[torch.Tensor]:
        loss, stats = self.losses(indices)
        self.optimizer.zero_grad(set_to_none=True)  # Python only: in a graph the backward writes fresh grads
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return (stats,)

    def _losses(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SB3's loss on the transitions ``indices`` and :data:`STATS` ``(6,)``."""
        flat = self.flat
        obs = {key: value[indices] for key, value in flat["obs"].items()}
        old_values, old_log_prob = flat["values"][indices], flat["log_probs"][indices]
        advantages, returns = flat["advantages"][indices], flat["returns"][indices]
        values, log_prob, entropy = self.policy.evaluate_tensors(obs, flat["actions"][indices])
        imitation = -(advantages.clamp_min(0) * log_prob).mean() if self.self_imitation else 0.0
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        low, high, clip_range, clip_range_vf = self.ranges.unbind()
        ratio = torch.exp(log_prob - old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, low, high)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
        if self.clip_value:
            values = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
        value_loss = F.mse_loss(returns, values)
        entropy_loss = -torch.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        if self.self_imitation:
            loss = loss + self.self_imitation * imitation
        with torch.no_grad():
            clip_fraction = torch.mean((torch.abs(ratio - 1) > clip_range).float())
            log_ratio = log_prob - old_log_prob
            approx_kl = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
            stats = torch.stack([policy_loss, value_loss, entropy_loss, clip_fraction, approx_kl, loss])
        return loss, stats


def _make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Make ``optimizer`` safe to step inside a CUDA graph: ``capturable`` groups with the learning rate a
    device tensor, and the step counts on the device. False when it has no ``capturable`` option."""
    if not all("capturable" in group for group in optimizer.param_groups):
        return False
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")) and state["step"].device != device:
            state["step"] = state["step"].to(device, torch.float32)
    # torch warns once when a capturable optimizer steps outside a capture; the eager warm-up steps before
    # each capture are meant to.
    optimizer._warned_capturable_if_run_uncaptured = True
    return True


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """SB3's ``explained_variance(values, returns)`` as a device scalar: ``1 - Var[returns - values] /
    Var[returns]``, NaN where the returns do not vary."""
    variance = returns.var(correction=0)
    return torch.where(variance == 0, torch.nan, 1 - (returns - values).var(correction=0) / variance)


class DevicePPOUpdate:
    """Mixin for SB3's ``PPO`` and sb3-contrib's ``MaskablePPO`` whose policy is :class:`RouterPolicy` and
    whose rollout buffer is a :class:`DeviceRolloutBuffer`: ``train()`` runs every minibatch as
    :class:`MinibatchUpdate` and reads the numbers SB3 logs (the same keys and values as SB3's
    ``train()``) once per rollout.

    Its switches ``fused_update`` and ``cuda_graph`` are constructor arguments of
    :class:`agents.rollout.DeviceRollouts`, which it comes with. The parent's ``train()`` runs where the
    program does not cover the settings: ``fused_update=False`` (the reference), ``target_kl`` set (early
    stopping needs a host read per minibatch), a minibatch of one transition (SB3's PPO skips the
    normalisation there, MaskablePPO divides by a NaN std), another policy or rollout buffer.
    """

    fused_update: bool
    cuda_graph: bool
    torch_compile: bool
    _minibatch_update: MinibatchUpdate | None = None  # built on first use; not saved

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_minibatch_update"]  # CUDA graphs and device scratch

    def get_parameters(self) -> dict[str, dict]:
        # The optimizer as the policy built it: a learning rate made a device tensor for the captured
        # update is saved as the float it holds, and capturable as the policy's optimizer_kwargs say.
        params = super().get_parameters()
        optimizer = params.get("policy.optimizer")
        if optimizer is not None:
            capturable = bool(self.policy.optimizer_kwargs.get("capturable", False))
            for group in optimizer["param_groups"]:
                if torch.is_tensor(group.get("lr")):
                    group["lr"] = float(group["lr"])
                if "capturable" in group:
                    group["capturable"] = capturable
        return params

    def _fused_update_applies(self) -> bool:
        buffer = self.rollout_buffer
        if not (self.fused_update and isinstance(buffer, DeviceRolloutBuffer)):
            return False
        total = buffer.buffer_size * buffer.n_envs
        smallest = min(self.batch_size, total - (total - 1) // self.batch_size * self.batch_size)
        return isinstance(self.policy, RouterPolicy) and self.target_kl is None and smallest > 1

    def _update_program(self) -> MinibatchUpdate:
        settings = (
            float(self.ent_coef),
            float(self.vf_coef),
            float(self.max_grad_norm),
            bool(self.normalize_advantage),
            self.clip_range_vf is not None,
            float(getattr(self, "self_imitation", 0.0)),
        )
        update = self._minibatch_update
        if update is None or not update.fits(self.policy, self.rollout_buffer, settings):
            capture = self.cuda_graph and self.device.type == "cuda"
            update = MinibatchUpdate(
                self.policy,
                self.rollout_buffer,
                *settings[:5],
                capture,
                self.torch_compile,
                self_imitation=settings[5],
            )
            self._minibatch_update = update
        return update

    def train(self) -> None:
        if not self._fused_update_applies():
            if getattr(self, "self_imitation", 0.0):
                raise ValueError(
                    "self_imitation needs the fused PPO update (fused_update=True, no target_kl)"
                )
            return super().train()
        self.policy.set_training_mode(True)
        update = self._update_program()
        self._update_learning_rate(self.policy.optimizer)
        update.adopt_learning_rate()
        clip_range = _value(self.clip_range, self._current_progress_remaining)
        clip_range_vf = _value(self.clip_range_vf, self._current_progress_remaining)
        update.set_ranges(clip_range, clip_range_vf)
        buffer = self.rollout_buffer
        total = buffer.buffer_size * buffer.n_envs
        starts = range(0, total, self.batch_size)
        stats = torch.empty(self.n_epochs, len(starts), len(STATS), device=self.device)
        for epoch in range(self.n_epochs):
            order = buffer.permutation()
            for i, start in enumerate(starts):
                stats[epoch, i] = update(order[start : start + self.batch_size])
            self._n_updates += 1
        variance = explained_variance(buffer.t_values.flatten(), buffer.t_returns.flatten())
        read = torch.cat([stats.flatten(), variance.reshape(1)]).cpu().numpy()  # the one host read
        self._log_update(read[:-1].reshape(stats.shape), float(read[-1]), clip_range, clip_range_vf)

    def _log_update(
        self, stats: np.ndarray, explained_var: float, clip_range: float, clip_range_vf: float | None
    ) -> None:
        """Record what SB3's ``train()`` records: means over every minibatch, approx_kl over the last epoch's,
        the last minibatch's loss."""
        column = {name: stats[..., i] for i, name in enumerate(STATS)}
        for name in ("entropy_loss", "policy_gradient_loss", "value_loss"):
            self.logger.record(f"train/{name}", float(np.mean(column[name])))
        self.logger.record("train/approx_kl", float(np.mean(column["approx_kl"][-1])))
        self.logger.record("train/clip_fraction", float(np.mean(column["clip_fraction"])))
        self.logger.record("train/loss", float(column["loss"][-1, -1]))
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)


def _value(schedule: Schedule | None, progress_remaining: float) -> float | None:
    return None if schedule is None else float(schedule(progress_remaining))
