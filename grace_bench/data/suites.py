"""A declarative, lazy registry of evaluation suites (a new dataset is one entry).

A ``Suite`` names its class names and prompt templates, its ID training split, and a list of
``DatasetSpec`` entries with a role (``id``, ``ood``, ``nat-adv``) and an optional class subset
(indices into the suite's classes, e.g. the 200 ImageNet-R/A classes). Nothing is loaded until
``DatasetSpec.load`` is called. A suite may also own fine-tuning defaults (``training``, see
``grace_bench.data.training_defaults``): micro carries its study budget, ImageNet keeps the paper defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from grace_bench.data.training_defaults import TrainingDefaults
from grace_bench.errors import UserError

Role = Literal["id", "ood", "nat-adv"]


@dataclass(frozen=True)
class DataContext:
    """What a loader needs: the data root (ImageNet-family suites) and the model's pixel preprocess.

    ``allow_empty_classes``: image-folder datasets accept class folders without a readable image (counted in
    the result) instead of refusing them.
    """

    root: Path | None = None
    preprocess: Callable | None = None
    image_size: int | None = None
    allow_empty_classes: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation dataset of a suite. ``loader(ctx)`` returns a Dataset of (image in [0,1], label)."""

    name: str
    role: Role
    loader: Callable[[DataContext], Dataset]
    class_subset: Sequence[int] | None = None
    optional: bool = False
    description: str = ""

    def load(self, ctx: DataContext) -> Dataset:
        return self.loader(ctx)


@dataclass(frozen=True)
class Suite:
    """A named list of datasets sharing class names and evaluation templates."""

    name: str
    classnames: Sequence[str]
    templates: Sequence[str]
    datasets: tuple[DatasetSpec, ...]
    train_loader: Callable[[DataContext, str], Dataset] | None = None
    adv_ids: Callable[[], Sequence[str]] | None = None
    adv_indices: Callable[[Dataset, int | None], list[int]] | None = None
    default_checkpoint: str | None = None
    needs_root: bool = False
    info: dict = field(default_factory=dict)
    training: Callable[[], TrainingDefaults] | None = None  # lazy: may read a file

    def training_defaults(self) -> TrainingDefaults | None:
        """The suite's fine-tuning defaults (None: every unset setting takes the method's paper default)."""
        return self.training() if self.training is not None else None

    def dataset(self, name: str) -> DatasetSpec:
        for d in self.datasets:
            if d.name == name:
                return d
        known = ", ".join(d.name for d in self.datasets)
        raise UserError(f"suite '{self.name}' has no dataset '{name}'; choose one of: {known}")

    def by_role(self, role: Role) -> list[DatasetSpec]:
        return [d for d in self.datasets if d.role == role]

    def train_split(self, ctx: DataContext, split: str = "train") -> Dataset:
        if self.train_loader is None:
            raise UserError(f"suite '{self.name}' has no training split")
        return self.train_loader(ctx, split)


_SUITES: dict[str, Callable[[], Suite]] = {}


def register_suite(name: str, factory: Callable[[], Suite]) -> None:
    """Declare a suite lazily: ``factory`` runs on first ``get_suite(name)``."""
    _SUITES[name] = factory


def get_suite(name: str) -> Suite:
    """The suite called ``name``, or a one-line error listing the known suites."""
    _import_builtin_suites()
    if name not in _SUITES:
        raise UserError(f"unknown suite '{name}'; choose one of: {', '.join(sorted(_SUITES))}")
    return _SUITES[name]()


def list_suites() -> list[str]:
    _import_builtin_suites()
    return sorted(_SUITES)


def _import_builtin_suites() -> None:
    # Importing these modules registers their suites.
    import grace_bench.data.micro  # noqa: F401

    try:
        import grace_bench.data.imagenet  # noqa: F401
    except ModuleNotFoundError as exc:  # the ImageNet module is optional while under construction
        if exc.name != "grace_bench.data.imagenet":
            raise
