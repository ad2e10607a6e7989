"""train.py's command line: flags <-> settings. Each flag sets one setting (:data:`FLAG_NAMES`) and takes
its type, choices, default and help from the dataclass field it sets, so no default is written twice. A
sweep file's keys are the same names, read by :func:`settings_from_names`. A bad flag is one line
(``error: ...``) and a pointer to ``--help``. Imports neither torch nor SB3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from agents.algorithms import ALGORITHMS
from routing_env.config import literal_choices
from routing_env.registration import routing_env_ids
from training_run.settings import (
    DEFAULT_PRESET,
    FLAG_NAMES,
    PRESETS,
    SECTIONS,
    RunConfig,
    SettingError,
    changed,
    default_of,
    flag_of,
    preset_default,
)

RESUME_HELP = "continue the run in --out from its checkpoint, with its saved settings"
NO_BONUS_HELP = "no collapse bonus (--bonus-weight 0)"


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


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of train.py.

    Attributes:
        key: the setting it sets, ``"section.field"``.
        name: its name without dashes (``limit_train``; a sweep file's key).
        parse: the type a command-line string becomes (``int``, ``float``, ``bool``, ``Path``, ``str``,
            :func:`json_object`).
        pair: it takes two values (a tuple field).
        choices: the values it allows (a ``Literal`` field, the algorithms, the presets), or None.
        default: the setting's default.
        doc: the field's documentation (its docstring's markup).
    """

    key: str
    name: str
    parse: Any
    pair: bool
    choices: tuple[Any, ...] | None
    default: Any
    doc: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def value(self, given: Any) -> Any:
        """The setting of a value given in a sweep file (YAML's types, or a string as on the command
        line); one :class:`SettingError` for a value of the wrong kind."""
        if self.pair:
            if not isinstance(given, list) or len(given) != 2:
                raise SettingError(f"{self.name} takes a pair [a, b], got {given!r}")
            return tuple(self._one(v) for v in given)
        if isinstance(given, (list, dict)) and self.parse is not json_object:
            raise SettingError(f"{self.name} takes one value, got {given!r} (several values go in `grid`)")
        return self._one(given)

    def _one(self, given: Any) -> Any:
        if self.parse is bool:
            if not isinstance(given, bool):
                raise SettingError(f"{self.name} is a switch: true or false, got {given!r}")
            return given
        if self.parse is json_object and isinstance(given, dict):
            return given
        ok = {int: (int,), float: (int, float)}.get(self.parse, (str,))
        if isinstance(given, bool) or not isinstance(given, ok):
            try:
                given = self.parse(str(given))
            except (ValueError, argparse.ArgumentTypeError) as e:
                kind = getattr(self.parse, "__name__", "value")
                raise SettingError(f"{self.option}: invalid {kind} value: {given!r}") from e
        value = self.parse(given) if self.parse in (int, float) else given
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(map(str, self.choices))
            raise SettingError(f"{self.option}: invalid choice: {value!r} (choose from {choices})")
        return str(value) if self.parse is Path else value


def _flag(key: str) -> Flag:
    section, _, name = key.partition(".")
    cls = SECTIONS[section]
    annotation = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    choices = literal_choices(annotation)
    pair = typing.get_origin(annotation) is tuple
    if pair:
        parse = args[0]
    elif any(typing.get_origin(a) is dict for a in args):
        parse = json_object
    else:
        base = args[0] if args and choices is None else annotation
        parse = base if base in (int, float, bool, Path) else str
    if key == "run.algo":
        choices = tuple(ALGORITHMS)
    if choices is not None:
        choices = tuple(c for c in choices if c is not None)
    return Flag(key, FLAG_NAMES[key], parse, pair, choices, default_of(key), field_docs(cls).get(name, ""))


def shown_value(value: Any, switch: bool) -> str:
    """A default as the help writes it: ``on`` / ``off`` for a switch."""
    return ("on" if value else "off") if switch else str(value)


def default_text(flag: Flag, code: Callable[[str], str] = str) -> str:
    """A flag's default as a plain ``python train.py`` gets it: the value :data:`DEFAULT_PRESET` sets,
    with the field's own default beside it where they differ (``0.1 under --preset best; the field's
    default: 1.0``). ``code`` marks up a value and a flag (backticks in the docs)."""
    switch = flag.parse is bool
    value = preset_default(flag.key)
    text = code(shown_value(value, switch))
    if flag.key in PRESETS[DEFAULT_PRESET] and changed(value, flag.default):
        algorithms = " for a RouterPolicy algorithm" if flag.key.startswith("router.") else ""
        field_default = code(shown_value(flag.default, switch))
        text += (
            f" under {code('--preset ' + DEFAULT_PRESET)}{algorithms}; the field's default: {field_default}"
        )
    return text


# Every flag that sets a setting, in the help's order.
FLAGS: list[Flag] = [_flag(key) for key in FLAG_NAMES]
# Flags that are no setting of their own: --no-bonus sets env.bonus_weight 0.
SHORTHANDS = {"no_bonus": {"env.bonus_weight": 0.0}}


class OneLineParser(argparse.ArgumentParser):
    """A parser whose errors are one line, ``error: ...``, and a pointer to ``--help`` (argparse's own
    print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: python {self.prog} --help)\n")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's parser: one flag per setting of :data:`FLAGS`, ``--no-bonus`` and ``--resume``."""
    parser = OneLineParser(
        prog="train.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a mistyped flag (--duplicate) is an error, not a guess
    )
    groups = {
        section: parser.add_argument_group(f"{section} ({cls.__name__})") for section, cls in SECTIONS.items()
    }
    for flag in FLAGS:
        group = groups[flag.key.partition(".")[0]]
        help_text = flag.doc.replace("``", "").replace("%", "%%")
        if flag.key == "run.algo":
            help_text += ": " + "; ".join(f"{a.name}: {a.summary}" for a in ALGORITHMS.values())
        if flag.key == "run.env_id":
            help_text += f" Registered: {', '.join(routing_env_ids())}."
        if flag.parse is bool:  # --flag / --no-flag: a preset may have turned it either way
            group.add_argument(
                flag.option,
                dest=flag.key,
                action=argparse.BooleanOptionalAction,
                help=f"{help_text} (default: {default_text(flag)})",
                default=argparse.SUPPRESS,
            )
            continue
        group.add_argument(
            flag.option,
            dest=flag.key,
            type=flag.parse,
            nargs=2 if flag.pair else None,
            choices=flag.choices,
            default=argparse.SUPPRESS,
            metavar=None if flag.choices else flag.name.upper(),
            help=f"{help_text} (default: {default_text(flag)})",
        )
    parser.add_argument("--no-bonus", action="store_true", help=NO_BONUS_HELP)
    parser.add_argument("--resume", action="store_true", help=RESUME_HELP)
    return parser


def parse_command_line(
    argv: list[str] | None = None, description: str | None = None
) -> tuple[RunConfig, bool, dict[str, Any]]:
    """Parse train.py's flags; a bad one exits with one line.

    Returns:
        the configuration, whether ``--resume`` was given, and the settings the flags gave explicitly
        (``{"section.field": value}``: what ``--resume`` compares with the saved run).
    """
    parser = build_parser(description)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if "." in k}
    try:
        if args.no_bonus:
            given = with_shorthand("no_bonus", given)
        return RunConfig.from_settings(given), args.resume, given
    except SettingError as e:
        parser.error(str(e))


def settings_from_names(values: dict[str, Any]) -> dict[str, Any]:
    """``{"section.field": value}`` of a sweep file's ``{name: value}`` (flags without dashes, ``-`` or
    ``_``; ``no_bonus: true``); a None value is left out (the default applies).

    Raises:
        SettingError: an unknown name, or a value of the wrong kind.
    """
    by_name = {flag.name: flag for flag in FLAGS}
    settings: dict[str, Any] = {}
    shorthands: list[str] = []
    for name, value in values.items():
        name = str(name).replace("-", "_")
        if name in SHORTHANDS:
            if not isinstance(value, bool):
                raise SettingError(f"{name} is a switch: true or false, got {value!r}")
            if value:
                shorthands.append(name)
        elif name in by_name or name.startswith("no_") and name[3:] in by_name:
            negated = name not in by_name  # no_checkpoint: true
            flag = by_name[name[3:] if negated else name]
            if negated and flag.parse is not bool:
                raise SettingError(f"unknown flag {name!r}")
            if flag.key in settings:
                raise SettingError(f"{name} sets {flag.option} a second time: set it once")
            if value is not None:
                settings[flag.key] = not flag.value(value) if negated else flag.value(value)
        else:
            raise SettingError(f"unknown flag {name!r}")
    for name in shorthands:
        settings = with_shorthand(name, settings)
    return settings


def with_shorthand(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with what the shorthand ``name`` sets (``no_bonus``: ``--bonus-weight 0``); one
    :class:`SettingError` where ``settings`` set one of them otherwise."""
    for key, value in SHORTHANDS[name].items():
        if key in settings and changed(settings[key], value):
            option = "--" + name.replace("_", "-")
            raise SettingError(
                f"{option} sets {flag_of(key)} {value}: leave out {flag_of(key)} {settings[key]}"
            )
    return {**settings, **SHORTHANDS[name]}


def names() -> list[str]:
    """Every name a sweep file may use (``limit_train``, ``no_bonus``, ``no_checkpoint``, ...)."""
    negated = [f"no_{flag.name}" for flag in FLAGS if flag.parse is bool]
    return [flag.name for flag in FLAGS] + negated + list(SHORTHANDS)


def command_line(settings: dict[str, Any]) -> list[str]:
    """train.py's flags that give ``settings`` (the inverse of parsing them)."""
    by_key = {flag.key: flag for flag in FLAGS}
    argv: list[str] = []
    for key, value in settings.items():
        flag = by_key[key]
        if flag.parse is bool:
            argv.append(flag.option if value else "--no-" + flag.option[2:])
        elif flag.pair:
            argv += [flag.option, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag.option, json.dumps(value)]
        else:
            argv += [flag.option, str(value)]
    return argv
