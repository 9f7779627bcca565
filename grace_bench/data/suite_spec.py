"""What an evaluation suite is: its datasets, prompts, splits and every default it owns.

A ``Suite`` names its class names and prompt templates, its ID training split, and a list of
``DatasetSpec`` entries with a role (``id``, ``ood``, ``nat-adv``) and an optional class subset
(indices into the suite's classes, e.g. the 200 ImageNet-R/A classes). Nothing is loaded until
``DatasetSpec.load`` is called. A suite owns its defaults: the adversarial protocol (``attack``, ``eps``,
``n_adv``), the model it evaluates by default (``default_checkpoint``, and ``model_archs``: the architectures
evaluated on it when no suite is named), data-loader workers, and fine-tuning defaults (``training``, see
``grace_bench.data.training_defaults``): micro carries its study budget, ImageNet keeps the paper defaults.
The registry of suites by name is ``grace_bench.data.suites``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from grace_bench.data.training_defaults import TrainingDefaults
from grace_bench.errors import UserError

Role = Literal["id", "ood", "nat-adv", "zero-shot"]
# (classnames, templates) of one dataset, given the context (a user's files in the dataset folder may override
# the shipped lists); a dataset without one uses its suite's.
PromptSource = Callable[["DataContext"], tuple[Sequence[str], Sequence[str]]]
DEFAULT_ATTACK = "apgd-ce[restarts=1]"
DEFAULT_EPS = "4/255"


@dataclass(frozen=True)
class DataContext:
    """What a loader needs: the data root (ImageNet-family suites) and the model's pixel preprocess.

    ``allow_empty_classes``: image-folder datasets accept class folders without a readable image (counted in
    the result) instead of refusing them. ``layout``: how ImageNet-family datasets are held under ``root``:
    ``auto`` (image folder if present, else CLIP_benchmark ``wds_<name>`` shards), ``folders`` or ``wds``.
    """

    root: Path | None = None
    preprocess: Callable | None = None
    image_size: int | None = None
    allow_empty_classes: bool = False
    layout: str = "auto"

    def pixel_transform(self) -> Callable:
        """The transform image files go through: the model's pixel preprocess, else a resize to ``image_size``."""
        if self.preprocess is not None:
            return self.preprocess
        if self.image_size:
            from grace_bench.utils.transforms import pixel_preprocess

            return pixel_preprocess(self.image_size)
        raise ValueError("DataContext needs a preprocess or an image_size to load image files")


@dataclass(frozen=True)
class DatasetSpec:
    """One evaluation dataset of a suite. ``loader(ctx)`` returns a Dataset of (image in [0,1], label)."""

    name: str
    role: Role
    loader: Callable[[DataContext], Dataset]
    class_subset: Sequence[int] | None = None
    optional: bool = False
    description: str = ""
    prompts: PromptSource | None = None  # per-dataset class names and templates (zero-shot suites)
    attacked: bool = False  # the adversarial protocol runs on this dataset too (zero-shot suites attack every one)

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
    attack: str = DEFAULT_ATTACK  # the adversarial protocol when the caller names none
    eps: str = DEFAULT_EPS
    n_adv: int = 5000
    model_archs: tuple[str, ...] = ()  # architectures this suite evaluates by default; "*": any other
    loader_workers: int = 4  # data-loader workers by default (0 for in-memory data)

    def eval_defaults(self) -> dict[str, object]:
        """The adversarial defaults: ``{"attack", "eps", "n_adv"}``."""
        return {"attack": self.attack, "eps": self.eps, "n_adv": self.n_adv}

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
