"""The checking engine of the argument groups (`arguments`): every dataclass field's value against its annotation,
then the group's own `check()`, once, as the group is built from flags, a file or Python alike.

    flag             a field with its `--help` text, as `HfArgumentParser` reads it
    Checked          base of the groups: `__post_init__` runs `check_fields`, then `check`
    check_fields     int, float (finite), str, bool, a `Literal`'s choices, a list of them, None where optional
    require          one range or consistency rule, failing as `--flag must be ...; got ...`
    require_distinct, require_folder   no value twice in a list flag; a folder to write that is not a file
    group_arguments  the groups built from one flat mapping (Python's way to say what `hf-sae` flags say)
    settings_of      the groups' values as one mapping, as a run records them
"""

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Literal

from .errors import ArgumentError


def flag(text: str, default=dataclasses.MISSING, **kwargs):
    if "default_factory" in kwargs:
        return dataclasses.field(metadata={"help": text}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": text}, **kwargs)


def require(condition: bool, flag: str, value, expected: str) -> None:
    if not condition:
        raise ArgumentError(f"--{flag} must be {expected}; got {value!r}.")


def require_distinct(flag: str, values: list | None) -> None:
    """Each value of a list flag once: `--hookpoints a a` would make two SAEs of one name, one replacing the other."""
    if twice := [value for i, value in enumerate(values or ()) if value in (values or ())[:i]]:
        raise ArgumentError(f"--{flag} names {sorted(set(twice))} more than once; give each once.")


def require_folder(flag: str, folder: str | os.PathLike | None) -> None:
    """`folder` (when given) can be a folder: neither an existing file nor under one, refused before any work."""
    if folder is None:
        return
    path = Path(folder).expanduser()
    if file := next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None):
        where = "is a file" if file == path else f"lies under {file}, which is a file"
        raise ArgumentError(
            f"--{flag}: {folder} must be a folder to write into, but it {where}. Choose another folder, or move the "
            "file away."
        )


class Checked:
    """Validated on construction: every field's type, choices and finiteness (`check_fields`), then the group's
    ranges and consistency (`check`), before any expensive work."""

    # Flags whose string may also be YAML structure from a config file, which the group parses and checks itself.
    parsed_later: typing.ClassVar[tuple[str, ...]] = ()
    # The title of the group's section in `--help` (the name `HfArgumentParser` reads); the docstring's first line
    # describes it there (`cli.parse_arguments`).
    _argument_group_name: typing.ClassVar[str]

    def __post_init__(self):
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Ranges and consistency of this group's values; its types are checked already."""


def check_fields(group) -> None:
    """Each field's value against its annotation: int, float (finite), str, bool, a `Literal`'s choices, a list of
    them, or None where the field is optional."""
    hints = typing.get_type_hints(type(group))
    for name in (f.name for f in dataclasses.fields(group) if f.name not in group.parsed_later):
        hint, value = hints[name], getattr(group, name)
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
        if value is None and type(None) in options:
            continue
        options = [option for option in options if option is not type(None)]
        if not any(_matches(value, option) for option in options):
            raise ArgumentError(f"--{name} must be {' or '.join(map(_describe, options))}; got {value!r}.")


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin is list:
        return f"a list of ({_describe(typing.get_args(hint)[0])})"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(hint, str(hint))


def group_arguments(groups: tuple[type, ...], **values) -> tuple:
    """Build each dataclass of `groups` from the flat `values` that name its fields (for use from Python, as
    `hf-sae` does from flags); a name no group has is an error."""
    names = {f.name: group for group in groups for f in dataclasses.fields(group)}
    if unknown := sorted(set(values) - set(names)):
        raise ArgumentError(f"Unknown arguments {unknown}; the arguments are {sorted(names)}.")
    return tuple(group(**{k: v for k, v in values.items() if names[k] is group}) for group in groups)


def settings_of(*groups) -> dict:
    """The groups' values in one mapping, as a run records them (training_args.json, the trackers' hyperparameters)."""
    return {key: value for group in groups for key, value in dataclasses.asdict(group).items()}
