"""Datasets stored as image files in torchvision's layouts: Pets, Flowers-102, DTD, Food-101, EuroSAT,
FGVC-Aircraft, Stanford Cars and Tiny-ImageNet.

Each reader takes the folder torchvision reads (``oxford-iiit-pet``, ``flowers-102``, ``dtd``, ``food-101``,
``eurosat``, ``fgvc-aircraft-2013b``, ``stanford_cars``, ``tiny-imagenet-200``), builds (file, label) pairs from
the dataset's own split lists (its test split; EuroSAT has none, so all its images, as torchvision gives them) and
returns an ``ImageFolderDataset`` (bad image files are skipped and counted, see ``grace_bench.data.image_folders``).
Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from grace_bench.data.image_folders import Candidate, ImageFolderDataset, is_image_file, list_files, list_subfolders
from grace_bench.data.wds_shards import read_lines
from grace_bench.errors import UserError

DOCS = "docs/zero-shot-data.md"


def _need(key: str, path: Path, fix: str) -> Path:
    if not path.exists():
        raise UserError(f"{key}: {path} does not exist; {fix}")
    return path


def _dataset(key: str, folder: Path, pairs: Sequence[tuple[Path, int]], classnames: Sequence[str], transform,
             fix: str, base: Path) -> ImageFolderDataset:
    bad = next((lab for _, lab in pairs if not 0 <= lab < len(classnames)), None)
    if bad is not None:
        raise UserError(f"{key}: {folder} has label {bad} outside the {len(classnames)} class names in use; put a "
                        f"classnames.txt with one name per class in {folder}, or {fix}")
    candidates = [Candidate(str(p), lab, p.relative_to(base).as_posix()) for p, lab in pairs]
    return ImageFolderDataset(name=key, root=folder, candidates=candidates, classes=classnames, transform=transform,
                              fix=fix)


def load_pets(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``annotations/test.txt`` lines ``<image id> <class 1..37> <species> <breed>``; images ``images/<id>.jpg``."""
    fix = f"re-extract images.tar.gz and annotations.tar.gz into {folder} (see {DOCS})"
    pairs = []
    for line in read_lines(_need(key, folder / "annotations" / "test.txt", fix)):
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise UserError(f"{key}: {folder / 'annotations' / 'test.txt'} has line '{line[:40]}', not "
                            f"'<image id> <class id> ...'; {fix}")
        pairs.append((folder / "images" / f"{parts[0]}.jpg", int(parts[1]) - 1))
    return _dataset(key, folder, pairs, classnames, transform, fix, folder)


def load_flowers102(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``imagelabels.mat`` (labels 1..102 of every image), ``setid.mat`` (``tstid``), ``jpg/image_%05d.jpg``."""
    from scipy.io import loadmat

    fix = f"re-download 102flowers.tgz, imagelabels.mat and setid.mat into {folder} (see {DOCS})"
    try:
        labels = loadmat(_need(key, folder / "imagelabels.mat", fix))["labels"].ravel()
        test_ids = loadmat(_need(key, folder / "setid.mat", fix))["tstid"].ravel()
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise UserError(f"{key}: {folder} has an unreadable imagelabels.mat or setid.mat "
                        f"({type(exc).__name__}: {exc}); {fix}") from exc
    bad = next((int(i) for i in test_ids if not 1 <= int(i) <= labels.size), None)
    if bad is not None:
        raise UserError(f"{key}: setid.mat names image {bad}, but imagelabels.mat labels {labels.size}; {fix}")
    pairs = [(folder / "jpg" / f"image_{int(i):05d}.jpg", int(labels[int(i) - 1]) - 1) for i in test_ids]
    return _dataset(key, folder, pairs, classnames, transform, fix, folder)


def load_dtd(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``dtd/labels/test1.txt`` lines ``<class>/<file>`` (partition 1, torchvision's default); classes are the
    sorted folders of ``dtd/images``."""
    data = folder / "dtd"
    fix = f"extract dtd-r1.0.1.tar.gz into {folder} (so {data / 'images'} exists; see {DOCS})"
    classes = list_subfolders(_need(key, data / "images", fix))
    index = {c: i for i, c in enumerate(classes)}
    pairs = []
    for line in read_lines(_need(key, data / "labels" / "test1.txt", fix)):
        cls = line.split("/", 1)[0]
        if cls not in index:
            raise UserError(f"{key}: {data / 'labels' / 'test1.txt'} lists '{line[:60]}', whose class folder is "
                            f"not in {data / 'images'}; {fix}")
        pairs.append((data / "images" / line, index[cls]))
    return _dataset(key, folder, pairs, classnames, transform, fix, data)


def load_food101(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``meta/classes.txt`` (label order) and ``meta/test.txt`` lines ``<class>/<id>``; images ``images/*.jpg``."""
    fix = f"re-extract food-101.tar.gz so that {folder / 'meta'} and {folder / 'images'} exist (see {DOCS})"
    index = {c: i for i, c in enumerate(read_lines(_need(key, folder / "meta" / "classes.txt", fix)))}
    pairs = []
    for line in read_lines(_need(key, folder / "meta" / "test.txt", fix)):
        cls = line.split("/", 1)[0]
        if cls not in index:
            raise UserError(f"{key}: {folder / 'meta' / 'test.txt'} lists '{line[:60]}', whose class is not in "
                            f"meta/classes.txt; {fix}")
        pairs.append((folder / "images" / f"{line}.jpg", index[cls]))
    return _dataset(key, folder, pairs, classnames, transform, fix, folder)


def load_eurosat(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``2750/<Class>/*.jpg``, classes in sorted folder order, every image (torchvision's EuroSAT has no split)."""
    data = folder / "2750"
    fix = f"extract EuroSAT.zip into {folder} (so {data} holds the 10 class folders; see {DOCS})"
    classes = list_subfolders(_need(key, data, fix))
    pairs = [(data / c / f, i) for i, c in enumerate(classes) for f in list_files(data / c) if is_image_file(f)]
    if not pairs:
        raise UserError(f"{key}: {data} holds no images; {fix}")
    return _dataset(key, folder, pairs, classnames, transform, fix, data)


def tinyimagenet_wnids(key: str, folder: Path) -> list[str]:
    """The 200 class wnids of Tiny-ImageNet in label order (sorted, as ``ImageFolder`` on its train split)."""
    fix = f"re-extract tiny-imagenet-200.zip so that {folder / 'wnids.txt'} exists (see {DOCS})"
    return sorted(read_lines(_need(key, folder / "wnids.txt", fix)))


def tinyimagenet_classnames(key: str, folder: Path) -> tuple[str, ...]:
    """Tiny-ImageNet's class names: CLIP_benchmark's ImageNet-1k name of each wnid."""
    from grace_bench.data.imagenet_meta import wnid_to_index
    from grace_bench.data.zero_shot.prompts import shipped_classnames

    names, index = shipped_classnames("imagenet1k"), wnid_to_index()
    wnids = tinyimagenet_wnids(key, folder)
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise UserError(f"{key}: {folder / 'wnids.txt'} has '{unknown[0]}', not an ImageNet-1k wnid; re-extract "
                        "tiny-imagenet-200.zip, or put a classnames.txt in that folder")
    return tuple(names[index[w]] for w in wnids)


def load_tinyimagenet(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """Tiny-ImageNet val: ``val/val_annotations.txt`` lines ``<file>\\t<wnid>\\t...``, images ``val/images/``."""
    fix = f"re-extract tiny-imagenet-200.zip into {folder.parent} (see {DOCS})"
    index = {w: i for i, w in enumerate(tinyimagenet_wnids(key, folder))}
    pairs = []
    for line in read_lines(_need(key, folder / "val" / "val_annotations.txt", fix)):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise UserError(f"{key}: {folder / 'val' / 'val_annotations.txt'} has line '{line[:60]}', not "
                            f"'<file> <wnid from wnids.txt> ...'; {fix}")
        pairs.append((folder / "val" / "images" / parts[0], index[parts[1]]))
    return _dataset(key, folder, pairs, classnames, transform, fix, folder)


def load_fgvc_aircraft(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``data/variants.txt`` (label order) and ``data/images_variant_test.txt`` lines ``<image id> <variant>``;
    images ``data/images/<id>.jpg`` (whole images, banner kept, as torchvision reads them)."""
    data = folder / "data"
    fix = f"re-extract fgvc-aircraft-2013b.tar.gz so that {data} exists (see {DOCS})"
    index = {v: i for i, v in enumerate(read_lines(_need(key, data / "variants.txt", fix)))}
    pairs = []
    for line in read_lines(_need(key, data / "images_variant_test.txt", fix)):
        image, _, variant = line.partition(" ")
        if variant not in index:
            raise UserError(f"{key}: {data / 'images_variant_test.txt'} has line '{line[:60]}', whose variant is not "
                            f"in variants.txt; {fix}")
        pairs.append((data / "images" / f"{image}.jpg", index[variant]))
    return _dataset(key, folder, pairs, classnames, transform, fix, folder)


def load_cars(key: str, folder: Path, classnames: Sequence[str], transform) -> ImageFolderDataset:
    """``cars_test_annos_withlabels.mat`` (``annotations``: ``fname``, ``class`` 1..196) and ``cars_test/``."""
    from scipy.io import loadmat

    fix = f"put cars_test/, cars_test_annos_withlabels.mat and devkit/ in {folder} (see {DOCS})"
    path = _need(key, folder / "cars_test_annos_withlabels.mat", fix)
    try:
        annotations = loadmat(path, squeeze_me=True)["annotations"]
        pairs = [(folder / "cars_test" / str(a["fname"]), int(a["class"]) - 1) for a in annotations.ravel()]
    except (ValueError, KeyError, OSError, TypeError, IndexError) as exc:
        raise UserError(f"{key}: {path} is not Stanford Cars' test annotation file ({type(exc).__name__}: {exc}); "
                        f"{fix}") from exc
    return _dataset(key, folder, pairs, classnames, transform, fix, folder)
