"""Check the shipped class names against the class list the data itself carries (torchvision folders).

The shipped names are matched to labels by position, so a list in another order would mislabel every prompt
silently. Where the data names its classes (CIFAR's meta files, STL-10's ``class_names.txt``, Food-101's
``meta/classes.txt``, DTD's folders, FGVC-Aircraft's ``variants.txt``, Stanford Cars' ``devkit/cars_meta.mat``),
the shipped names must equal them up to case, ``_``/``-`` and spaces; otherwise a one-line ``UserError`` asks for
a ``classnames.txt``. Missing meta files are not an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from grace_bench.data.image_folders import list_subfolders
from grace_bench.data.wds_shards import read_lines
from grace_bench.errors import UserError


def _cifar_meta(folder: Path) -> list[str] | None:
    from grace_bench.data.zero_shot.safe_pickle import load_array_pickle

    text = {"cifar-10-batches-bin": "batches.meta.txt", "cifar-100-binary": "fine_label_names.txt"}
    if folder.name in text:
        return read_lines(folder / text[folder.name]) or None
    name, key = {"cifar-10-batches-py": ("batches.meta", "label_names"),
                 "cifar-100-python": ("meta", "fine_label_names")}[folder.name]
    if not (folder / name).is_file():
        return None
    names = load_array_pickle(folder / name, f"re-extract {folder.name}").get(key)
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names] if isinstance(names, list) else None


def _stl10(folder: Path) -> list[str] | None:
    return read_lines(folder / "class_names.txt") or None


def _food101(folder: Path) -> list[str] | None:
    return read_lines(folder / "meta" / "classes.txt") or None


def _fgvc_aircraft(folder: Path) -> list[str] | None:
    return read_lines(folder / "data" / "variants.txt") or None


def _cars(folder: Path) -> list[str] | None:
    from scipy.io import loadmat

    path = folder / "devkit" / "cars_meta.mat"
    if not path.is_file():
        return None
    try:
        return [str(n) for n in loadmat(path, squeeze_me=True)["class_names"].ravel()]
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise UserError(f"cars: {path} has no readable class_names ({type(exc).__name__}: {exc}); re-extract the "
                        "devkit, or delete it and put a classnames.txt in its parent folder") from exc


def _dtd(folder: Path) -> list[str] | None:
    images = folder / "dtd" / "images"
    return list_subfolders(images) if images.is_dir() else None


DATA_NAME_READERS: dict[str, Callable[[Path], list[str] | None]] = {
    "cifar10": _cifar_meta, "cifar100": _cifar_meta, "stl10": _stl10, "food101": _food101, "dtd": _dtd,
    "fgvc_aircraft": _fgvc_aircraft, "cars": _cars,
}


def normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def check_shipped_names(key: str, folder: Path, classnames: Sequence[str]) -> None:
    """A one-line ``UserError`` if the data's own class list differs from the shipped ``classnames``."""
    reader = DATA_NAME_READERS.get(key)
    data_names = reader(folder) if reader is not None else None
    if data_names is None:
        return
    if len(data_names) != len(classnames):
        raise UserError(f"{key}: {folder} names {len(data_names)} classes but the shipped list has "
                        f"{len(classnames)}; put a classnames.txt (one name per label) in {folder}")
    for i, (ours, theirs) in enumerate(zip(classnames, data_names)):
        if normalise(ours) != normalise(theirs):
            raise UserError(f"{key}: class {i} of {folder} is '{theirs}' but the shipped name is '{ours}'; put a "
                            f"classnames.txt (one name per label, in the data's order) in {folder}")
