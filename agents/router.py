"""The LRN router: a conditional transformer over (instance, task, modules chosen so far) that scores
every candidate next module (paper eq. 1), with an attention-pooled critic (eqs. 2-5)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from agents.config import RouterConfig
from agents.cuda_graph import GraphedInference

ATTENTION_BACKENDS = ("auto", "math")


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """The context the router's attention runs in: ``"auto"`` lets torch pick its fastest kernel;
    ``"math"`` forces the plain implementation, the one with second derivatives (TRPO's
    Hessian-vector products differentiate the policy twice; the fused kernels have no double backward)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {name!r}")
    if name == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


@dataclass
class RouterInput:
    """The observation as the router reads it."""

    image: torch.Tensor  # (B, C, H, W) float in [0, 1]
    task: torch.Tensor  # (B,) int64
    route: torch.Tensor  # (B, D) int64; n_actions = not chosen yet
    mask: torch.Tensor  # (B, A) bool: valid next actions


def parse_observation(
    obs: dict[str, torch.Tensor], one_hot: bool = False, normalize_images: bool = True
) -> RouterInput:
    """Read SB3's observation tensors, raw (uint8 image, int ids, as collected) or from a rollout buffer
    (float copies, discrete ids shaped ``(B, 1)``); ``one_hot=True`` reads SB3's *preprocessed*
    observations (image already scaled to [0, 1], Discrete and MultiDiscrete as one-hot).
    ``normalize_images=False``: the image is already normalised (e.g. by VecNormalize); use it as is."""
    batch = obs["image"].shape[0]
    if one_hot:
        image = obs["image"].float()
        # A replay buffer stores Discrete observations as (B, 1), which SB3 one-hots to (B, 1, n).
        task = obs["task"].reshape(batch, -1).argmax(dim=-1)
        depth = obs["step"].shape[-1] - 1
        route = obs["route"].view(batch, depth, -1).argmax(dim=-1)
    else:
        image = obs["image"].float() / 255.0 if normalize_images else obs["image"].float()
        task = obs["task"].reshape(batch).long()
        route = obs["route"].reshape(batch, -1).long()
    mask = obs["action_mask"].reshape(batch, -1) > 0.5
    return RouterInput(image=image, task=task, route=route, mask=mask)


class InstanceEncoder(nn.Module):
    """Two strided convs and an FC layer to ``d_model``; adaptive pooling makes it work for any image
    size (MNIST's 28x28 is below the minimum of SB3's NatureCNN)."""

    def __init__(self, in_channels: int, d_model: int, channels: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(c2 * 16, d_model),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # (B, d)


class LRNRouter(nn.Module):
    """Actor and critic of the LRN router.

    State tokens: ``[instance, task, route_0, ..., route_{D-1}]`` plus learned position embeddings;
    unfilled route positions are padding. A transformer encoder turns them into ``s_hat``. The actor
    is a transformer decoder whose queries are the embeddings of the actions (modules and PASS) and
    whose memory is ``s_hat``; a linear layer scores each query. The critic pools ``s_hat`` with
    attention: ``e_j = W_e s_hat_j``, ``alpha = softmax(e)``, ``V = W_c sum_j alpha_j s_hat_j``.

    Readings of the paper (:class:`agents.config.RouterConfig`): ``decoder_queries="valid"`` lets the
    decoder's queries see only the actions valid now (the paper's router input holds ``l^valid``);
    ``normalize_instance`` layer-normalises the instance token to the scale of the embedding tokens (a
    fresh conv encoder's token is ~20 times smaller, so the image barely reaches the router);
    ``critic_encoder="separate"`` gives the critic its own state encoder (the value loss's gradient,
    several times the policy's at the start, then no longer shapes the actor's encoder).

    Args:
        image_shape: ``(C, H, W)``.
        n_tasks: number of tasks.
        n_actions: modules + PASS.
        max_depth: route length.
        config: the architecture (:class:`agents.config.RouterConfig`).
        attention: the attention kernels (see :func:`attention_backend`); ``"math"`` for algorithms
            that differentiate the policy twice (TRPO).
        static_route: ``(n_tasks, max_depth)`` action ids of the static network's route for each task
            (:func:`routing_env.static_route.static_network_route`); needed with ``config.static_start``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        n_tasks: int,
        n_actions: int,
        max_depth: int,
        config: RouterConfig | None = None,
        attention: str = "auto",
        static_route: torch.Tensor | list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        attention_backend(attention)  # checks the name
        self.attention = attention
        cfg = config or RouterConfig()
        self.config = cfg
        self.n_actions = n_actions
        d = cfg.d_model
        self.instance = InstanceEncoder(image_shape[0], d, tuple(cfg.conv_channels))
        self.task_embedding = nn.Embedding(n_tasks, d)
        # one embedding per module and PASS, shared by route tokens and actor queries; +1 for padding
        self.action_embedding = nn.Embedding(n_actions + 1, d, padding_idx=n_actions)
        self.position = nn.Parameter(torch.zeros(2 + max_depth, d))
        nn.init.normal_(self.position, std=0.02)
        self.instance_norm = nn.LayerNorm(d) if cfg.normalize_instance else None
        self.encoder = _transformer_encoder(cfg)
        dec_layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.d_ff, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.n_decoder_layers)
        self.score = nn.Linear(d, 1)
        self.task_prior: nn.Embedding | None = None
        if cfg.task_prior_std > 0:
            self.task_prior = nn.Embedding(n_tasks, n_actions)  # (n_tasks, A) logit offsets
            nn.init.normal_(self.task_prior.weight, std=cfg.task_prior_std)
        self.instance_prior: nn.Linear | None = None
        if cfg.instance_prior_std > 0:
            # (C * g * g) coarse image features -> (A) logit offsets
            self.instance_prior = nn.Linear(
                image_shape[0] * cfg.instance_prior_grid**2, n_actions, bias=False
            )
            nn.init.normal_(self.instance_prior.weight, std=cfg.instance_prior_std)
        self.max_depth = max_depth
        self.static_prior = _static_prior(cfg.static_start, static_route, n_tasks, max_depth, n_actions)
        self.critic_state: nn.ModuleDict | None = None
        if cfg.critic_encoder == "separate":
            self.critic_state = nn.ModuleDict(
                {
                    "instance": InstanceEncoder(image_shape[0], d, tuple(cfg.conv_channels)),
                    "task_embedding": nn.Embedding(n_tasks, d),
                    "action_embedding": nn.Embedding(n_actions + 1, d, padding_idx=n_actions),
                    "encoder": _transformer_encoder(cfg),
                }
            )
            if cfg.normalize_instance:
                self.critic_state["instance_norm"] = nn.LayerNorm(d)
        self.critic_attention = nn.Linear(d, 1)  # W_e
        self.critic_value = nn.Linear(d, 1)  # W_c
        self._graphed: GraphedInference | None = None

    def arithmetic(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context of the router's body (conv encoder, transformers): bf16 autocast with
        ``precision="bf16"``, else nothing. Autocast's weight cache is off, so that a captured CUDA graph
        or a compiled program holds no cast copy from outside itself."""
        bf16 = self.config.precision == "bf16"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)

    def encode(self, x: RouterInput, for_critic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded state tokens ``(B, T, d)`` and their padding mask ``(B, T)`` (True = padding); with
        ``for_critic``, the critic's own encoding where it has one. With ``precision="bf16"`` the tokens
        are bf16."""
        with self.arithmetic(x.image.device):
            return self._encode(x, for_critic)

    def _encode(self, x: RouterInput, for_critic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.critic_state if for_critic and self.critic_state is not None else self
        batch = x.task.shape[0]
        route = x.route.clamp(0, self.n_actions)
        instance = parts.instance(x.image)  # (B, d)
        if self.config.normalize_instance:
            instance = (parts["instance_norm"] if parts is not self else self.instance_norm)(instance)
        tokens = (
            torch.cat(
                [
                    instance[:, None],  # (B, 1, d)
                    parts.task_embedding(x.task)[:, None],  # (B, 1, d)
                    parts.action_embedding(route),  # (B, D, d)
                ],
                dim=1,
            )
            + self.position[None]
        )  # (B, T, d)
        padding = torch.cat([route.new_zeros(batch, 2, dtype=torch.bool), route == self.n_actions], dim=1)
        with attention_backend(self.attention):
            return parts.encoder(tokens, src_key_padding_mask=padding), padding

    def actor(
        self, states: torch.Tensor, padding: torch.Tensor, task: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits of every action, ``(B, A)``, before masking; ``mask`` ``(B, A)`` (valid actions) limits
        what the decoder's queries attend to when ``decoder_queries="valid"``."""
        queries = self.action_embedding.weight[: self.n_actions]  # (A, d)
        queries = queries[None].expand(states.shape[0], -1, -1)  # (B, A, d)
        query_padding = ~mask if self.config.decoder_queries == "valid" else None
        with attention_backend(self.attention), self.arithmetic(states.device):
            out = self.decoder(
                queries, states, tgt_key_padding_mask=query_padding, memory_key_padding_mask=padding
            )  # (B, A, d)
        logits = self.score(out.float()).squeeze(-1)  # the output layer in fp32 (any precision)
        if self.task_prior is not None or self.static_prior is not None:
            step = (~padding[:, 2:]).sum(1)  # (B,) route steps taken so far (PASS included)
        if self.task_prior is not None:
            prior = self.task_prior(task)  # (B, A)
            if self.config.task_prior_steps == "head":
                prior = prior * (step == self.max_depth - 1)[:, None]
            logits = logits + prior
        if self.static_prior is not None:
            logits = logits + self.static_prior[task, step.clamp(max=self.max_depth - 1)]
        return logits

    def masked_logits(self, x: RouterInput, states: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, A)`` with invalid actions at -1e8."""
        logits = self.actor(states, padding, x.task, x.mask)
        if self.instance_prior is not None:
            bias = self.instance_bias(x.image)  # (B, A)
            if self.config.instance_prior_steps == "first":
                bias = bias * (x.route >= self.n_actions).all(1, keepdim=True)  # no step taken yet
            logits = logits + bias
        return logits.masked_fill(~x.mask, -1e8)

    def instance_bias(self, image: torch.Tensor) -> torch.Tensor:
        """The ``instance_prior_std`` logit offsets ``(B, A)`` of images ``(B, C, H, W)``: a linear map of
        the image's cell means on a coarse grid, normalised per instance (so that the bias follows where
        an image is bright, not how bright it is overall)."""
        assert self.instance_prior is not None
        grid = self.config.instance_prior_grid
        cells = nn.functional.adaptive_avg_pool2d(image.float(), grid).flatten(1)  # (B, C * g * g)
        cells = nn.functional.layer_norm(cells, cells.shape[1:])
        return self.instance_prior(cells)  # (B, A)

    def value(self, x: RouterInput, states: torch.Tensor | None = None, padding: torch.Tensor | None = None):
        """State values ``(B,)``; ``states``/``padding``: the actor's encoding, reused when shared."""
        if self.critic_state is not None or states is None:
            states, padding = self.encode(x, for_critic=True)
        return self.critic_value(self.pool(states, padding)).squeeze(-1)

    def pool(self, states: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """Attention pooling of the state tokens, ``(B, d)``, in fp32 (any precision)."""
        states = states.float()
        e = self.critic_attention(states).squeeze(-1).masked_fill(padding, float("-inf"))  # (B, T)
        alpha = torch.softmax(e, dim=1)
        return (alpha[..., None] * states).sum(dim=1)

    def forward_tensors(
        self, image: torch.Tensor, task: torch.Tensor, route: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = RouterInput(image=image, task=task, route=route, mask=mask)
        states, padding = self.encode(x)
        return self.masked_logits(x, states, padding), self.value(x, states, padding)

    def forward(self, x: RouterInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked logits ``(B, A)`` (invalid actions at -1e8) and values ``(B,)``. Without autograd on a
        GPU, replayed as a CUDA graph per batch shape (:mod:`agents.cuda_graph`)."""
        if self._graphed is None:
            self._graphed = GraphedInference(self.forward_tensors)
        return self._graphed(x.image, x.task, x.route, x.mask)

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_graphed"] = None  # CUDA graphs do not copy or pickle; they are captured again
        return state


def _static_prior(
    strength: float,
    static_route: torch.Tensor | list[list[int]] | None,
    n_tasks: int,
    max_depth: int,
    n_actions: int,
) -> nn.Parameter | None:
    """The learned ``(n_tasks, max_depth, n_actions)`` logit offsets of ``static_start``: ``strength`` on
    each task's static route action at each step, 0 elsewhere; None without ``strength``."""
    if not strength > 0:
        return None
    if static_route is None:
        raise ValueError(
            "static_start needs the static network's route (static_route, from "
            "routing_env.static_route.static_network_route(pool, n_tasks, max_depth))"
        )
    route = torch.as_tensor(static_route, dtype=torch.long)
    if route.shape != (n_tasks, max_depth) or not bool(((route >= 0) & (route < n_actions)).all()):
        raise ValueError(
            f"static_route must hold ({n_tasks}, {max_depth}) action ids in [0, {n_actions}), "
            f"got shape {tuple(route.shape)}"
        )
    prior = torch.zeros(n_tasks, max_depth, n_actions).scatter_(2, route[..., None], float(strength))
    return nn.Parameter(prior)


def _transformer_encoder(cfg: RouterConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, cfg.n_encoder_layers, enable_nested_tensor=False)
