"""Keys and value types looked up in a typed schema (the dataclasses of ``vaegan.config.schema``): which
keys do not exist, with the closest one, and which values cannot have their key's type."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, get_args, get_type_hints

from omegaconf import DictConfig


def _schema_of(annotation: Any) -> type | None:
    """The dataclass of a field typed ``X`` or ``Optional[X]``; None for a plain value."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    return next((arg for arg in get_args(annotation) if dataclasses.is_dataclass(arg)), None)


def unknown_key(path: str, schema: type) -> str | None:
    """None when the dotted ``path`` is a key of ``schema``; otherwise the message, with the closest
    key's name. Keys below an untyped value (``Any``) are not checked."""
    parts = path.split(".")
    for depth, part in enumerate(parts):
        fields = get_type_hints(schema)
        if part not in fields:
            parent = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f"; did you mean {'.'.join([*parts[:depth], close[0]])}?" if close else ""
            where = f"no key {part!r} in {parent}" if parent else f"no top-level key {part!r}"
            return f"{path}: {where}{hint} (python -m vaegan.run --cfg job prints every key)"
        schema = _schema_of(fields[part])
        if schema is None:
            return None
    return None


def leaf_type(path: str, schema: type) -> Any:
    """The annotation of ``schema``'s key ``path`` (None when it is not a plain value's key)."""
    parts = path.split(".")
    for part in parts[:-1]:
        schema = _schema_of(get_type_hints(schema).get(part))
        if schema is None:
            return None
    annotation = get_type_hints(schema).get(parts[-1])
    return None if annotation is None or _schema_of(annotation) is not None else annotation


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def wrong_type(path: str, value: Any, schema: type) -> str | None:
    """Why ``value`` cannot be ``schema``'s key ``path`` (e.g. data.batch_size=many); None when it can."""
    annotation = leaf_type(path, schema)
    args = get_args(annotation)
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if value is None:
        return None if optional or kind is Any else f"{path}=null: must be {TYPE_NAMES.get(kind, 'set')}"
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool)}.get(kind)
    if ok is None or ok(value):
        return None
    return f"{path}={value}: must be {TYPE_NAMES[kind]}{' or null' if optional else ''}"


def unknown_keys(cfg: DictConfig, schema: type, prefix: str = "", root: type | None = None) -> list[str]:
    """The message of each key of ``cfg`` that ``schema`` does not have (e.g. added with ``+``);
    ``prefix`` and ``root``: where ``cfg`` lies in the config of schema ``root``."""
    root = root or schema
    fields, found = get_type_hints(schema), []
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in fields:
            found.append(unknown_key(path, root))
            continue
        sub, value = _schema_of(fields[key]), cfg.get(key)
        if sub is not None and isinstance(value, DictConfig):
            found += unknown_keys(value, sub, f"{path}.", root)
    return found
