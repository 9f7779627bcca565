"""Load one zero-shot dataset and its prompts, in whichever layout the data root holds it."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from grace_bench.data.suite_spec import DataContext
from grace_bench.data.zero_shot import arrays, file_lists
from grace_bench.data.zero_shot.locate import Location, locate
from grace_bench.data.zero_shot.name_check import check_shipped_names
from grace_bench.data.zero_shot.prompts import Prompts, dataset_prompts
from grace_bench.data.zero_shot.wds import load_shards

IMAGENET = "imagenet1k"  # read by the imagenet suite's own loaders (image folders or wds_imagenet1k)
FOLDER_READERS = {
    "cifar10": arrays.load_cifar,
    "cifar100": arrays.load_cifar,
    "stl10": arrays.load_stl10,
    "pets": file_lists.load_pets,
    "flowers102": file_lists.load_flowers102,
    "dtd": file_lists.load_dtd,
    "food101": file_lists.load_food101,
    "eurosat": file_lists.load_eurosat,
    "fgvc_aircraft": file_lists.load_fgvc_aircraft,
    "cars": file_lists.load_cars,
    "tinyimagenet": file_lists.load_tinyimagenet,
}
DATA_CLASSNAMES = {"tinyimagenet": file_lists.tinyimagenet_classnames}  # names read from the data (folders layout)


def _imagenet_location(ctx: DataContext) -> Location | None:
    from grace_bench.data.imagenet import shard_folder

    shards = shard_folder("imagenet", ctx)
    return Location("wds", shards) if shards is not None else None


def prompts_at(key: str, location: Location | None) -> Prompts:
    """The prompts of ``key`` found at ``location`` (None: the shipped lists only)."""
    if location is None:
        return dataset_prompts(key, None)
    data_names = None
    if location.layout == "folders" and key in DATA_CLASSNAMES:
        data_names = DATA_CLASSNAMES[key](key, location.path)
    return dataset_prompts(key, location.path, data_names)


def zero_shot_prompts(key: str, ctx: DataContext) -> Prompts:
    """The prompts of ``key`` under ``ctx`` (the dataset folder's files beat the shipped lists)."""
    if key == IMAGENET:
        return prompts_at(key, _imagenet_location(ctx))
    return prompts_at(key, locate(key, ctx))


def prompt_lists(key: str, ctx: DataContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(classnames, templates)`` of ``key``: the ``DatasetSpec.prompts`` of the zero-shot suite."""
    prompts = zero_shot_prompts(key, ctx)
    return prompts.classnames, prompts.templates


def load_zero_shot(key: str, ctx: DataContext) -> Dataset:
    """Dataset ``key`` as ``(image, label)`` pairs; labels index ``zero_shot_prompts(key, ctx).classnames``."""
    transform = ctx.pixel_transform()
    if key == IMAGENET:
        from grace_bench.data.imagenet import imagenet_val

        dataset = imagenet_val(ctx)
        dataset.classes = zero_shot_prompts(key, ctx).classnames
        return dataset
    location = locate(key, ctx)
    prompts = prompts_at(key, location)
    if location.layout == "wds":
        return load_shards(key, location.path, prompts.classnames, transform)
    if prompts.classnames_source == "shipped":
        check_shipped_names(key, location.path, prompts.classnames)
    return FOLDER_READERS[key](key, Path(location.path), prompts.classnames, transform)
