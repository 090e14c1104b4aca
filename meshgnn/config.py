"""Run configuration as dataclasses: defaults in code, a TOML/JSON file for a study, flags for one-off changes.

``add_dataclass_arguments(parser, Cls)`` turns every field (with ``metadata={"help": ...}``) into ``--field-name``;
``resolve(Cls, args)`` merges defaults < ``--config`` file < explicit flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import typing
from pathlib import Path

from .errors import InputError

_UNSET = object()


def _parse_bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON file of options (flags override it)")
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f.metadata.get("help", "")
        help_ = f"{help_} (default: {default})" if help_ else f"(default: {default})"
        typ = hints[f.name]
        origin = typing.get_origin(typ)
        if typ is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=_UNSET, metavar="BOOL",
                                help=help_)
        elif origin in (list, tuple):
            (inner, *_) = typing.get_args(typ) or (str,)
            parser.add_argument(flag, type=inner, nargs="+", default=_UNSET, help=help_)
        else:
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            conv = args[0] if args else typ
            choices = f.metadata.get("choices")
            parser.add_argument(flag, type=conv, default=_UNSET, choices=choices, help=help_)


def load_file(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "config file not found")
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise InputError(path, None, f"not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None


def resolve(cls, args: argparse.Namespace, **extra):
    """Build ``cls`` from defaults, then ``args.config`` (if any), then flags the user gave, then ``extra``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    if getattr(args, "config", None):
        file_values = load_file(args.config)
        section = file_values.get(cls.__name__.lower().replace("config", ""), file_values)
        unknown = sorted(set(section) - names)
        if unknown:
            raise InputError(args.config, unknown[0], f"unknown option (known: {', '.join(sorted(names))})")
        values.update(section)
    for name in names:
        v = getattr(args, name, _UNSET)
        if v is not _UNSET:
            values[name] = v
    values.update(extra)
    return cls(**values)
