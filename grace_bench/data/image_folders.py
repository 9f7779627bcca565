"""Robust ImageFolder-like loading: explicit folder->label maps, checked layouts, counted unreadable files.

Unlike ``torchvision.datasets.ImageFolder`` the label of a folder is given, never inferred from the sorted
folder list (so ``0..999`` folders or a 200-class subset cannot be silently mislabelled).

Policy for bad files (skip-and-count at load time, never silent):

- Every regular file inside a class folder is a candidate. Files whose suffix is not an image extension
  (``.DS_Store``, ``README``), and image files lying outside the class folders, go to ``dataset.skipped``.
- Each image file is then checked when the dataset is built (``GRACE_BENCH_VERIFY_IMAGES``): ``header``
  (default) opens it and parses the header, ``full`` decodes every pixel, ``none`` checks nothing. Files that
  fail go to ``dataset.unreadable`` and are left out of the samples.
- Either list being non-empty raises one ``UnreadableImagesWarning`` naming the count and a few paths;
  ``dataset.report()`` carries the counts into result files. A dataset with no readable image is a
  ``UserError``.
- A class folder with no readable image (empty, or holding only unreadable or non-image files) is a
  ``UserError`` naming the first few and the count, unless ``allow_empty_classes`` (``eval
  --allow-empty-classes``); then they are counted in ``dataset.report()``.
- An image that passed the check but fails to decode later (a body truncated after a valid header) raises a
  ``UserError`` naming the file, rather than being replaced or dropped mid-evaluation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from grace_bench.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
VERIFY_ENV = "GRACE_BENCH_VERIFY_IMAGES"
VERIFY_MODES = ("header", "full", "none")
PROGRESS_MIN_FILES = 2000


class MissingDatasetError(UserError):
    """A dataset folder does not exist (the harness may skip an ``optional`` dataset on this error)."""


class UnreadableImagesWarning(UserWarning):
    """Some files of a dataset were left out (unreadable images or non-image files); see ``dataset.report()``."""


@dataclass(frozen=True)
class BadFile:
    """A file left out of a dataset, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    """An image file to be checked: its path, its label and its id (``folder/file``)."""

    path: str
    label: int
    sample_id: str


def verify_mode(mode: str | None = None) -> str:
    """The image check mode: ``mode`` if given, else ``$GRACE_BENCH_VERIFY_IMAGES``, else ``header``."""
    mode = mode or os.environ.get(VERIFY_ENV) or "header"
    if mode not in VERIFY_MODES:
        raise UserError(f"image check mode '{mode}' is unknown; set {VERIFY_ENV} to one of: {', '.join(VERIFY_MODES)}")
    return mode


def is_image_file(name: str) -> bool:
    """Whether ``name`` has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_subfolders(root: Path) -> list[str]:
    """Sorted names of the non-hidden subfolders of ``root``."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def list_files(folder: Path) -> list[str]:
    """Sorted names of the regular files in ``folder`` (hidden ones included: they are reported, not hidden)."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file())


def require_folder(name: str, path: Path, fix: str) -> Path:
    """``path`` if it is a directory, else a ``MissingDatasetError`` naming ``fix``."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise MissingDatasetError(f"{name}: {path} {what}; {fix}")
    return path


def validate_class_folders(
    name: str,
    root: Path,
    found: Sequence[str],
    allowed: Collection[str],
    *,
    expected_count: int | None,
    what: str,
    fix: str,
) -> None:
    """Raise a one-line ``UserError`` if ``found`` has a folder not in ``allowed`` or the wrong count.

    ``what`` describes an allowed folder (e.g. "an ImageNet-R wnid"); ``expected_count`` None allows any
    non-empty subset of ``allowed``.
    """
    if not found:
        raise UserError(f"{name} at {root} has no class folders; {fix}")
    unknown = [f for f in found if f not in allowed]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UserError(f"{name} at {root} has folder '{unknown[0]}'{more} that is not {what}; {fix}")
    if expected_count is not None and len(found) != expected_count:
        missing = sorted(set(allowed) - set(found))[:3]
        hint = f" (missing e.g. {', '.join(missing)})" if missing else ""
        raise UserError(f"{name} at {root} has {len(found)} class folders, expected {expected_count}{hint}; {fix}")


def collect_class_folders(
    root: Path, folder_labels: Mapping[str, int]
) -> tuple[list[Candidate], list[BadFile], list[str]]:
    """Candidates from ``root/<folder>/<file>`` for each folder of ``folder_labels``.

    Returns (image candidates, skipped files, names of empty class folders). Image files directly under
    ``root`` are reported as skipped (they belong to no class); other root files (a README) are ignored.
    """
    candidates: list[Candidate] = []
    skipped = [
        BadFile(str(root / f), "image outside any class folder") for f in list_files(root) if is_image_file(f)
    ]
    empty: list[str] = []
    for folder, label in sorted(folder_labels.items()):
        names = list_files(root / folder)
        if not any(is_image_file(f) for f in names):
            empty.append(folder)
        for f in names:
            path = str(root / folder / f)
            if is_image_file(f):
                candidates.append(Candidate(path, label, f"{folder}/{f}"))
            else:
                skipped.append(BadFile(path, "not an image file extension"))
    return candidates, skipped, empty


def check_image(path: str, mode: str) -> str | None:
    """None if ``path`` opens as an image under ``mode`` (``header`` or ``full``), else the reason."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if mode == "full":
                im.load()
        if width <= 0 or height <= 0:
            return f"empty image size {width}x{height}"
    except Exception as exc:  # noqa: BLE001 - any failure to open means the file is unreadable
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_all(paths: Sequence[str], mode: str, desc: str) -> list[str | None]:
    from tqdm.auto import tqdm

    if mode == "none" or not paths:
        return [None] * len(paths)
    workers = min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: check_image(p, mode), paths)
        return list(tqdm(results, total=len(paths), desc=desc, unit="img", disable=len(paths) < PROGRESS_MIN_FILES))


class ImageFolderDataset(Dataset):
    """Checked image files with explicit labels; yields ``(transform(PIL RGB image), label)``.

    Attributes: ``name``, ``root``, ``classes`` (names of labels 0..K-1), ``class_subset`` (indices of those
    labels in a larger head, or None), ``samples`` [(path, label)], ``sample_ids`` (``folder/file``),
    ``targets``, ``unreadable`` and ``skipped`` (lists of ``BadFile``), ``empty_folders``, ``verify``.
    """

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        candidates: Sequence[Candidate],
        classes: Sequence[str],
        transform: Callable,
        class_subset: Sequence[int] | None = None,
        skipped: Iterable[BadFile] = (),
        empty_folders: Sequence[str] = (),
        verify: str | None = None,
        fix: str = "check the dataset folder",
        allow_empty_classes: bool = False,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.classes = tuple(classes)
        self.class_subset = None if class_subset is None else tuple(class_subset)
        self.transform = transform
        self.verify = verify_mode(verify)
        self.skipped = list(skipped)
        self.empty_folders = list(empty_folders)
        reasons = _check_all([c.path for c in candidates], self.verify, f"checking {name}")
        good = [c for c, r in zip(candidates, reasons) if r is None]
        self.unreadable = [BadFile(c.path, r) for c, r in zip(candidates, reasons) if r is not None]
        self.empty_folders = sorted(self.empty_folders + _emptied_folders(candidates, good, self.empty_folders))
        self.samples = [(c.path, c.label) for c in good]
        self.sample_ids = [c.sample_id for c in good]
        self.targets = [c.label for c in good]
        if self.unreadable or self.skipped:
            warnings.warn(self._bad_files_message(), UnreadableImagesWarning, stacklevel=2)
        if not self.samples:
            raise UserError(
                f"{name} at {self.root} has no readable images ({len(self.unreadable)} unreadable, "
                f"{len(self.skipped)} skipped); {fix}"
            )
        if self.empty_folders and not allow_empty_classes:
            shown = ", ".join(self.empty_folders[:3])
            more = f" and {len(self.empty_folders) - 3} more" if len(self.empty_folders) > 3 else ""
            raise UserError(
                f"{name} at {self.root} has {len(self.empty_folders)} class folder(s) without a readable image "
                f"({shown}{more}); {fix}, or pass --allow-empty-classes (allow_empty_classes=True) to evaluate the "
                "remaining classes"
            )

    def _bad_files_message(self) -> str:
        bad = self.unreadable + self.skipped
        shown = "; ".join(f"{b.path} ({b.reason})" for b in bad[:3])
        return (
            f"{self.name}: left out {len(self.unreadable)} unreadable image(s) and {len(self.skipped)} non-image "
            f"file(s) under {self.root}, e.g. {shown}; counts are recorded in the results"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as exc:
            raise UserError(
                f"{self.name}: cannot decode {path} ({type(exc).__name__}: {exc}); delete or replace it, or set "
                f"{VERIFY_ENV}=full to find and skip every such file when the dataset loads"
            ) from exc
        return self.transform(image), label

    def report(self, max_paths: int = 20) -> dict:
        """Counts (and the first few paths) of the files left out, for result files."""
        return {
            "root": str(self.root),
            "n": len(self.samples),
            "n_unreadable": len(self.unreadable),
            "n_skipped": len(self.skipped),
            "n_empty_folders": len(self.empty_folders),
            "empty_folders": list(self.empty_folders[:max_paths]),
            "verify": self.verify,
            "unreadable": [b.path for b in self.unreadable[:max_paths]],
            "skipped": [b.path for b in self.skipped[:max_paths]],
        }


def _emptied_folders(candidates: Sequence[Candidate], good: Sequence[Candidate], known: Collection[str]) -> list[str]:
    """Class folders that had image files but none of them readable (folder = first part of the sample id)."""
    had = dict.fromkeys(c.sample_id.rsplit("/", 1)[0] for c in candidates)
    kept = {c.sample_id.rsplit("/", 1)[0] for c in good}
    return [f for f in had if f not in kept and f not in known]


def indices_for_ids(dataset: ImageFolderDataset, ids: Sequence[str]) -> list[int]:
    """Dataset indices of ``ids`` (``folder/file`` sample ids), in the order of ``ids``.

    Raises a one-line ``UserError`` if any id is missing (or was left out as unreadable).
    """
    position = {sid: i for i, sid in enumerate(dataset.sample_ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        bad = {Path(b.path).name for b in dataset.unreadable}
        n_bad = sum(1 for m in missing if m.rsplit("/", 1)[-1] in bad)
        why = f", {n_bad} of them unreadable" if n_bad else ""
        raise UserError(
            f"{dataset.name} at {dataset.root} lacks {len(missing)} of the {len(ids)} requested images{why} "
            f"(e.g. {missing[0]}); restore them from the original archive, or evaluate fewer (--n-adv)"
        )
    return [position[i] for i in ids]
