"""Command line: `python -m clo prepare|train|tiny`.

    python -m clo prepare --lang ko --pairs 50               # build + cache the cross-lingual pairs, preview them
    python -m clo train --config recipes/demo.yaml --method clo,sft --max-steps 20
    python -m clo tiny models/tiny                           # a tiny random model for offline smoke runs

Every recipe field is an option (`--section.field VALUE`); the common ones have short aliases.
Precedence: dataclass defaults < --config FILE < options.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from clo import CLOError
from clo.config import SECTIONS, Recipe, base_type


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """One option per dataclass field, grouped by section, with the field's help text and default."""
    parser.add_argument("--config", metavar="FILE", help="YAML recipe (see recipes/); options below override it")
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} ({cls.__name__})")
        for f in dataclasses.fields(cls):
            dest = f"{section}.{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if isinstance(default, list):
                default = ",".join(default)
            choices = f.metadata.get("choices")
            tp, _ = base_type(f)
            metavar = "{" + ",".join(choices) + "}" if choices else ("A,B,..." if typing.get_origin(tp) is list else tp.__name__.upper())
            help_text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")
            flags = [f"--{dest}"]
            cli = f.metadata.get("cli")
            if cli and tp is bool:  # a bare switch, e.g. --overwrite
                group.add_argument(cli, dest=dest, action="store_const", const="true", default=argparse.SUPPRESS,
                                   help=f"same as --{dest} true")
            elif cli:
                flags.insert(0, cli)
            group.add_argument(*flags, dest=dest, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    return Recipe.load(args.config, overrides)


def cmd_prepare(args: argparse.Namespace) -> None:
    from clo.data import build_pairs

    recipe = recipe_from_args(args)
    data = build_pairs(recipe.data)
    m = data.manifest
    print(f"{len(data)} pairs, en → {m['target_lang']}, source {m['source']}, translator {m['translator']}"
          f"{' (' + m['translator_model'] + ')' if m.get('translator_model') else ''}")
    print(f"cached at {m['cache_file']} (rows sha256 {m['rows_sha256'][:12]})")
    if args.preview:
        print(data.preview(args.preview))


def cmd_train(args: argparse.Namespace) -> None:
    from clo.train import train

    recipe = recipe_from_args(args)
    for path in train(recipe):
        print(path)


def cmd_tiny(args: argparse.Namespace) -> None:
    from clo.tiny import build_tiny_model

    print(build_tiny_model(args.path, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clo", description="Cross-Lingual Optimization: data, training and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="build and cache the cross-lingual dataset, and preview it")
    add_recipe_options(p)
    p.add_argument("--preview", type=int, default=3, metavar="N", help="show N pairs with their chosen and rejected answers")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one LoRA adapter per method into adapters/<name>/")
    add_recipe_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tiny", help="write a tiny random Llama-style chat model (for offline smoke runs)")
    p.add_argument("path", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CLOError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from clo.train import TrainingStopped

        if isinstance(e, TrainingStopped):
            print("stopped: no adapter was written", file=sys.stderr)
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
