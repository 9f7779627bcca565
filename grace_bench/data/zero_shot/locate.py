"""Where a zero-shot dataset lies under the data root, in which layout (``DataContext.layout``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grace_bench.data.image_folders import MissingDatasetError
from grace_bench.data.suite_spec import DataContext
from grace_bench.data.wds_shards import check_layout_name, is_wds_folder
from grace_bench.data.zero_shot.catalog import BY_KEY, ZeroShotInfo
from grace_bench.errors import UserError

DOCS = "docs/zero-shot-data.md"


@dataclass(frozen=True)
class Location:
    """A dataset found on disk: ``wds`` (a CLIP_benchmark shard folder) or ``folders`` (torchvision's layout)."""

    layout: str
    path: Path


def info_for(key: str) -> ZeroShotInfo:
    if key not in BY_KEY:
        raise UserError(f"'{key}' is not a zero-shot dataset; choose one of: {', '.join(BY_KEY)}")
    return BY_KEY[key]


def expected(info: ZeroShotInfo, root: Path) -> str:
    """Both layouts' expected folders, for error messages."""
    shards = root / (info.wds_names[1] if len(info.wds_names) > 1 else info.wds_names[0])
    wds = f"CLIP_benchmark's shards in {shards} (test/nshards.txt, test/0.tar, ...)"
    if not info.torchvision_dirs:
        return f"{wds}; torchvision's layout is not read for {info.title} (see {DOCS})"
    return f"{wds}, or torchvision's layout in {root / info.torchvision_dirs[0]} (see {DOCS})"


# what a torchvision folder holds, where its name equals the dataset key (``DIR/eurosat`` may be the shard folder,
# torchvision's folder, or the parent of ``DIR/eurosat/eurosat``)
MARKERS = {"eurosat": "2750", "dtd": "dtd"}


def _folder_candidate(info: ZeroShotInfo, root: Path) -> Path | None:
    found = [base / rel for rel in info.torchvision_dirs for base in (root, root / info.key)
             if (base / rel).is_dir() and not is_wds_folder(base / rel)]
    marker = MARKERS.get(info.key)
    marked = [p for p in found if marker is None or (p / marker).is_dir()]
    return (marked or found or [None])[0]


def _wds_candidate(info: ZeroShotInfo, root: Path) -> Path | None:
    return next((root / n for n in info.wds_names if (root / n).is_dir()), None)


def locate(key: str, ctx: DataContext) -> Location:
    """The folder of dataset ``key`` under ``ctx.root``: ``auto`` prefers torchvision's layout when both exist.

    A missing dataset is a ``MissingDatasetError`` naming the folders expected in both layouts.
    """
    info = info_for(key)
    layout = check_layout_name(ctx.layout)
    if ctx.root is None:
        raise MissingDatasetError(f"{key}: no data root; pass --data-root DIR (data_root) holding "
                                  f"{expected(info, Path('DIR'))}")
    root = Path(ctx.root).expanduser()
    if layout == "folders" and not info.torchvision_dirs:  # absent in this layout: skipped unless named
        raise MissingDatasetError(f"{key}: {info.title} is read only from CLIP_benchmark's webdataset layout; pass "
                        f"--data-layout wds or auto (data_layout) and put {expected(info, root)}")
    folder = _folder_candidate(info, root) if layout != "wds" else None
    if folder is not None:
        return Location("folders", folder)
    shards = _wds_candidate(info, root) if layout != "folders" else None
    if shards is not None:
        return Location("wds", shards)
    raise MissingDatasetError(f"{key}: not found under {root}; put {expected(info, root)}")

