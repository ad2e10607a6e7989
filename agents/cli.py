"""train.py's command line, generated from the config dataclasses: each flag takes its default and its
help from the field it sets, so no default is written twice. Imports neither torch nor SB3."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

from agents.algorithms import ALGORITHMS, router_policy_algorithms
from agents.config import PRESETS, AgentConfig, RouterConfig, RoutingNetworkConfig, RunConfig
from routing_env.config import RoutingConfig
from routing_env.registration import routing_env_ids

RESUME_HELP = "continue the run in --out from its checkpoint, with its saved settings"

# (section of RunConfig or "run", its dataclass, {field: flag name}); a field without a name keeps its own.
SECTIONS: list[tuple[str, type, dict[str, str | None]]] = [
    (
        "run",
        RunConfig,
        {
            "preset": None,
            "env_id": "env",
            "algo": None,
            "epochs": None,
            "seed": None,
            "out": None,
            "limit_test": None,
            "eval_batch_size": None,
            "checkpoint": None,
            "checkpoint_every_minutes": None,
            "progress": None,
            "tf32": None,
            "threads": None,
        },
    ),
    (
        "env",
        RoutingConfig,
        {
            "duplicates": None,
            "max_depth": None,
            "batch_size": None,
            "bonus_weight": None,
            "bonus_warmup": None,
            "bonus_scope": None,
            "lr": None,
            "lr_decay": None,
            "max_pairs": "limit_train",
            "data_seed": None,
            "data_root": None,
            "download": None,
            "device": None,
            "dispatch": None,
            "invalid_action_penalty": None,
            "freeze_unused": None,
            "cuda_graph": None,
            "precision": None,
            "val_fraction": None,
            "augment": None,
            "weight_decay": None,
            "module_dropout": None,
            "benchmark_kwargs": None,
        },
    ),
    ("agent", AgentConfig, {f.name: None for f in dataclasses.fields(AgentConfig)}),
    ("router", RouterConfig, {f.name: None for f in dataclasses.fields(RouterConfig)}),
    ("routing_network", RoutingNetworkConfig, {"learner": "rn_learner", "lr": "rn_lr", "rho": "rn_rho"}),
]


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a dataclass's docstring, as ``{field: text}``."""
    doc = cls.__doc__ or ""
    block = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    docs: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            name = match.group(1)
            docs[name] = match.group(2).strip()
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs


def json_object(text: str) -> dict[str, Any]:
    """A flag's JSON object (e.g. ``--benchmark-kwargs '{"per_class": 10}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _kind(annotation: Any) -> tuple[Any, bool]:
    """The type a flag parses and whether the field is a pair (tuple)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return args[0], True
    if any(typing.get_origin(a) is dict for a in args):
        return json_object, False
    base = args[0] if args else annotation
    if base in (int, float, bool, Path):
        return base, False
    return str, False


class SettingError(ValueError):
    """A setting out of range, named by its flag."""


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose errors raise :class:`SettingError` instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise SettingError(message)


def build_parser(description: str | None = None, raise_errors: bool = False) -> argparse.ArgumentParser:
    """train.py's parser; with ``raise_errors`` a bad flag raises :class:`SettingError` (for callers
    that are not a command line, such as a sweep file)."""
    parser = (_RaisingParser if raise_errors else argparse.ArgumentParser)(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a mistyped flag (--duplicate) is an error, not a guess
    )
    for section, cls, names in SECTIONS:
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, flag_name in names.items():
            f = fields[name]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            kind, pair = _kind(hints[name])
            flag = "--" + (flag_name or name).replace("_", "-")
            help_text = docs.get(name, "").replace("%", "%%").replace("``", "")
            dest = f"{section}.{name}"
            if kind is bool:  # --flag / --no-flag: a preset may have turned it either way
                group.add_argument(
                    flag,
                    dest=dest,
                    action=argparse.BooleanOptionalAction,
                    help=f"{help_text} (default: {'on' if default else 'off'})",
                    default=argparse.SUPPRESS,
                )
                continue
            if name == "algo":
                help_text += ": " + "; ".join(f"{a.name}: {a.summary}" for a in ALGORITHMS.values())
            if name == "env_id":
                help_text += f" Registered: {', '.join(routing_env_ids())}."
            group.add_argument(
                flag,
                dest=dest,
                type=kind,
                nargs=2 if pair else None,
                choices=list(ALGORITHMS) if name == "algo" else list(PRESETS) if name == "preset" else None,
                default=argparse.SUPPRESS,
                metavar=None if name == "algo" else (flag_name or name).upper(),
                help=f"{help_text} (default: {default})",
            )
    parser.add_argument("--no-bonus", action="store_true", help="no collapse bonus (bonus_weight 0)")
    parser.add_argument("--resume", action="store_true", help=RESUME_HELP)
    return parser


def parse_run_config(
    argv: list[str] | None = None, description: str | None = None
) -> tuple[RunConfig, argparse.Namespace, dict[str, Any]]:
    """Parse train.py's flags into a :class:`RunConfig`.

    Returns:
        the config, the parsed namespace (``resume``), and the settings the flags gave explicitly as
        ``{"section.field": value}`` (what ``--resume`` compares with the saved run).
    """
    parser = build_parser(description)
    args = parser.parse_args(argv)
    given = settings_of(args)
    try:
        return config_from_settings(given), args, given
    except SettingError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that parsed flags give explicitly, as ``{"section.field": value}``."""
    given = {k: v for k, v in vars(args).items() if "." in k}
    if args.no_bonus:
        given["env.bonus_weight"] = 0.0
    return given


def config_from_flags(argv: list[str]) -> RunConfig:
    """A :class:`RunConfig` from train.py's flags (``["--duplicates", "5", "--no-bonus"]``), through the
    same parser, raising :class:`SettingError` instead of exiting; ``--resume`` is not taken."""
    args = build_parser(raise_errors=True).parse_args(argv)
    if args.resume:
        raise SettingError("--resume is not a run setting")
    return config_from_settings(settings_of(args))


def flag_of(section: str, name: str) -> str:
    for sec, _, names in SECTIONS:
        if sec == section and name in names:
            return "--" + (names[name] or name).replace("_", "-")
    return name


def switch_of(section: str, name: str) -> str:
    """The flag as a user types it: ``--no-progress`` for a field that is on by default."""
    flag = flag_of(section, name)
    cls = next(c for sec, c, _ in SECTIONS if sec == section)
    default = {f.name: f.default for f in dataclasses.fields(cls)}.get(name)
    return "--no-" + flag[2:] if default is True else flag


def config_from_settings(settings: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from ``{"section.field": value}`` (sections as in :data:`SECTIONS`); an error
    names the flags (``--limit-train``, not ``max_pairs``)."""
    per_section: dict[str, dict[str, Any]] = {section: {} for section, _, _ in SECTIONS}
    preset = settings.get("run.preset", RunConfig.preset)
    if preset not in PRESETS:
        raise SettingError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    algo = settings.get("run.algo", RunConfig.algo)
    # A preset's router settings are for the algorithms whose agent is the router.
    routed = algo in router_policy_algorithms()
    base = {k: v for k, v in PRESETS[preset].items() if routed or not k.startswith("router.")}
    for key, value in {**base, **settings}.items():
        section, _, name = key.partition(".")
        if section not in per_section:
            raise SettingError(f"unknown setting {key!r}")
        per_section[section][name] = value
    nested: dict[str, Any] = {}
    for section, cls, _ in SECTIONS:
        try:
            if section == "run":
                continue
            nested[section] = cls(**per_section[section])
        except (ValueError, TypeError) as e:
            raise SettingError(_with_flags(str(e), [section])) from e
    try:
        return RunConfig(**per_section["run"], **nested)
    except (ValueError, TypeError) as e:
        raise SettingError(_with_flags(str(e), ["run", "router"])) from e


def _with_flags(message: str, sections: list[str]) -> str:
    for section, _, names in SECTIONS:
        if section in sections:
            for name in names:
                message = re.sub(rf"(?<![\w-]){name}\b", flag_of(section, name), message)
    return message
