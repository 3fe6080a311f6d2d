"""The one dataclass -> command-line options helper: recipes, experiment configs and the app's settings.

A field made with `clo.config.option(default, help, ...)` becomes one argparse option, with its help text, its
type, its allowed values and, where it names one, a CLO_* environment variable read when the flag is not given;
the parsed options become an instance again. No table maps flags to fields anywhere else.

    parser = argparse.ArgumentParser()
    add_options(parser, MiniatureConfig)               # --sizes A,B,...  --epochs FLOAT ...  (default: ...)
    cfg = from_args(MiniatureConfig, parser.parse_args(["--sizes", "8"]))

    add_recipe_options(parser)                          # --config FILE, every --section.field, the short aliases
    recipe = recipe_from_args(parser.parse_args(["--lang", "sw"]))   # defaults < --config FILE < options

    add_options(parser, Settings, annotate=False)       # python app.py: --port (or CLO_PORT), --demo-mode, ...

The flag of a field is its `cli` spelling, else --name-with-dashes (a recipe field: --section.name, with `cli` as a
short alias); `cli=False` leaves a field to its environment variable alone. A field made without `option` is no
option. Help imports nothing heavy: this module needs the standard library and clo.config only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from typing import Any

from clo import CLOError
from clo.config import SECTIONS, Recipe, base_type


def options(cls) -> list[dataclasses.Field]:
    """The fields of `cls` made with clo.config.option (those with help text), in order; an annotation written as
    text (`from __future__ import annotations`) is resolved to its type once, so base_type reads real types."""
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    if any(isinstance(f.type, str) for f in fields):
        hints = typing.get_type_hints(cls)
        for f in fields:
            f.type = hints[f.name]
    return fields


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def metavar_of(f: dataclasses.Field) -> str:
    """{a,b} for allowed values, A,B,... for a list, else the type's name: INT, FLOAT, STR, BOOL."""
    choices = f.metadata.get("choices")
    tp, _ = base_type(f)
    if choices:
        return "{" + ",".join(choices) + "}"
    return "A,B,..." if typing.get_origin(tp) is list else tp.__name__.upper()


def flag_of(f: dataclasses.Field) -> str | None:
    """The field's flag: its `cli` spelling, else --name-with-dashes; None when `cli=False` (environment only)."""
    cli = f.metadata.get("cli")
    if cli is False:
        return None
    return cli or f"--{f.name.replace('_', '-')}"


# ---- argparse types: a bad value is argparse's one-line usage error, naming the option ----

def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers ≥ 0, got {text!r}")
    return values


def names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def finite_float(text: str) -> float:
    """argparse type: a float that is a number (nan, inf and -inf are refused, naming the value)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _above_zero(kind, text: str):
    """`text` as a finite number of `kind` above 0, else None (nan, inf, 0, negatives, not a number)."""
    try:
        value = kind(text)
    except ValueError:
        return None
    return value if value > 0 and value != float("inf") else None


def above_zero(kind):
    """An argparse type: a number of `kind` above 0."""
    def parse(text: str):
        value = _above_zero(kind, text)
        if value is None:
            raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
        return value
    return parse


def lang_arg(text: str) -> str:
    """argparse type: a language code in any form clo.languages accepts (KO, kor, ko-KR), as the table's code."""
    from clo.languages import lang_code

    try:
        return lang_code(text)
    except CLOError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---- options several commands share ----

def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="votes.db", help="vote store: a file path or sqlite:///... / postgresql://...")


def add_serving_options(parser: argparse.ArgumentParser, *, max_tokens: int, max_tokens_help: str | None = None) -> None:
    """The base model, its adapters' folder, the engine that answers and its length limit (generate, judge)."""
    parser.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="base model: hub id or local folder")
    parser.add_argument("--adapters-dir", default="adapters")
    parser.add_argument("--engine", default="auto", choices=("auto", "vllm", "remote", "peft"))
    parser.add_argument("--url", help="the vLLM server for --engine remote, e.g. http://127.0.0.1:8000")
    parser.add_argument("--max-tokens", type=above_zero(int), default=max_tokens, help=max_tokens_help)


def type_of(f: dataclasses.Field):
    """The argparse type that reads the field's value from its text."""
    tp, _ = base_type(f)
    if typing.get_origin(tp) is list:
        return int_list if typing.get_args(tp) == (int,) else names
    if tp in (int, float) and f.metadata.get("positive"):
        return above_zero(tp)
    return {float: finite_float, int: int}.get(tp, str)


# ---- environment variables ----

def env_number(name: str, default, kind=int):
    """Environment variable `name` as a number of `kind` (`default` when unset); a value that is not one, or not
    above zero, is one CLOError naming the variable."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = _above_zero(kind, raw)
    if value is None:
        what = "a whole number" if kind is int else "a number"
        raise CLOError(f"{name}={raw!r} is not {what} above 0: set it to one"
                       + (f" (default {default:g})" if default is not None else "") + ", or unset it")
    return value


def on_off(name: str, raw: str | None) -> str:
    """An on/off environment variable (1/true/yes/on or 0/false/no/off) as "on" or "off"; unset: "on"."""
    if raw is None or not raw.strip():
        return "on"
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return "on"
    if word in ("0", "false", "no", "off"):
        return "off"
    raise CLOError(f"{name}={raw!r} is neither on nor off: set it to 1 or 0, or unset it")


def from_env(f: dataclasses.Field) -> Any:
    """The field's value when its flag is not given: its environment variable read as its type says (or as the
    field's own `from_env(raw)` reads it), else its default. A bad value is one CLOError naming the variable."""
    name, read = f.metadata.get("env"), f.metadata.get("from_env")
    raw = os.environ.get(name) if name else None
    if read:
        return read(raw)
    default = default_of(f)
    if not name:
        return default
    tp, _ = base_type(f)
    if tp is bool:
        word = on_off(name, raw) if raw is not None else ("on" if default else "off")
        return word == "on" if not f.metadata.get("choices") else f.metadata["choices"][word == "off"]
    if tp in (int, float):
        return env_number(name, default, tp)
    return default if raw is None else raw


# ---- dataclass <-> options ----

def add_options(parser, cls, *, annotate: bool = True) -> None:
    """One option per field of `cls`. `annotate`: a type metavar and "(default: X)" after the help, the given values
    read over the dataclass defaults; without it (the app's settings) argparse's own metavars, the help as written,
    and each default read from the field's environment variable when it names one."""
    for f in options(cls):
        flag = flag_of(f)
        if flag is None:
            continue
        tp, _ = base_type(f)
        choices = f.metadata.get("choices")
        text = f.metadata["help"] or None
        kw: dict[str, Any] = {"dest": f.name, "default": from_env(f) if f.metadata.get("env") else None}
        if annotate:
            shown = default_of(f)
            text = f"{text} (default: {'none' if shown is None else _shown(shown)})"
            kw["metavar"] = metavar_of(f)
        if text:
            kw["help"] = text.replace("%", "%%")
        if tp is bool and not choices:  # a bare switch, e.g. --demo-mode (it takes no value to name)
            kw.pop("metavar", None)
            parser.add_argument(flag, action="store_true", **kw)
            continue
        if choices:
            kw["choices"] = choices
        parser.add_argument(flag, type=None if choices else type_of(f), **kw)


def from_args(cls, args: argparse.Namespace, **values):
    """An instance of `cls`: its defaults, then its environment-only fields, then the options given (`args`), then
    `values`."""
    for f in options(cls):
        if f.name in values:
            continue
        value = from_env(f) if flag_of(f) is None else getattr(args, f.name, None)
        if value is None:  # not given: the dataclass default
            continue
        if base_type(f)[0] is bool and f.metadata.get("choices"):  # on / off
            value = value == f.metadata["choices"][0]
        values[f.name] = value
    return cls(**values)


# ---- recipes: --section.field, kept as text until Recipe.load checks it against the file's values ----

def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE, then one option per recipe field, grouped by section, with the field's help text and default;
    a field's `cli` spelling is a short alias (a bool's is a bare switch, e.g. --overwrite)."""
    parser.add_argument("--config", metavar="FILE", help="YAML recipe (see recipes/); options below override it")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        for f in options(cls):
            dest = f"{section}.{f.name}"
            help_text = f"{f.metadata['help']} (default: {_shown(default_of(f))})".replace("%", "%%")
            flags = [f"--{dest}"]
            cli = f.metadata.get("cli")
            if cli and base_type(f)[0] is bool:
                group.add_argument(cli, dest=dest, action="store_const", const="true", default=argparse.SUPPRESS,
                                   help=f"same as --{dest} true")
            elif cli:
                flags.insert(0, cli)
            group.add_argument(*flags, dest=dest, metavar=metavar_of(f), default=argparse.SUPPRESS, help=help_text)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe of `add_recipe_options`: dataclass defaults < --config FILE < the options given."""
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    return Recipe.load(args.config, overrides)
