"""A training run's settings: :class:`RunConfig` (the one home of every default of a run) and its one
settings form, ``{"section.field": value}``, which train.py's flags, a sweep file, a preset and a run
folder's ``config.json`` all become.

``RunConfig`` nests the env's :class:`routing_env.RoutingConfig` (section ``env``), the agent's
:class:`agents.config.AgentConfig` (``agent``), the router's :class:`agents.config.RouterConfig`
(``router``) and the routing network's :class:`agents.config.RoutingNetworkConfig`
(``routing_network``); its own fields are section ``run``. :meth:`RunConfig.from_settings` applies a
preset and the algorithm's fixed settings; :func:`settings_of_dict` reads ``config.json``, in today's
nested layout or the flat one of runs made before it. Imports neither torch nor SB3, so train.py checks
its settings in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agents.algorithms import ALGORITHMS, router_policy_algorithms
from agents.config import AgentConfig, RouterConfig, RoutingNetworkConfig
from routing_env.config import RoutingConfig, check_choices
from routing_env.registration import benchmark_of

Preset = Literal["best", "paper", "probe_router"]
# The preset a run from the command line or a sweep starts from unless it names one.
DEFAULT_PRESET: Preset = "best"
# Named settings that a run starts from before its own (docs/training.md, "Presets"). The paper's explicit
# rules (per-step rewards, eq. 7; unused modules not updated) are the env's and agent's defaults.
PAPER_READINGS = {"router.decoder_queries": "valid"}  # the router's input holds the valid modules
PRESETS: dict[Preset, dict[str, Any]] = {
    # The best LRN this project measured (docs/results.md): a per-task prior on the router's logits (not in
    # the paper), a small bonus, and the reward at the last step with one Adam over the pool. The paper's
    # per-step rewards and frozen unused modules did not beat it in the study.
    "best": {
        "env.bonus_weight": 0.1,
        "router.task_prior_std": 3.0,
        "agent.reward_timing": "terminal",
        "env.freeze_unused": False,
    },
    "paper": {**PAPER_READINGS, "env.bonus_weight": 1.0, "router.task_prior_std": 0.0},
    # The router-alone probe (routing_env/benchmarks/probes.py) as scripts/probes.py measures it: the loss
    # from the oracle routing alone (each step charged its own share), a pool just big enough for it, no
    # bonus, a small router that learns fast, no discount (a step's reward is its own: exact credit) and
    # entropy enough that a step the tasks disagree on is not settled before the router reads the task
    # (with ent_coef 0.01, or the default discount, it settles on one task's module: docs/results.md).
    "probe_router": {
        "run.env_id": "RoutingProbeRouter-v0",
        "env.loss_source": "oracle",
        "env.duplicates": 2,
        "env.max_depth": 5,
        "env.bonus_weight": 0.0,
        "env.batch_size": 64,
        "router.d_model": 64,
        "router.d_ff": 128,
        "router.conv_channels": [8, 16],
        "agent.router_lr": 1e-3,
        "agent.ent_coef": 0.05,
        "agent.gamma": 0.0,
        "run.limit_test": 1000,
    },
}


class SettingError(ValueError):
    """A setting that cannot be: unknown, out of range, or against the algorithm; the message names
    settings as train.py's flags (``--limit-train``, not ``max_pairs``)."""


@dataclass
class RunConfig:
    """One training run: what train.py's flags set and what a sweep trial varies.

    Attributes:
        preset: the named settings (:data:`PRESETS`) the run started from before its own: ``"best"`` (the
            best LRN this project measured, with a per-task prior, which is not in the paper; what a run
            from the command line or a sweep starts from unless it names another) or ``"paper"`` (the
            paper's setting, as docs/training.md reads it); none for a configuration built directly.
        env_id: a routing env id (``RoutingMNIST-v0``, ``RoutingCIFAR-v0``, ``RoutingMIN-v0``, or a
            registered ``module:Id``).
        algo: the algorithm (see ``agents.algorithms.ALGORITHMS``).
        epochs: passes over the training pairs.
        seed: seeds the pool's weights, the data order and the agent.
        out: run folder; default ``runs/<env>-<algo>-s<seed>``.
        limit_test: evaluate on only this many test pairs (and validation pairs, with ``val_fraction``).
        eval_batch_size: episodes per evaluation batch.
        checkpoint: write a checkpoint after every epoch (its size: docs/training.md, "The run folder").
        checkpoint_every_minutes: within an epoch, also write a checkpoint between two batches once
            this many minutes have passed since the last one (0: after every batch), so that a stopped
            run loses minutes, not its epoch.
        save_weights: when the run ends, also write ``weights.pt``: the pool's and the agent's weights
            alone, with the run's settings (no optimizer state: about a third of a checkpoint), to share;
            ``python -m training_run.evaluate`` evaluates it. The checkpoint stays what ``--resume`` needs.
        progress: show a progress bar.
        tf32: use TF32 matmuls and convolutions on CUDA (about 2x faster on Hopper).
        threads: torch's CPU threads; default the cores this process may use (CPU affinity and cgroup
            quota), at most torch's own default.
        upcycle_epochs: not in the paper: upcycling. The first this many epochs train the static
            network's route through the LRN pool (``routing_env/static_route.py``; the router waits and
            evaluation takes that route), then duplicate 0 of each trunk bank is copied into all its
            duplicates (weights and Adam state; the heads stay) and the router takes over for the rest
            of ``epochs``, so the duplicates start from the trained module on equal footing. Pair it with
            ``static_start`` to start the router at that route. 0: none.
        env: the training env's settings (``benchmark``, ``seed`` and ``split`` follow ``env_id``,
            ``seed`` and training; the algorithm's fixed settings must hold).
        agent: the SB3 agent's hyper-parameters.
        router: the router's architecture.
        routing_network: the original routing network's router.
    """

    preset: Preset | None = None
    env_id: str = "RoutingMNIST-v0"
    algo: str = "maskable_ppo"
    epochs: int = 100
    seed: int = 0
    out: Path | None = None
    limit_test: int | None = None
    eval_batch_size: int = 512
    checkpoint: bool = True
    checkpoint_every_minutes: float = 10.0
    save_weights: bool = False
    progress: bool = True
    tf32: bool = True
    threads: int | None = None
    upcycle_epochs: int = 0
    env: RoutingConfig = field(default_factory=RoutingConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    routing_network: RoutingNetworkConfig = field(default_factory=RoutingNetworkConfig)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.algo not in ALGORITHMS:
            raise ValueError(f"unknown algo {self.algo!r}; known: {', '.join(ALGORITHMS)}")
        if int(self.epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if int(self.eval_batch_size) < 1 or (self.limit_test is not None and int(self.limit_test) < 1):
            raise ValueError("eval_batch_size and limit_test must be >= 1")
        if not self.checkpoint_every_minutes >= 0:
            raise ValueError(f"checkpoint_every_minutes must be >= 0, got {self.checkpoint_every_minutes}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        for option in ("task_prior_std", "static_start", "instance_prior_std"):
            if getattr(self.router, option) > 0 and self.algo not in router_policy_algorithms():
                raise ValueError(
                    f"{option} is a RouterPolicy option: use algo {', '.join(router_policy_algorithms())}"
                    f" (not {self.algo})"
                )
        mechanisms = {
            "upcycle_epochs": self.upcycle_epochs > 0,
            "advantage": self.agent.advantage != "gae",
            "explore_epsilon": self.agent.explore_epsilon > 0,
        }
        for option, used in mechanisms.items():
            if used and self.algo not in router_policy_algorithms():
                raise ValueError(
                    f"{option} is an option of the LRN router's algorithms: use algo "
                    f"{', '.join(router_policy_algorithms())} (not {self.algo})"
                )
        if int(self.upcycle_epochs) < 0:
            raise ValueError(f"upcycle_epochs must be >= 0, got {self.upcycle_epochs}")
        static_route = (
            self.upcycle_epochs > 0 or self.agent.advantage != "gae" and self.agent.baseline_route == "static"
        )
        if static_route and self.env.max_depth < 5:
            raise ValueError(
                f"upcycle_epochs and baseline_route static take the static network's 5 layers: they need "
                f"max_depth >= 5, got {self.env.max_depth}"
            )
        if self.router.static_start > 0 and self.env.max_depth < 5:
            raise ValueError(
                f"static_start starts at the static network's 5 layers: it needs max_depth >= 5, got "
                f"{self.env.max_depth}"
            )
        fixed = ALGORITHMS[self.algo].env_settings
        wrong = {k: v for k, v in fixed.items() if changed(getattr(self.env, k), v)}
        if wrong:
            raise ValueError(
                f"algo {self.algo} needs env settings {wrong}: build the configuration with "
                "RunConfig.from_settings, which sets them"
            )
        self.env = self.env.replace(benchmark=benchmark_of(self.env_id), seed=self.seed, split="train")
        if self.out is None:
            self.out = Path("runs") / f"{self.env_id.rpartition(':')[2]}-{self.algo}-s{self.seed}"
        self.out = Path(self.out)

    @property
    def test_env(self) -> RoutingConfig:
        """The evaluation env: the test split, ``limit_test`` pairs, a frozen pool."""
        return self.env.replace(split="test", max_pairs=self.limit_test)

    @property
    def val_env(self) -> RoutingConfig:
        """The validation env: the held-out ``val_fraction`` of the training pairs, ``limit_test`` of them."""
        return self.env.replace(split="val", max_pairs=self.limit_test)

    def eval_batch(self, split: str) -> int:
        """Episodes per batch of the evaluation of ``split`` (``"test"`` or ``"val"``): what the run's
        epochs used, so a later evaluation of its weights walks the same batches."""
        if split == "test":
            return min(self.eval_batch_size, self.limit_test or self.eval_batch_size)
        return self.eval_batch_size

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RunConfig:
        """The configuration of ``{"section.field": value}`` settings, over the preset ``run.preset``
        names (default :data:`DEFAULT_PRESET`) and the dataclasses' defaults.

        The algorithm's fixed env settings (``--algo static``: 5 layers) apply over the preset; a setting
        that contradicts one is refused. A preset's router settings apply only to the algorithms whose
        agent is the router.

        Raises:
            SettingError: one line naming the setting as train.py's flag.
        """
        unknown = [k for k in settings if k.partition(".")[0] not in SECTIONS or "." not in k]
        if unknown:
            sections = ", ".join(SECTIONS)
            raise SettingError(f"unknown setting {unknown[0]!r}; settings are 'section.field' of {sections}")
        preset = settings.get("run.preset", DEFAULT_PRESET)
        if preset is not None and preset not in PRESETS:
            raise SettingError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        algo = settings.get("run.algo", cls.algo)
        routed = algo in router_policy_algorithms()
        base = {k: v for k, v in PRESETS.get(preset, {}).items() if routed or not k.startswith("router.")}
        base["run.preset"] = preset
        if algo in ALGORITHMS:
            fixed = {f"env.{k}": v for k, v in ALGORITHMS[algo].env_settings.items()}
            conflicts = {k: v for k, v in settings.items() if k in fixed and changed(v, fixed[k])}
            if conflicts:
                fixes = " and ".join(f"{flag_of(k)} {show(v)}" for k, v in fixed.items() if k in FLAG_NAMES)
                given = ", ".join(f"{flag_of(k)} {show(v)}" for k, v in conflicts.items())
                raise SettingError(f"--algo {algo} fixes {fixes}: leave out {given}")
            base.update(fixed)
        per_section: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for key, value in {**base, **settings}.items():
            section, _, name = key.partition(".")
            per_section[section][name] = value
        nested: dict[str, Any] = {}
        for section, section_class in SECTIONS.items():
            if section == "run":
                continue
            try:
                nested[section] = section_class(**_known(section_class, per_section[section]))
            except (ValueError, TypeError) as e:
                raise SettingError(with_flags(str(e), [section])) from e
        try:
            return cls(**_known(cls, per_section["run"]), **nested)
        except (ValueError, TypeError) as e:
            raise SettingError(with_flags(str(e), ["run", "router"])) from e

    def to_settings(self) -> dict[str, Any]:
        """``{"section.field": value}`` of every field, as JSON values."""
        nested = self.to_dict()
        flat = {f"run.{k}": v for k, v in nested.items() if k not in SECTIONS}
        for section in SECTIONS:
            if section != "run":
                flat.update({f"{section}.{k}": v for k, v in nested[section].items()})
        return flat

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able values, nested by section (``config.json``'s layout)."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> RunConfig:
        """The configuration a ``config.json`` records (either layout, see :func:`settings_of_dict`)."""
        return cls.from_settings(settings_of_dict(config))


# Every dataclass of a run's settings, by section.
SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "env": RoutingConfig,
    "agent": AgentConfig,
    "router": RouterConfig,
    "routing_network": RoutingNetworkConfig,
}
# The env's fields a run sets (``benchmark``, ``seed`` and ``split`` follow the run; ``pool`` and
# ``train_modules`` the algorithm and the split).
ENV_SETTINGS = (
    "duplicates", "max_depth", "batch_size", "bonus_weight", "bonus_warmup", "bonus_until", "bonus_scope",
    "task_heads", "lr", "lr_decay", "max_pairs", "data_seed", "data_root", "download", "device", "dispatch",
    "invalid_action_penalty", "freeze_unused", "cuda_graph", "compile", "precision", "val_fraction",
    "augment", "weight_decay", "module_dropout", "benchmark_kwargs", "pool_conv_channels", "pool_fc_width",
    "loss_source",
)  # fmt: skip
# Settings whose flag (and sweep key) is not their field's name.
RENAMED = {
    "run.env_id": "env",
    "env.max_pairs": "limit_train",
    "router.precision": "router_precision",
    "routing_network.learner": "rn_learner",
    "routing_network.lr": "rn_lr",
    "routing_network.rho": "rn_rho",
}


def _user_settings() -> dict[str, str]:
    names = {}
    for section, section_class in SECTIONS.items():
        fields = [f.name for f in dataclasses.fields(section_class) if f.name not in SECTIONS]
        for name in ENV_SETTINGS if section == "env" else fields:
            names[f"{section}.{name}"] = RENAMED.get(f"{section}.{name}", name)
    return names


# The settings a user sets, in train.py's flag order, with the name each goes by (``--limit-train``, a
# sweep file's ``limit_train``).
FLAG_NAMES: dict[str, str] = _user_settings()


def flag_of(key: str) -> str:
    """train.py's flag of a setting (``"env.max_pairs"`` -> ``--limit-train``); a setting without a flag
    goes by its field's name."""
    return "--" + FLAG_NAMES[key].replace("_", "-") if key in FLAG_NAMES else key.partition(".")[2]


def default_of(key: str) -> Any:
    """The default of a setting where a run does not give it (for ``run.preset``: :data:`DEFAULT_PRESET`)."""
    if key == "run.preset":
        return DEFAULT_PRESET
    section, _, name = key.partition(".")
    f = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def switch_of(key: str) -> str:
    """The flag as a help or message names it: ``--[no-]progress`` for a switch, ``--lr`` else."""
    flag = flag_of(key)
    return "--[no-]" + flag[2:] if key in FLAG_NAMES and isinstance(default_of(key), bool) else flag


def given_as(key: str, value: Any) -> str:
    """A setting's value as the flags that give it: ``--freeze-unused`` or ``--no-freeze-unused`` for a
    switch, ``--lr 0.001`` else."""
    return " ".join(flag_words(key, value)) if isinstance(value, bool) else f"{flag_of(key)} {show(value)}"


def preset_default(key: str, preset: str | None = DEFAULT_PRESET) -> Any:
    """The value of a setting where a run from the command line gives none: what ``preset`` sets, else
    the field's default (:func:`default_of`)."""
    return PRESETS.get(preset, {}).get(key, default_of(key)) if preset else default_of(key)


def with_flags(message: str, sections: list[str]) -> str:
    """``message`` with the field names of ``sections`` replaced by their flags."""
    for key in FLAG_NAMES:
        section, _, name = key.partition(".")
        if section in sections:
            message = re.sub(rf"(?<![\w-]){name}\b", flag_of(key), message)
    return message


def _known(section_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` for the fields ``section_class`` has; an unknown one is a :class:`SettingError`."""
    names = {f.name for f in dataclasses.fields(section_class)} - set(SECTIONS)
    unknown = sorted(set(values) - names)
    if unknown:
        section = next(s for s, c in SECTIONS.items() if c is section_class)
        raise SettingError(
            f"unknown setting {section}.{unknown[0]}; {section} has {', '.join(sorted(names))}"
        )
    return values


# config.json of runs made before the nested layout: settings whose name there is not their field's.
_LEGACY_NAMES = {
    "run.env_id": "env", "run.checkpoint": "no_checkpoint", "run.progress": "no_progress",
    "run.tf32": "no_tf32", "router.task_prior_std": "task_prior", "routing_network.learner": "rn_learner",
    "routing_network.lr": "rn_lr", "routing_network.rho": "rn_rho",
}  # fmt: skip
_LEGACY_NEGATED = {"no_checkpoint", "no_progress", "no_tf32"}
_LEGACY_SECTIONS = {"env": "env_config", "agent": "algo_config"}


def settings_of_dict(config: dict[str, Any]) -> dict[str, Any]:
    """``{"section.field": value}`` of every setting a ``config.json`` records, in the nested layout
    (:meth:`RunConfig.to_dict`) or the flat one of runs made before it (``env_config``, ``algo_config``,
    ``task_prior``, ``no_checkpoint``, settings at the top); fields this code no longer has are left out,
    fields the run's code did not have yet are absent. The one reader of either layout."""
    if "env_id" in config:
        nested = {"run": config, **{s: config.get(s) or {} for s in SECTIONS if s != "run"}}
    else:  # a field at the top, under its section's old key, or under its old name
        nested = {s: {**config, **(config.get(_LEGACY_SECTIONS.get(s, "")) or {})} for s in SECTIONS}
        nested["run"].pop("env", None)  # the env id there, not the env's settings
        for key, old in _LEGACY_NAMES.items():
            if old in config:
                section, _, name = key.partition(".")
                nested[section][name] = not config[old] if old in _LEGACY_NEGATED else config[old]
    settings = {}
    for section, section_class in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(section_class)} - set(SECTIONS)
        settings.update({f"{section}.{k}": v for k, v in nested[section].items() if k in names})
    return settings


def changed(old: Any, new: Any) -> bool:
    """Whether two values of a setting differ (paths compared normalised, numbers as floats)."""
    return _canonical(old) != _canonical(new)


def _canonical(value: Any) -> str:
    if isinstance(value, (str, os.PathLike)) and str(value).startswith(("/", ".", "~")):
        value = os.path.normpath(os.path.expanduser(str(value)))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value, default=str)
    return repr(float(value))


def show(value: Any) -> str:
    """A setting's value as a message shows it."""
    return "none" if value is None else json.dumps(value) if isinstance(value, list) else str(value)


def json_ready(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists (JSON's types)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class FirstRun:
    """The quick first run train.py suggests on a CPU: MNIST-MTL settings under which LRN learns (balanced
    test accuracy far above the 50 % of always answering "no") in minutes on two cores, with the paper's
    pool (10 duplicates, depth 6) and the router choosing every module. ``scripts/cpu_first_run.py``
    measures it into ``results/cpu_first_run/`` (README, "Quick start"); ``tests/test_first_run.py`` runs
    a shortened version of it.

    The paper's settings cut as short end at "no" for every pair (balanced accuracy 50 %): its pool
    learning rate (1e-4) is set for 100 epochs of 781 batches, and a router that learns as fast as the pool
    soon sends every task to the one head that says "no" best. Here the router starts at the static network
    (``--static-start 10``: a trunk shared by every task, a head per task; PPO may still move any step of
    any route) and learns ten times slower than the pool (no bonus, no prior), so every task trains its own
    head from the first batch. The rest is for speed on a CPU: a narrower router (d_model 64), the
    ``grouped`` dispatch (only the modules the routes use run) and a per-module Adam that steps only those
    (``--freeze-unused``; one Adam over the pool steps all 65 M weights every batch).

    Attributes:
        settings: the run's ``{"section.field": value}`` settings beyond ``python train.py``'s.
        batch_cost: its mean time per batch over that of ``python train.py``'s settings, both measured on
            one CPU by ``scripts/cpu_first_run.py``: what turns the time per batch a run of those settings
            measures into this run's time.
        out: its run folder, not the one ``python train.py`` defaults to: the advice comes while that
            run goes on, and its folder (stopped with Ctrl-C) holds a run of other settings.
    """

    settings: tuple[tuple[str, Any], ...] = (
        ("router.d_model", 64),
        ("router.d_ff", 128),
        ("router.static_start", 10.0),
        ("router.task_prior_std", 0.0),
        ("env.bonus_weight", 0.0),
        ("env.lr", 1e-3),
        ("agent.router_lr", 1e-4),
        ("env.dispatch", "grouped"),
        ("env.freeze_unused", True),
        ("env.max_pairs", 25600),
        ("run.limit_test", 500),
        ("run.epochs", 3),
    )
    batch_cost: float = 0.19
    out: str = "runs/first-run"

    def config(self) -> RunConfig:
        return RunConfig.from_settings({**dict(self.settings), "run.out": self.out})

    def argv(self) -> list[str]:
        """The train.py flags of its settings (without ``--out``: what ``scripts/cpu_first_run.py``
        measured, into a folder of its own)."""
        return [word for key, value in self.settings for word in flag_words(key, value)]

    def command(self) -> str:
        """The command that starts it, with its own ``--out``."""
        return " ".join(["python train.py", *self.argv(), "--out", self.out])

    def batches(self) -> int:
        """Its batches in all."""
        cfg = self.config()
        return cfg.epochs * math.ceil(cfg.env.max_pairs / cfg.env.batch_size)

    def timed_by(self, cfg: RunConfig) -> bool:
        """Whether ``batch_cost`` converts the time per batch of run ``cfg``: one with ``python train.py``'s
        algorithm, benchmark, pool, batch size and router size."""
        return _batch_shape(cfg) == _batch_shape(RunConfig.from_settings({}))

    def advice(self, reference_seconds_per_batch: float | None) -> str:
        """The line that suggests this run: its flags, and its time when the time per batch of a run that
        :meth:`timed_by` accepts is given."""
        line = f"for a first look on this CPU (LRN learns in minutes): {self.command()}"
        if reference_seconds_per_batch is None:
            return line
        minutes = max(1, round(self.batches() * self.batch_cost * reference_seconds_per_batch / 60))
        return f"{line} (about {minutes} min of training here)"


def flag_words(key: str, value: Any) -> list[str]:
    """A setting as train.py's flag words: ``--freeze-unused`` (``--no-freeze-unused``) for a switch,
    ``--lr 0.001`` else."""
    if isinstance(value, bool):
        return [flag_of(key) if value else "--no-" + flag_of(key)[2:]]
    return [flag_of(key), f"{value:g}" if isinstance(value, float) else str(value)]


def _batch_shape(cfg: RunConfig) -> tuple[Any, ...]:
    env, router = cfg.env, cfg.router
    return (
        cfg.algo, env.benchmark, env.pool, env.duplicates, env.max_depth, env.batch_size, env.dispatch,
        router.d_model, router.d_ff, router.n_encoder_layers, router.n_decoder_layers, router.decoder_queries,
    )  # fmt: skip


FIRST_RUN = FirstRun()
