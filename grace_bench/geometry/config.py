"""Settings of the geometry diagnostics as dataclasses, and the CLI flags built from them.

Every field is declared with ``setting(default, help, ...)``: its default, a one-line help, and how the
CLI spells it. ``hashed=False`` marks a field that cannot change a number (a data folder, a cache
switch); ``GeometryConfig.numeric()`` is what the resume hash covers. No torch here: the CLI parser is
built from these classes at start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from grace_bench.errors import UserError

NameOf = Callable[[str], str]


def setting(default: Any, help: str, *, flag: str | None = None, type: type | None = None,
            choices: tuple[str, ...] | None = None, minimum: float | None = None, hashed: bool = True,
            list_of: type | None = None) -> Any:
    """A config field: ``default``, one-line ``help``; ``flag`` (default ``--field-name``); ``type`` when the
    default is None; ``minimum`` checked by ``validate``; ``list_of`` for a list field (``nargs='+'``)."""
    meta = {"help": help, "flag": flag, "type": type, "choices": choices, "minimum": minimum, "hashed": hashed,
            "list_of": list_of}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class GeometryConfig:
    """Settings every diagnostic has. Subclasses add theirs; ``REF`` says whether a reference model is used."""

    REF: ClassVar[str] = "never"  # never | optional | required (see ``ref_use``)
    NEEDS_DATA: ClassVar[bool] = False

    seed: int = setting(0, "seed of the data subset and of every random vector")

    def ref_use(self) -> str:
        """``never``, ``optional`` or ``required``: whether this run compares against a reference model."""
        return self.REF

    def numeric(self) -> dict[str, Any]:
        """The settings that can change a number (what the resume hash covers)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("hashed", True)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, name_of: NameOf = str) -> None:
        """Raise ``UserError`` for a bad value; messages call each field ``name_of(field)`` (the CLI: its flag)."""
        for f in fields(self):
            low = f.metadata.get("minimum")
            value = getattr(self, f.name)
            if low is not None and value is not None and value < low:
                raise UserError(f"{name_of(f.name)} must be at least {low:g}, got {value}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise UserError(f"{name_of(f.name)} must be one of {', '.join(choices)}, got {value!r}")
        self.check(name_of)

    def check(self, name_of: NameOf) -> None:
        """Checks across fields (subclasses); raise ``UserError`` naming ``name_of(field)``."""


@dataclass
class DataConfig(GeometryConfig):
    """Settings of a diagnostic measured on a fixed data subset."""

    NEEDS_DATA: ClassVar[bool] = True

    suite: str | None = setting(None, "suite name (default: micro for micro models, else imagenet)")
    data_root: str | None = setting(None, "root folder of the ImageNet-family datasets", hashed=False)
    dataset: str | None = setting(None, "ID dataset of the suite (default: the suite's first ID dataset)")
    split: str = setting("eval", "data: the ID evaluation set or the suite's training split (default: eval)",
                         choices=("eval", "train"))
    n: int = setting(128, "size of the fixed data subset (default 128)", minimum=1)
    batch_size: int = setting(64, "batch size (the loss is averaged over batches)", minimum=1)


# ------------------------------------------------------------------------------------------------ CLI


def flag_of(f: dataclasses.Field) -> str:
    """The CLI flag of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_names(cls: type[GeometryConfig]) -> dict[str, str]:
    """Field name -> CLI flag, for error messages shown to CLI users."""
    return {f.name: flag_of(f) for f in fields(cls)}


def add_arguments(parser: argparse.ArgumentParser, cls: type[GeometryConfig]) -> None:
    """One flag per field of ``cls``, with the field's default and help."""
    for f in fields(cls):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta.get("help")}
        if isinstance(default, bool):
            parser.add_argument(flag_of(f), action="store_true", **kwargs)
            continue
        if meta.get("list_of") is not None:
            kwargs.update(nargs="+", type=meta["list_of"])
        else:
            kwargs["type"] = meta.get("type") or (type(default) if default is not None else str)
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        parser.add_argument(flag_of(f), default=default, **kwargs)


def from_namespace(cls: type[GeometryConfig], args: argparse.Namespace) -> GeometryConfig:
    """The config of ``cls`` from parsed CLI arguments (other attributes of ``args`` are ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def from_dict(cls: type[GeometryConfig], values: dict[str, Any], where: str = "settings") -> GeometryConfig:
    """The config of ``cls`` from a mapping of field names; unknown names are a ``UserError``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; "
                        f"use {', '.join(sorted(known))}")
    return cls(**values)
