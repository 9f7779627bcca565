"""ImageNet-family datasets held as CLIP_benchmark webdataset shards, read as indexed map-style datasets.

Layout (read in CLIP_benchmark's ``clip_benchmark/datasets/builder.py::build_wds_dataset`` and
``clip_benchmark/webdataset_builder.py::convert_dataset``): a folder per dataset (``wds_imagenet1k``,
``wds_imagenetv2``, ``wds_imagenet_sketch``, ``wds_imagenet-r``, ``wds_imagenet-a``) holding
``test/nshards.txt`` (the shard count n), ``test/0.tar .. test/{n-1}.tar``, ``classnames.txt`` and
``zeroshot_classification_templates.txt``. Each sample is keyed ``s%07d`` (its index in the source dataset)
and holds one image member (``webp``, ``png``, ``jpg`` or ``jpeg``) and a ``cls`` member (ASCII integer label).
The converter writes the source dataset's own labels: ImageFolder targets for Sketch / R / A (so R and A hold
0..199 in sorted-wnid order, with 200 class names) and 0..999 for val / V2.

Samples are read by offset (``os.pread``) from a per-shard index built once with the standard ``tarfile``
module and cached: evaluation needs random access (RobustBench's 5000-image subset, ``--limit``, resumable
positions, attack chunks gathered in subset order), and the ``webdataset`` package (1.0.2) reads shards only
as a stream. The index gives exact per-shard counts, so ranks can take whole shards (``rank_share``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from grace_bench.errors import UserError

SPLIT = "test"
IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # the image members CLIP_benchmark's reader accepts
INDEX_SCHEMA = "grace-bench/wds-index/v1"
LAYOUTS = ("auto", "folders", "wds")


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard: where its image bytes lie and its raw ``cls`` label."""

    shard: int
    key: str
    ext: str
    offset: int
    size: int
    cls: int


def check_layout_name(layout: str) -> str:
    """``layout`` if it is one of ``LAYOUTS``, else a one-line ``UserError``."""
    if layout not in LAYOUTS:
        raise UserError(f"data layout '{layout}' is unknown; pass --data-layout (data_layout) as one of: "
                        f"{', '.join(LAYOUTS)}")
    return layout


def is_wds_folder(path: Path) -> bool:
    """Whether ``path`` looks like a CLIP_benchmark webdataset folder (it has ``test/nshards.txt``)."""
    return (path / SPLIT / "nshards.txt").is_file()


def shard_paths(folder: Path, name: str, fix: str | None = None) -> list[Path]:
    """The shard files named by ``test/nshards.txt``; a one-line ``UserError`` (ending in ``fix``) if the count or a
    shard is bad."""
    fix = fix or f"re-download {folder.name} (CLIP_benchmark webdataset layout) or pass --data-layout folders"
    count_file = folder / SPLIT / "nshards.txt"
    if not count_file.is_file():
        raise UserError(f"{name}: {folder} has no {SPLIT}/nshards.txt, so it is not a webdataset folder; {fix}")
    text = count_file.read_text(encoding="utf-8", errors="replace").strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name}: {count_file} holds '{text[:20]}', not a positive shard count; {fix}")
    paths = [folder / SPLIT / f"{i}.tar" for i in range(int(text))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{name}: {len(missing)} of {len(paths)} shards are missing (e.g. {missing[0]}); {fix}")
    return paths


def _index_cache_path(shard: Path) -> Path:
    from grace_bench.utils.cache import cache_dir

    st = shard.stat()
    ident = f"{shard.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_dir() / "wds-index" / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".json")


def _scan_shard(shard: Path, number: int, name: str) -> list[ShardSample]:
    """Group a shard's members by key (the name up to the first dot of the base name, as webdataset does)."""
    fix = "re-download or rebuild this shard"
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            cls_text: dict[str, bytes] = {}
            for info in tar:
                if not info.isfile():
                    continue
                folder, base = os.path.split(info.name)
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                members.setdefault(key, {})[ext.lower()] = info
                if ext.lower() == "cls":
                    cls_text[key] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(
            f"{name}: shard {shard} cannot be read as a tar file ({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    samples = []
    for key, parts in members.items():
        ext = next((e for e in IMAGE_KEYS if e in parts), None)
        if ext is None or "cls" not in parts:
            what = "no image member (webp/png/jpg/jpeg)" if ext is None else "no cls member"
            raise UserError(f"{name}: sample '{key}' of shard {shard} has {what}; {fix}")
        raw = cls_text[key].decode("ascii", errors="replace").strip()
        if not raw.lstrip("-").isdigit():
            raise UserError(f"{name}: sample '{key}' of shard {shard} has label '{raw[:20]}', not an integer; {fix}")
        info = parts[ext]
        samples.append(ShardSample(number, key, ext, info.offset_data, info.size, int(raw)))
    if not samples:
        raise UserError(f"{name}: shard {shard} holds no samples; {fix}")
    return samples


def index_shard(shard: Path, number: int, name: str, use_cache: bool = True) -> list[ShardSample]:
    """The samples of ``shard`` in tar order, from the index cache when the shard is unchanged."""
    from grace_bench.utils.atomic import atomic_write_json

    cache = _index_cache_path(shard) if use_cache else None
    if cache is not None and cache.is_file():
        try:
            state = json.loads(cache.read_text())
            if state.get("schema") == INDEX_SCHEMA:
                return [ShardSample(number, *row) for row in state["samples"]]
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    samples = _scan_shard(shard, number, name)
    if cache is not None:
        rows = [[s.key, s.ext, s.offset, s.size, s.cls] for s in samples]
        atomic_write_json(cache, {"schema": INDEX_SCHEMA, "shard": str(shard), "samples": rows})
    return samples


def read_shards(folder: Path, name: str, fix: str | None = None) -> tuple[list[Path], list[ShardSample]]:
    """The shard files of ``folder`` and all their samples in dataset order (shard by shard, tar order)."""
    shards = shard_paths(folder, name, fix)
    return shards, [s for number, path in enumerate(shards) for s in index_shard(path, number, name)]


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of ``path`` (empty list when it does not exist)."""
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


class ShardedImageDataset(Dataset):
    """Indexed samples of webdataset shards; yields ``(transform(PIL RGB image), label)``.

    Attributes as ``ImageFolderDataset`` where the harness reads them: ``name``, ``root``, ``classes``,
    ``class_subset``, ``targets``, ``sample_ids``, ``unreadable`` (always empty: a broken image fails loudly),
    plus ``shard_ranges`` ([start, stop) of each shard's samples in dataset order).
    """

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        shards: Sequence[Path],
        samples: Sequence[ShardSample],
        labels: Sequence[int],
        sample_ids: Sequence[str],
        classes: Sequence[str],
        transform: Callable,
        class_subset: Sequence[int] | None = None,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.shards = [str(p) for p in shards]
        self.items = list(samples)
        self.targets = list(labels)
        self.sample_ids = list(sample_ids)
        self.classes = tuple(classes)
        self.class_subset = None if class_subset is None else tuple(class_subset)
        self.transform = transform
        self.unreadable: list = []
        self.skipped: list = []
        counts = [0] * len(self.shards)
        for item in self.items:
            counts[item.shard] += 1
        starts = [sum(counts[:i]) for i in range(len(counts))]
        self.shard_ranges = [(start, start + count) for start, count in zip(starts, counts)]
        self._fds: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, item: ShardSample) -> bytes:
        key = (os.getpid(), item.shard)  # a worker process opens its own descriptors
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(self.shards[item.shard], os.O_RDONLY)
        return os.pread(fd, item.size, item.offset)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:
            with Image.open(io.BytesIO(self._read(item))) as im:
                image = im.convert("RGB")
        except Exception as exc:
            raise UserError(
                f"{self.name}: cannot decode sample '{item.key}' ({item.ext}) of {self.shards[item.shard]} "
                f"({type(exc).__name__}: {exc}); re-download that shard"
            ) from exc
        return self.transform(image), self.targets[index]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not travel to worker processes
        return state

    def report(self, max_paths: int = 20) -> dict:
        """Counts for result files (same keys as image folders where they apply)."""
        return {"root": str(self.root), "layout": "wds", "n": len(self.items), "n_shards": len(self.shards),
                "n_unreadable": 0, "n_skipped": 0, "n_empty_folders": 0}


def rank_share(dataset: Dataset, indices: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's part of ``indices``: whole shards, contiguous and balanced by count, for sharded datasets
    (each rank reads only its own shards); a strided split otherwise. Every index goes to exactly one rank."""
    indices = list(indices)
    ranges = getattr(dataset, "shard_ranges", None)
    if world <= 1:
        return indices
    if not ranges:
        return indices[rank::world]
    shard_of = {}
    for number, (start, stop) in enumerate(ranges):
        for i in range(start, stop):
            shard_of[i] = number
    by_shard: dict[int, list[int]] = {}
    for i in indices:
        by_shard.setdefault(shard_of[i], []).append(i)
    mine, seen = [], 0
    for number in sorted(by_shard):
        part = by_shard[number]
        owner = min(world - 1, (seen * world) // len(indices))  # the rank whose share this shard starts in
        if owner == rank:
            mine.extend(part)
        seen += len(part)
    return mine


def shard_ends(dataset: Dataset, indices: Sequence[int]) -> set[int]:
    """Counts ``p`` such that ``indices[p - 1]`` is the last of its shard in ``indices`` (empty when not sharded):
    the points where a resumable pass saves its state, so a restart loses at most one shard's work."""
    ranges = getattr(dataset, "shard_ranges", None)
    if not ranges:
        return set()
    starts = sorted(start for start, _ in ranges)
    from bisect import bisect_right

    shard = [bisect_right(starts, i) for i in indices]
    return {p for p in range(1, len(shard) + 1) if p == len(shard) or shard[p] != shard[p - 1]}
