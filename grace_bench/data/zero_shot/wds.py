"""Zero-shot datasets from CLIP_benchmark's webdataset shards (read with ``grace_bench.data.wds_shards``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from grace_bench.data.wds_shards import ShardedImageDataset, read_shards
from grace_bench.errors import UserError


def load_shards(key: str, folder: Path, classnames: Sequence[str], transform) -> ShardedImageDataset:
    """Dataset ``key`` from the shard folder ``folder``; every ``cls`` must index ``classnames``."""
    fix = f"re-download {folder.name} from CLIP_benchmark's Hugging Face repo (see docs/zero-shot-data.md)"
    shards, samples = read_shards(folder, key, fix)
    bad = next((s for s in samples if not 0 <= s.cls < len(classnames)), None)
    if bad is not None:
        raise UserError(
            f"{key}: sample '{bad.key}' of {shards[bad.shard]} has label {bad.cls}, outside the {len(classnames)} "
            f"class names in use; put the dataset's own classnames.txt in {folder} (one name per label) or {fix}"
        )
    return ShardedImageDataset(
        name=key, root=folder, shards=shards, samples=samples, labels=[s.cls for s in samples],
        sample_ids=[f"{s.shard}/{s.key}" for s in samples], classes=tuple(classnames), transform=transform,
    )
