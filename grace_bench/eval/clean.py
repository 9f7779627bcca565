"""Clean (zero-shot) accuracy of a classifier on one dataset: resumable, shardable, timed."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from grace_bench.data.wds_shards import shard_ends
from grace_bench.eval.batching import iter_batches
from grace_bench.eval.metrics import topk_correct
from grace_bench.runtime import Runtime
from grace_bench.utils.atomic import atomic_write_json

PARTIAL_SCHEMA = "grace-bench/clean-partial/v1"
SAVE_EVERY_BATCHES = 20


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _load_partial(path: Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if state.get("schema") == PARTIAL_SCHEMA and state.get("key") == key else None


@torch.no_grad()
def evaluate_clean(
    classifier: torch.nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: int = 256,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    partial_path: Path | None = None,
    partial_key: str = "",
    runtime: Runtime | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Top-1/top-5 counts over ``indices`` (this rank's shard), summed across the ranks of ``runtime``.

    ``runtime`` (default: one process) sums the counts on its backend's device (the rank's GPU under NCCL).

    Progress is saved to ``partial_path`` every few batches and whenever a webdataset shard is finished, so a
    killed run resumes at the last saved batch with identical numbers (the order is fixed, no randomness).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    num_classes = int(getattr(classifier, "num_classes", 0))
    state = _load_partial(partial_path, partial_key) or {
        "schema": PARTIAL_SCHEMA, "key": partial_key, "done": 0, "top1": 0, "top5": 0, "forward_s": 0.0,
    }
    todo = list(indices)[state["done"]:]
    ends = shard_ends(dataset, indices)
    bar = tqdm(total=len(indices), initial=state["done"], desc=desc, unit="img", disable=not progress, leave=False)
    batches_since_save = 0
    for images, labels in iter_batches(dataset, todo, batch_size, num_workers=num_workers,
                                       pin_memory=device.type == "cuda"):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        t0 = time.perf_counter()
        with _autocast(device, precision):
            logits = classifier(images)
        hits = topk_correct(logits.float(), labels)  # one host sync per batch, needed for the counts
        state["forward_s"] += time.perf_counter() - t0
        state["top1"] += hits[1]
        state["top5"] += hits.get(5, 0)
        before, state["done"] = state["done"], state["done"] + len(labels)
        bar.update(len(labels))
        batches_since_save += 1
        shard_done = any(before < end <= state["done"] for end in ends)
        if partial_path is not None and (batches_since_save >= SAVE_EVERY_BATCHES or shard_done):
            atomic_write_json(partial_path, state)
            batches_since_save = 0
    bar.close()
    runtime = runtime or Runtime(device=device)
    world = runtime.world_size
    n, top1, top5, fwd = runtime.sum_values([state["done"], state["top1"], state["top5"], state["forward_s"]])
    out: dict[str, Any] = {"n": int(n), "top1": top1 / n if n else 0.0, "correct": int(top1),
                           "forward_seconds": fwd / max(world, 1)}
    if num_classes >= 5:
        out["top5"] = top5 / n if n else 0.0
    if partial_path is not None:
        partial_path.unlink(missing_ok=True)
    return out
