"""The zero-shot datasets: keys, titles, CLIP_benchmark webdataset folder names and torchvision folders.

``wds_names``: folder names accepted for CLIP_benchmark's webdataset layout (the bare key first, then the names of
CLIP_benchmark's Hugging Face repos, ``clip-benchmark/wds_<name>``, listed in its ``benchmark/wds_datasets.txt``).
``torchvision_dirs``: the folder ``torchvision.datasets.X(root)`` reads under ``root``, for the datasets that have
an on-disk reader here (``grace_bench.data.zero_shot.folders``); an empty tuple means webdataset layout only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ZeroShotInfo:
    """What the loaders need to find one dataset under a data root."""

    key: str
    title: str
    wds_names: tuple[str, ...]
    torchvision_dirs: tuple[str, ...] = ()
    split: str = "test"  # the split evaluated (as CLIP_benchmark's shards hold it)


CATALOG: tuple[ZeroShotInfo, ...] = (
    ZeroShotInfo("cifar10", "CIFAR-10", ("cifar10", "wds_vtab-cifar10", "wds_cifar10"),
                 ("cifar-10-batches-py", "cifar-10-batches-bin")),
    ZeroShotInfo("cifar100", "CIFAR-100", ("cifar100", "wds_vtab-cifar100", "wds_cifar100"),
                 ("cifar-100-python", "cifar-100-binary")),
    ZeroShotInfo("stl10", "STL-10", ("stl10", "wds_stl10"), ("stl10_binary",)),
    ZeroShotInfo("caltech101", "Caltech-101", ("caltech101", "wds_vtab-caltech101", "wds_caltech101")),
    ZeroShotInfo("caltech256", "Caltech-256", ("caltech256", "wds_caltech256")),
    ZeroShotInfo("pets", "Oxford-IIIT Pets", ("pets", "wds_vtab-pets", "wds_pets"), ("oxford-iiit-pet",)),
    ZeroShotInfo("flowers102", "Flowers-102", ("flowers102", "wds_vtab-flowers", "wds_flowers102", "wds_flowers"),
                 ("flowers-102",)),
    ZeroShotInfo("fgvc_aircraft", "FGVC-Aircraft", ("fgvc_aircraft", "wds_fgvc_aircraft"), ("fgvc-aircraft-2013b",)),
    ZeroShotInfo("cars", "Stanford Cars", ("cars", "wds_cars"), ("stanford_cars",)),
    ZeroShotInfo("sun397", "SUN397", ("sun397", "wds_sun397")),
    ZeroShotInfo("food101", "Food-101", ("food101", "wds_food101"), ("food-101",)),
    ZeroShotInfo("eurosat", "EuroSAT", ("eurosat", "wds_vtab-eurosat", "wds_eurosat"), ("eurosat",)),
    ZeroShotInfo("dtd", "DTD", ("dtd", "wds_vtab-dtd", "wds_dtd"), ("dtd",)),
    ZeroShotInfo("pcam", "PCAM", ("pcam", "wds_vtab-pcam", "wds_pcam")),
    ZeroShotInfo("imagenet1k", "ImageNet", ("wds_imagenet1k",), ("imagenet/val", "ILSVRC/Data/CLS-LOC/val")),
    ZeroShotInfo("tinyimagenet", "Tiny-ImageNet", ("tinyimagenet", "wds_tinyimagenet"), ("tiny-imagenet-200",),
                 split="val"),
)
BY_KEY: dict[str, ZeroShotInfo] = {info.key: info for info in CATALOG}
ZERO_SHOT_DATASETS: tuple[str, ...] = tuple(info.key for info in CATALOG)
ZERO_SHOT_TITLES: dict[str, str] = {info.key: info.title for info in CATALOG}
