"""The shared pool of modules the router builds networks from (LRN paper, section 5.2).

Modules come in *banks*: the ``duplicates`` copies of one kind of module (same input and output type)
are stored as one batched parameter tensor, so a step can run a whole bank in one kernel. Every module
carries typed input and output shapes; which module may follow which, and at which step, is derived
from those types alone (see :class:`ModulePool`), so a new kind of module needs no change to the env.

How a bank runs on a batch where each sample picked one duplicate (or none):

* ``dense``: every duplicate runs on every sample as one wide layer, then each sample keeps its own
  duplicate's slice. ``duplicates`` times the arithmetic, but a fixed handful of kernels and no
  host-device synchronisation (measured on an H200: 5.4 s against 20 s per MNIST-MTL epoch for one
  launch per chosen module).
* ``gathered``: convolutions run each sample through its own duplicate's weights, gathered per sample,
  as one grouped convolution (``groups=B``): no wasted arithmetic and no host sync. In fp32 cuDNN runs
  it as one small kernel per sample, not on tensor cores (the H100 profile in ``results/bench/``).
* ``gathered_nhwc``: the same grouped convolution in channels-last layout, for which cuDNN may choose
  other kernels (``scripts/benchmark.py --banks`` measures whether they are faster).
* ``patches``: convolutions as one batched matrix product per bank over the unfolded 3x3 patches, each
  sample with its own duplicate's weight matrix: tensor cores (TF32, or bf16 under autocast), and the
  patches (9x the input) are rebuilt in the backward pass rather than kept.
* ``grouped_gemm``: convolutions as one grouped matrix product per bank (``torch._grouped_mm``): the
  samples sorted by duplicate, their unfolded 3x3 patches as rows, each duplicate's weight one group, the
  group sizes on the device. On a Hopper or Blackwell GPU that is one CUTLASS kernel on bf16 tensor cores
  with no host sync; it runs in bf16 in either precision (``torch._grouped_mm``'s other dtypes, and other
  GPUs, loop over the groups with a host sync, which no CUDA graph can hold). On a CPU it runs in the
  input's dtype.
* ``grouped``: one call per duplicate that was picked, on its sub-batch. No wasted arithmetic but a
  host sync per bank: fastest on a CPU.

Linear banks run dense in every mode but ``grouped``: at a batch of 128 a linear bank is bound by
reading its weights, which every mode reads once per call (a per-sample gathered weight would be ``B``
copies of the layer). What makes them cheap is running each such bank once per batch
(:class:`routing_env.network.RoutePlan`). Outputs are normalised after each sample has kept its own
duplicate's output, so the norms do ``1 / duplicates`` of the dense layer's work. A bank of one
duplicate (the static network's) runs as a plain layer in every mode but ``grouped``.

All compute the same function; ``tests/test_modules.py`` checks outputs and gradients agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BANK_MODES = ("dense", "gathered", "gathered_nhwc", "patches", "grouped_gemm", "grouped")  # +"compact"


@dataclass(frozen=True)
class TensorType:
    """A named activation type: modules connect where one's output type is the next one's input type.
    The name keeps types apart that happen to share a shape (a 32-channel image and conv features)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BankSpec:
    """One kind of module and how many duplicates of it the pool holds.

    Attributes:
        name: the kind's name, e.g. ``"hidden_conv"``; module ``j`` of the bank is ``"hidden_conv[j]"``.
        layer: ``"conv"`` (3x3, stride 1, padding 1) or ``"linear"`` (input flattened).
        in_type: the activation type the module reads.
        out_type: the activation type it writes.
        duplicates: how many independent copies the pool holds.
        norm: ``"instance"`` (after convs), ``"layer"`` (after hidden FCs) or ``None`` (heads); a norm
            is followed by ReLU.
        steps: restrict the bank to these steps (e.g. per-depth module sets of the original routing
            network); ``None`` allows every step its types allow.
    """

    name: str
    layer: str
    in_type: TensorType
    out_type: TensorType
    duplicates: int
    norm: str | None = None
    steps: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ActivationTypes:
    """The activation types of the pools built here: the image, conv features, FC features, logits."""

    image: TensorType
    conv: TensorType
    fc: TensorType
    logits: TensorType

    @classmethod
    def of(
        cls, image_shape: tuple[int, int, int], n_classes: int, conv_channels: int, fc_width: int
    ) -> ActivationTypes:
        _, height, width = image_shape
        return cls(
            TensorType("image", tuple(image_shape)),
            TensorType("conv", (conv_channels, height, width)),
            TensorType("fc", (fc_width,)),
            TensorType("logits", (n_classes,)),
        )


def lrn_pool_specs(
    image_shape: tuple[int, int, int],
    n_classes: int,
    duplicates: int = 10,
    conv_channels: int = 32,
    fc_width: int = 256,
) -> list[BankSpec]:
    """The LRN paper's pool (section 5.2), each kind ``duplicates`` times.

    input conv (C->32), hidden conv (32->32), hidden FC (32*H*W->256), hidden FC (256->256), output head
    from conv features (32*H*W->K), output head from FC features (256->K).
    """
    if duplicates < 1:
        raise ValueError(f"duplicates must be >= 1, got {duplicates}")
    t = ActivationTypes.of(image_shape, n_classes, conv_channels, fc_width)
    image, conv, vec, logits = t.image, t.conv, t.fc, t.logits
    d = duplicates
    return [
        BankSpec("input_conv", "conv", image, conv, d, "instance"),
        BankSpec("hidden_conv", "conv", conv, conv, d, "instance"),
        BankSpec("fc_from_conv", "linear", conv, vec, d, "layer"),
        BankSpec("hidden_fc", "linear", vec, vec, d, "layer"),
        BankSpec("head_from_conv", "linear", conv, logits, d, None),
        BankSpec("head_from_fc", "linear", vec, logits, d, None),
    ]


def static_pool_specs(
    image_shape: tuple[int, int, int],
    n_classes: int,
    n_tasks: int,
    conv_channels: int = 32,
    fc_width: int = 256,
) -> list[BankSpec]:
    """One fixed network of LRN's module types: input conv, hidden conv, two FC layers, and a head per
    task (the static baseline); with ``max_depth=5`` the only route is ``[0, 1, 2, 3, 4 + task]``."""
    t = ActivationTypes.of(image_shape, n_classes, conv_channels, fc_width)
    image, conv, vec, logits = t.image, t.conv, t.fc, t.logits
    vec2 = TensorType("fc2", (fc_width,))  # its own type, so the route's order is fixed
    return [
        BankSpec("input_conv", "conv", image, conv, 1, "instance", steps=(0,)),
        BankSpec("hidden_conv", "conv", conv, conv, 1, "instance", steps=(1,)),
        BankSpec("fc_from_conv", "linear", conv, vec, 1, "layer", steps=(2,)),
        BankSpec("hidden_fc", "linear", vec, vec2, 1, "layer", steps=(3,)),
        BankSpec("task_head", "linear", vec2, logits, n_tasks, None, steps=(4,)),
    ]


def routing_network_pool_specs(
    image_shape: tuple[int, int, int],
    n_classes: int,
    n_modules_per_depth: int = 10,
    conv_channels: int = 32,
    fc_width: int = 256,
) -> list[BankSpec]:
    """The original routing network (Rosenbaum et al. 2017) with LRN's module types (``max_depth=5``).

    A fixed shared trunk (input conv at step 0, hidden conv at step 1, one copy each), then three
    routed fully-connected depths, each with its own ``n_modules_per_depth`` modules: step 2
    ``fc_from_conv`` (32*H*W->256), step 3 ``hidden_fc`` (256->256, writing its own type so it can stand
    nowhere else), step 4 ``head`` (256->K). Build its :class:`ModulePool` with ``allow_pass=False``
    (as :func:`routing_env.build.build_pool` does): else PASS could skip the hidden conv at step 1.
    """
    if n_modules_per_depth < 1:
        raise ValueError(f"n_modules_per_depth must be >= 1, got {n_modules_per_depth}")
    t = ActivationTypes.of(image_shape, n_classes, conv_channels, fc_width)
    image, conv, vec, logits = t.image, t.conv, t.fc, t.logits
    vec2 = TensorType("rn_fc2", (fc_width,))
    n = n_modules_per_depth
    return [
        BankSpec("input_conv", "conv", image, conv, 1, "instance", steps=(0,)),
        BankSpec("hidden_conv", "conv", conv, conv, 1, "instance", steps=(1,)),
        BankSpec("fc_from_conv", "linear", conv, vec, n, "layer", steps=(2,)),
        BankSpec("hidden_fc", "linear", vec, vec2, n, "layer", steps=(3,)),
        BankSpec("head", "linear", vec2, logits, n, None, steps=(4,)),
    ]


def _uniform_(tensor: torch.Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    # PyTorch's default init for Conv2d/Linear (kaiming_uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), +).
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


class _PerSampleConv3x3(torch.autograd.Function):
    """A 3x3 convolution (stride 1, padding 1) of each sample with its own weights, as one batched matrix
    product over the unfolded patches. The patches (9x the input) are rebuilt in the backward pass rather
    than kept between the passes: the same memory as a convolution keeps.

    ``h`` ``(B, C_in, H, W)``, ``weight`` ``(B, C_out, C_in * 9)``, ``bias`` ``(B, C_out)`` ->
    ``(B, C_out, H, W)``. Under autocast the products run in its dtype (the backward too).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = h.shape
        patches = F.unfold(h, 3, padding=1)  # (B, C_in * 9, H * W)
        out = torch.baddbmm(bias.unsqueeze(2), weight, patches)  # (B, C_out, H * W)
        ctx.save_for_backward(h, weight)
        return out.view(batch, -1, height, width)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        batch, _, height, width = h.shape
        grad = grad.reshape(batch, -1, height * width)  # (B, C_out, H * W)
        h, weight = h.to(grad.dtype), weight.to(grad.dtype)  # the forward's product dtype (autocast's)
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad, F.unfold(h, 3, padding=1).transpose(1, 2))  # (B, C_out, C_in * 9)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(2)
        if ctx.needs_input_grad[0]:
            grad_h = F.fold(torch.bmm(weight.transpose(1, 2), grad), (height, width), 3, padding=1)
        return grad_h, grad_weight, grad_bias


class ModuleBank(nn.Module):
    """The ``duplicates`` copies of one kind of module, as batched parameters."""

    def __init__(self, spec: BankSpec, generator: torch.Generator | None = None) -> None:
        super().__init__()
        norms = {"conv": (None, "instance"), "linear": (None, "layer")}
        if spec.layer not in norms:
            raise ValueError(f"unknown layer {spec.layer!r} in bank {spec.name!r}")
        if spec.norm not in norms[spec.layer]:
            raise ValueError(
                f"unknown norm {spec.norm!r} for a {spec.layer} layer in bank {spec.name!r}; "
                f"expected one of {norms[spec.layer]}"
            )
        self.spec = spec
        d = spec.duplicates
        self.out_shape = spec.out_type.shape
        if spec.layer == "conv":
            in_channels, out_channels = spec.in_type.shape[0], spec.out_type.shape[0]
            fan_in = in_channels * 9
            self.weight = nn.Parameter(torch.empty(d, out_channels, in_channels, 3, 3))
        else:
            fan_in = math.prod(spec.in_type.shape)
            out_channels = math.prod(spec.out_type.shape)
            self.weight = nn.Parameter(torch.empty(d, out_channels, fan_in))
        self.bias = nn.Parameter(torch.empty(d, out_channels))
        _uniform_(self.weight, fan_in, generator)
        _uniform_(self.bias, fan_in, generator)
        if spec.norm is not None:
            self.norm_weight = nn.Parameter(torch.ones(d, out_channels))
            self.norm_bias = nn.Parameter(torch.zeros(d, out_channels))

    def forward(self, h: torch.Tensor, dup: torch.Tensor, active: torch.Tensor, mode: str) -> torch.Tensor:
        """Run each active sample through its duplicate.

        Args:
            h: inputs, ``(B, *in_shape)``.
            dup: the duplicate each sample picked, ``(B,)`` int64 (ignored where not ``active``).
            active: which samples picked this bank, ``(B,)`` bool.
            mode: one of :data:`BANK_MODES` (module docstring).

        Returns:
            ``(B, *out_shape)``; rows of inactive samples are finite but meaningless.
        """
        if mode not in BANK_MODES:
            raise ValueError(f"unknown dispatch mode {mode!r}; expected one of {BANK_MODES}")
        dup = dup.clamp(0, self.spec.duplicates - 1)
        if mode == "grouped":
            return self._grouped(h, dup, active)
        if self.spec.layer == "linear":
            return self._dense_linear(h, dup)
        if mode == "dense" or self.spec.duplicates == 1:  # one duplicate: dense is a plain convolution
            z = self._dense_conv(h, dup)
        elif mode == "patches":
            z = _PerSampleConv3x3.apply(h, self.weight.flatten(2)[dup], self.bias[dup])
        elif mode == "grouped_gemm":
            z = self._grouped_gemm_conv(h, dup)
        else:
            z = self._gathered_conv(h, dup, channels_last=mode == "gathered_nhwc")
        return self._conv_norm_relu(z, dup)

    def _dense_conv(self, h: torch.Tensor, dup: torch.Tensor) -> torch.Tensor:
        batch, d = h.shape[0], self.spec.duplicates
        z = F.conv2d(h, self.weight.flatten(0, 1), self.bias.flatten(), padding=1)  # (B, d*C, H, W)
        if d == 1:
            return z
        rows = torch.arange(batch, device=h.device)
        return z.view(batch, d, -1, *z.shape[2:])[rows, dup]  # (B, C, H, W)

    def _gathered_conv(self, h: torch.Tensor, dup: torch.Tensor, channels_last: bool) -> torch.Tensor:
        batch = h.shape[0]
        weight = self.weight[dup].flatten(0, 1)  # (B*C_out, C_in, 3, 3): each sample's own duplicate
        x = h.reshape(1, -1, *h.shape[2:])  # (1, B*C_in, H, W)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        z = F.conv2d(x, weight, self.bias[dup].flatten(), padding=1, groups=batch)
        return z.contiguous().view(batch, -1, *z.shape[2:])  # (B, C_out, H, W)

    def _grouped_gemm_conv(self, h: torch.Tensor, dup: torch.Tensor) -> torch.Tensor:
        """The ``grouped_gemm`` convolution (module docstring): ``h`` ``(B, C_in, H, W)`` -> ``(B, C_out, H,
        W)`` in ``h``'s dtype."""
        batch, _, height, width = h.shape
        pixels = height * width
        order = torch.argsort(dup, stable=True)  # (B,): the samples grouped by duplicate
        # (d,) samples per duplicate; bincount (and one_hot's checks) would read the device on the host
        counts = dup.new_zeros(self.spec.duplicates).scatter_add_(0, dup, torch.ones_like(dup))
        ends = (counts.cumsum(0) * pixels).to(torch.int32)  # (d,): each group's last row + 1
        dtype = torch.bfloat16 if h.is_cuda else h.dtype  # CUTLASS's grouped kernel is bf16's
        patches = F.unfold(h[order].to(dtype), 3, padding=1)  # (B, C_in * 9, H * W)
        rows = patches.transpose(1, 2).reshape(batch * pixels, -1)  # (B * H * W, C_in * 9)
        weight = self.weight.flatten(2).to(dtype)  # (d, C_out, C_in * 9)
        out_channels = weight.shape[1]
        # Rows of 16-byte multiples, as the kernel needs (an input conv's 9 or 27 inputs; few outputs)
        pad_in, pad_out = -rows.shape[1] % 8, -out_channels % 8
        rows, weight = F.pad(rows, (0, pad_in)), F.pad(weight, (0, pad_in, 0, pad_out))
        out = torch._grouped_mm(rows, weight.transpose(1, 2), offs=ends)[
            :, :out_channels
        ]  # (B * H * W, C_out)
        out = out.reshape(batch, pixels, -1)[order.argsort()].transpose(1, 2).to(h.dtype)  # (B, C_out, H * W)
        return (out + self.bias[dup][:, :, None].to(h.dtype)).reshape(batch, -1, height, width)

    def _dense_linear(self, h: torch.Tensor, dup: torch.Tensor) -> torch.Tensor:
        batch, d = h.shape[0], self.spec.duplicates
        z = F.linear(h.flatten(1), self.weight.flatten(0, 1), self.bias.flatten())  # (B, d*O)
        if d > 1:
            z = z.view(batch, d, -1)[torch.arange(batch, device=h.device), dup]  # (B, O)
        return self._layer_norm_relu(z, dup).reshape(batch, *self.out_shape)

    def _grouped(self, h: torch.Tensor, dup: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        out = h.new_zeros((h.shape[0], *self.out_shape))
        chosen = torch.where(active, dup, -1)
        for j in torch.unique(chosen).tolist():  # a host sync; cheap on the CPU this mode is for
            if j < 0:
                continue
            idx = (chosen == j).nonzero(as_tuple=True)[0]
            x = h[idx]
            if self.spec.layer == "conv":
                z = self._conv_norm_relu(F.conv2d(x, self.weight[j], self.bias[j], padding=1), dup[idx])
            else:
                z = self._layer_norm_relu(F.linear(x.flatten(1), self.weight[j], self.bias[j]), dup[idx])
            out = out.index_put((idx,), z.reshape(idx.shape[0], *self.out_shape))
        return out

    def _conv_norm_relu(self, z: torch.Tensor, dup: torch.Tensor) -> torch.Tensor:
        """Instance norm with each sample's duplicate's affine parameters, then ReLU: ``z`` ``(n, C, H,
        W)``. One norm over ``(1, n*C, H, W)`` with per-(sample, channel) weights is exactly that."""
        if self.spec.norm is None:
            return z
        n, c = z.shape[:2]
        z = F.instance_norm(
            z.reshape(1, n * c, *z.shape[2:]),
            weight=self.norm_weight[dup].flatten(),
            bias=self.norm_bias[dup].flatten(),
        )
        return F.relu(z).view(n, c, *z.shape[2:])

    def _layer_norm_relu(self, z: torch.Tensor, dup: torch.Tensor) -> torch.Tensor:
        """Layer norm, each sample's duplicate's affine parameters, ReLU: ``z`` ``(n, O)``."""
        if self.spec.norm is None:
            return z
        z = F.layer_norm(z, z.shape[-1:])
        return F.relu(torch.addcmul(self.norm_bias[dup], z, self.norm_weight[dup]))


class ModulePool(nn.Module):
    """All banks of modules, with the tables that say which module may come next.

    Module ids run bank by bank: bank 0's duplicates are ids ``0 .. d0-1``, and so on; the action
    ``n_modules`` is PASS. An episode of ``max_depth`` steps builds a network:

    * step 0 picks a module that reads the image type;
    * steps ``1 .. max_depth-2`` pick a module that reads the current activation type and writes
      neither the image type nor a logits type, and that this network does not use yet, or PASS;
    * the last step picks a module that reads the current type and writes a logits type.

    A bank's ``steps`` further restricts where it may stand; ``allow_pass=False`` admits PASS nowhere (the
    original routing network's fixed-depth routes). PASS stays an action id either way.
    """

    def __init__(
        self,
        specs: Sequence[BankSpec],
        image_type: TensorType,
        seed: int | None = None,
        allow_pass: bool = True,
    ) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a module pool needs at least one bank")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.specs = list(specs)
        self.banks = nn.ModuleList([ModuleBank(s, generator) for s in self.specs])
        self.image_type = image_type
        self.allow_pass = bool(allow_pass)
        types = [image_type]
        for s in self.specs:
            for t in (s.in_type, s.out_type):
                if t not in types:
                    types.append(t)
        self.types = types
        self.type_index = {t: i for i, t in enumerate(types)}
        bank_of, dup_of = [], []
        for b, s in enumerate(self.specs):
            bank_of += [b] * s.duplicates
            dup_of += list(range(s.duplicates))
        self.n_modules = len(bank_of)
        self.n_actions = self.n_modules + 1
        self.pass_action = self.n_modules
        self.bank_offsets = [bank_of.index(b) for b in range(len(self.specs))]
        # Per-action tables; PASS gets bank -1 and keeps the current type.
        self.register_buffer("action_bank", torch.tensor(bank_of + [-1]), persistent=False)
        self.register_buffer("action_dup", torch.tensor(dup_of + [0]), persistent=False)
        in_t = [self.type_index[self.specs[b].in_type] for b in bank_of]
        out_t = [self.type_index[self.specs[b].out_type] for b in bank_of]
        self.register_buffer("module_in_type", torch.tensor(in_t), persistent=False)
        self.register_buffer("module_out_type", torch.tensor(out_t), persistent=False)

    @property
    def module_names(self) -> list[str]:
        return [f"{s.name}[{j}]" for s in self.specs for j in range(s.duplicates)]

    @property
    def action_names(self) -> list[str]:
        return self.module_names + ["PASS"]

    def is_logits_type(self, t: TensorType) -> bool:
        return t.name == "logits"

    def step_allowed(self, max_depth: int) -> torch.Tensor:
        """``(max_depth, n_actions)`` bool: which actions each step admits before shapes and reuse."""
        allowed = torch.zeros(max_depth, self.n_actions, dtype=torch.bool)
        for b, s in enumerate(self.specs):
            reads_image = s.in_type == self.image_type
            writes_logits = self.is_logits_type(s.out_type)
            for k in range(max_depth):
                if k == 0:
                    ok = reads_image and not writes_logits
                elif k == max_depth - 1:
                    ok = writes_logits and not reads_image
                else:
                    ok = not reads_image and not writes_logits and s.out_type != self.image_type
                if s.steps is not None and k not in s.steps:
                    ok = False
                if ok:
                    start = self.bank_offsets[b]
                    allowed[k, start : start + s.duplicates] = True
        allowed[1 : max_depth - 1, self.pass_action] = self.allow_pass
        return allowed

    def bank_steps(self, max_depth: int) -> list[list[int]]:
        """For each step, the banks that may run at it (static: no need to look at the actions)."""
        allowed = self.step_allowed(max_depth)[:, : self.n_modules]
        return [
            [b for b in range(len(self.specs)) if allowed[k, self.bank_offsets[b]]] for k in range(max_depth)
        ]
