"""The LRN router as a Stable-Baselines3 policy (MaskablePPO, and plain PPO / A2C), and as an SB3
features extractor for value-based algorithms (DQN)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from agents.config import RouterConfig
from agents.router import LRNRouter, RouterInput, parse_observation


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(B, A)`` of the categorical distributions of masked logits ``(B, A)`` (invalid
    actions at -1e8, ``mask`` True where valid), -1e8 where masked, as sb3-contrib's
    ``MaskableCategorical`` computes them."""
    # MaskableCategorical normalises the logits, masks them and normalises again; the same ops give the
    # same numbers to the bit (where a gradient is ~0, Adam turns any rounding difference into a step).
    log_p = logits - logits.logsumexp(dim=-1, keepdim=True)
    log_p = torch.where(mask, log_p, -1e8)
    return log_p - log_p.logsumexp(dim=-1, keepdim=True)  # (B, A)


def epsilon_mixture(log_p: torch.Tensor, mask: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Log-probabilities ``(B, A)`` of the epsilon mixture ``(1 - epsilon) * p + epsilon * uniform over the
    valid actions`` of the policy ``log_p`` ``(B, A)`` (:func:`masked_log_softmax`); -1e8 where masked."""
    n_valid = mask.sum(dim=-1, keepdim=True).clamp_min(1).to(log_p.dtype)  # (B, 1)
    uniform = math.log(epsilon) - n_valid.log()  # (B, 1): log(epsilon / n_valid)
    mixed = torch.logaddexp(log_p + math.log1p(-epsilon), uniform.expand_as(log_p))
    return torch.where(mask, mixed, -1e8)


def masked_log_prob_entropy(
    logits: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor, epsilon: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of ``actions`` ``(B,)`` and entropies ``(B,)`` of the categorical distributions of
    masked logits ``(B, A)`` (invalid actions at -1e8, ``mask`` ``(B, A)`` True where valid): the numbers of
    sb3-contrib's ``MaskableCategorical``, op for op, without its objects (and their host syncs).

    With ``epsilon`` > 0 the log-probabilities are those of the policy that acts, the epsilon mixture
    (:func:`epsilon_mixture`), so that PPO's ratio compares the mixture before and after the update; the
    entropy stays the router's own (the entropy bonus shapes the router, not the exploration)."""
    log_p = masked_log_softmax(logits, mask)
    acting = epsilon_mixture(log_p, mask, epsilon) if epsilon > 0 else log_p
    log_prob = acting.gather(-1, actions.long()[:, None]).squeeze(-1)
    p_log_p = torch.where(mask, log_p * F.softmax(log_p, dim=-1), 0.0)  # masked actions add no entropy
    return log_prob, -p_log_p.sum(-1)


def sample_logits(logits: torch.Tensor) -> torch.Tensor:
    """One action per row of ``logits`` ``(B, A)``, drawn from their softmax by the Gumbel-max trick
    (``argmax(logits + Gumbel noise)``): a fixed sequence of kernels on torch's default generator, which
    a CUDA graph can capture. Actions masked at -1e8 are never drawn."""
    uniform = torch.rand_like(logits).clamp_min_(torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


def _router_from_space(
    observation_space: spaces.Dict,
    config: RouterConfig,
    attention: str,
    static_route: list[list[int]] | None = None,
) -> LRNRouter:
    image_shape = tuple(observation_space["image"].shape)
    n_tasks = int(observation_space["task"].n)
    n_actions = int(observation_space["action_mask"].n)
    max_depth = int(observation_space["route"].shape[0])
    return LRNRouter(
        image_shape, n_tasks, n_actions, max_depth, config, attention=attention, static_route=static_route
    )


def _check_image_scaling(observation_space: spaces.Dict, normalize_images: bool) -> None:
    """The policy divides a uint8 image by 255; an image a wrapper already normalised (VecNormalize makes
    it float32) must not be divided again, and that needs ``normalize_images=False``."""
    dtype = observation_space["image"].dtype
    if normalize_images and dtype != np.uint8:
        raise ValueError(
            f"the observation's image is {dtype}, not uint8: something (e.g. VecNormalize with "
            "norm_obs_keys=['image']) normalises it already; pass policy_kwargs=dict(normalize_images=False)"
        )


class RouterPolicy(MaskableActorCriticPolicy):
    """Actor-critic policy around :class:`agents.router.LRNRouter`.

    The action mask travels in the observation (``obs["action_mask"]``) and is always applied, so the
    policy never picks an invalid module, also under PPO and A2C, which know nothing of masks.
    MaskablePPO's ``action_masks`` argument, where given, is applied on top.

    :param observation_space: the routing env's ``Dict`` observation space.
    :param action_space: ``Discrete(n_actions)``.
    :param lr_schedule: learning rate schedule (SB3 passes it).
    :param optimizer_class: the router's optimizer.
    :param optimizer_kwargs: its extra arguments.
    :param use_sde: passed by SB3's on-policy algorithms; must be False.
    :param normalize_images: divide the uint8 image by 255 (False when a wrapper such as VecNormalize
        already normalises it; a float image with True is an error).
    :param attention_backend: ``"auto"`` (torch's fastest attention kernels) or ``"math"`` (the plain
        kernel, which has second derivatives: needed by TRPO).
    :param static_route: each task's route of the static network through the env's pool, ``(n_tasks,
        max_depth)`` action ids (:func:`routing_env.static_route.static_network_route`); needed with
        ``static_start``.
    :param explore_epsilon: sampled actions come from the mixture ``(1 - epsilon) * router + epsilon *
        uniform over the valid actions`` (:attr:`agents.config.AgentConfig.explore_epsilon`); its
        log-probabilities are the mixture's. Deterministic actions are the router's own.
    :param router_kwargs: the router's architecture, the fields of :class:`agents.config.RouterConfig`
        (``d_model``, ``n_heads``, ``d_ff``, ``n_encoder_layers``, ``n_decoder_layers``,
        ``conv_channels``, ``task_prior_std``, ``static_start``, ...); an unknown keyword is an error.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        use_sde: bool = False,
        normalize_images: bool = True,
        attention_backend: str = "auto",
        static_route: list[list[int]] | None = None,
        explore_epsilon: float = 0.0,
        **router_kwargs: Any,
    ) -> None:
        if use_sde:
            raise ValueError("RouterPolicy has a discrete action space: use_sde must be False")
        router_config = RouterConfig.from_kwargs(**router_kwargs)
        _check_image_scaling(observation_space, normalize_images)
        # MaskablePPO requires a MaskableActorCriticPolicy; its __init__ builds SB3's MLP heads, which
        # the router replaces, so initialise as the BasePolicy it derives from.
        BasePolicy.__init__(
            self,
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs or {},
            normalize_images=normalize_images,
        )
        self.router_config = router_config
        self.router = _router_from_space(observation_space, router_config, attention_backend, static_route)
        self.static_route = static_route
        if not 0 <= explore_epsilon < 1:
            raise ValueError(f"explore_epsilon must lie in [0, 1), got {explore_epsilon}")
        self.explore_epsilon = float(explore_epsilon)
        self.action_dist = MaskableCategoricalDistribution(int(action_space.n))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        # MaskableActorCriticPolicy's version reads net_arch, ortho_init, ... which this policy never
        # sets (its __init__ is skipped above); save the router's configuration whole instead.
        data = BasePolicy._get_constructor_parameters(self)
        data.update(
            **dataclasses.asdict(self.router_config),
            attention_backend=self.router.attention,
            static_route=self.static_route,
            explore_epsilon=self.explore_epsilon,
            lr_schedule=self._dummy_schedule,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    def _distribution(
        self, logits: torch.Tensor, mask: torch.Tensor, action_masks: np.ndarray | torch.Tensor | None
    ) -> MaskableCategoricalDistribution:
        if action_masks is not None:
            extra = torch.as_tensor(action_masks, device=mask.device).reshape(mask.shape) > 0
            mask = mask & extra
        dist = self.action_dist.proba_distribution(action_logits=logits)
        dist.apply_masking(mask)
        return dist

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False, action_masks: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions ``(B,)``, values ``(B, 1)`` and log-probabilities ``(B,)``."""
        if self.explore_epsilon > 0 and not deterministic:
            x, logits, values = self._router_outputs(obs, action_masks)
            actions, log_prob = self._sample(logits, x.mask)
            return actions, values[:, None], log_prob
        x = parse_observation(obs, normalize_images=self.normalize_images)
        logits, values = self.router(x)
        dist = self._distribution(logits, x.mask, action_masks)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values[:, None], dist.log_prob(actions)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: torch.Tensor, action_masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Values ``(B, 1)``, log-probabilities and entropies ``(B,)`` of ``actions``."""
        if self.explore_epsilon > 0:
            x, logits, values = self._router_outputs(obs, action_masks)
            log_prob, entropy = masked_log_prob_entropy(
                logits, x.mask, actions.reshape(-1), self.explore_epsilon
            )
            return values[:, None], log_prob, entropy
        x = parse_observation(obs, normalize_images=self.normalize_images)
        logits, values = self.router(x)
        dist = self._distribution(logits, x.mask, action_masks)
        return values[:, None], dist.log_prob(actions.reshape(-1)), dist.entropy()

    # --- the same numbers without distribution objects or host syncs: the programs of agents.rollout
    # and agents.ppo_update call these (the router's own forward, not its per-call CUDA graph, since the
    # caller captures the whole program).
    def sample_tensors(self, obs: PyTorchObs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` (sampled actions ``(B,)``, values ``(B,)``, log-probabilities ``(B,)``), with
        the Gumbel-max draw of :func:`sample_logits`."""
        x, logits, values = self._router_outputs(obs)
        actions, log_prob = self._sample(logits, x.mask)
        return actions, values, log_prob

    def _sample(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled actions ``(B,)`` of masked logits ``(B, A)`` and their log-probabilities ``(B,)``, from the
        epsilon mixture where ``explore_epsilon`` is set."""
        if self.explore_epsilon > 0:
            acting = epsilon_mixture(masked_log_softmax(logits, mask), mask, self.explore_epsilon)
            actions = sample_logits(acting)
            return actions, acting.gather(-1, actions[:, None]).squeeze(-1)
        actions = sample_logits(logits)
        return actions, masked_log_prob_entropy(logits, mask, actions)[0]

    def greedy_tensors(self, obs: PyTorchObs) -> torch.Tensor:
        """The router's most likely actions ``(B,)`` (its greedy route, a self-critical baseline)."""
        _, logits, _ = self._router_outputs(obs)
        return logits.argmax(dim=-1)

    def evaluate_tensors(
        self, obs: PyTorchObs, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`evaluate_actions` for the observation's own mask: values, log-probabilities of ``actions``
        and entropies, each ``(B,)``."""
        x, logits, values = self._router_outputs(obs)
        log_prob, entropy = masked_log_prob_entropy(logits, x.mask, actions.reshape(-1), self.explore_epsilon)
        return values, log_prob, entropy

    def _router_outputs(
        self, obs: PyTorchObs, action_masks: np.ndarray | torch.Tensor | None = None
    ) -> tuple[RouterInput, torch.Tensor, torch.Tensor]:
        x = parse_observation(obs, normalize_images=self.normalize_images)
        if action_masks is not None:  # MaskablePPO's masks, on top of the observation's
            x.mask = x.mask & (torch.as_tensor(action_masks, device=x.mask.device).reshape(x.mask.shape) > 0)
        logits, values = self.router.forward_tensors(x.image, x.task, x.route, x.mask)  # (B, A), (B,)
        return x, logits, values

    def get_distribution(
        self, obs: PyTorchObs, action_masks: np.ndarray | None = None
    ) -> MaskableCategoricalDistribution:
        x = parse_observation(obs, normalize_images=self.normalize_images)
        logits, _ = self.router(x)  # the value comes free: one (graph-replayed) forward
        return self._distribution(logits, x.mask, action_masks)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        x = parse_observation(obs, normalize_images=self.normalize_images)
        return self.router.value(x)[:, None]

    def _predict(
        self, observation: PyTorchObs, deterministic: bool = False, action_masks: np.ndarray | None = None
    ) -> torch.Tensor:
        return self.get_distribution(observation, action_masks).get_actions(deterministic=deterministic)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Like :meth:`BasePolicy.predict`, plus MaskablePPO's ``action_masks``."""
        self.set_training_mode(False)
        obs_tensor, vectorized = self.obs_to_tensor(observation)
        with torch.no_grad():
            actions = self._predict(obs_tensor, deterministic=deterministic, action_masks=action_masks)
        actions = actions.cpu().numpy().reshape(-1)
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, state


class RouterFeaturesExtractor(BaseFeaturesExtractor):
    """The router's encoder, attention-pooled to one feature vector, for SB3 policies built from a
    features extractor (``MultiInputPolicy`` of DQN, QR-DQN, ``MultiInputLstmPolicy`` of RecurrentPPO,
    ...; SB3's default extractor cannot take MNIST's 28x28 images). Such algorithms do not see the mask;
    the env replaces an invalid action (and charges ``invalid_action_penalty``).

    :param observation_space: the routing env's ``Dict`` observation space.
    :param attention_backend: ``"auto"`` or ``"math"`` (see :class:`RouterPolicy`).
    :param router_kwargs: the fields of :class:`agents.config.RouterConfig` (``d_model`` is the feature
        width); an unknown keyword is an error.
    """

    def __init__(
        self, observation_space: spaces.Dict, attention_backend: str = "auto", **router_kwargs: Any
    ) -> None:
        config = RouterConfig.from_kwargs(**router_kwargs)
        super().__init__(observation_space, features_dim=config.d_model)
        self.router = _router_from_space(observation_space, config, attention_backend)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        x = parse_observation(observations, one_hot=True)
        return self.router.pool(*self.router.encode(x))
