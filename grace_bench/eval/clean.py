"""Clean (zero-shot) accuracy of a classifier on one dataset: resumable, shardable, timed."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from grace_bench.data.wds_shards import shard_ends
from grace_bench.errors import UserError
from grace_bench.eval.batching import iter_batches
from grace_bench.eval.metrics import topk_hits
from grace_bench.results.flags import pack_flags, unpack_flags
from grace_bench.runtime import Runtime
from grace_bench.utils.atomic import atomic_write_json

PARTIAL_SCHEMA = "grace-bench/clean-partial/v2"  # v2 adds the per-image flags (a v1 state restarts)
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
        if state.get("schema") != PARTIAL_SCHEMA or state.get("key") != key:
            return None
        flags = unpack_flags(state.get("flags"), str(path))
    except (OSError, json.JSONDecodeError, AttributeError, UserError):
        return None  # unreadable or torn: start over (the order is fixed, the numbers are the same)
    if flags is None or len(flags) != state.get("done"):
        return None
    state["flags"] = flags.tolist()
    return state


def _global_flags(local: list[bool], indices: Sequence[int], flag_order: Sequence[int], runtime: Runtime
                  ) -> np.ndarray:
    """Every rank's flags placed at their index's position in ``flag_order`` (each index is on one rank)."""
    position = {int(i): p for p, i in enumerate(flag_order)}
    placed = torch.zeros(len(flag_order), dtype=torch.int32)
    for i, flag in zip(indices, local):
        placed[position[int(i)]] = int(flag)
    return (runtime.all_reduce_sum(placed) > 0).numpy()


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
    flag_order: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 counts over ``indices`` (this rank's shard), summed across the ranks of ``runtime``.

    ``runtime`` (default: one process) sums the counts on its backend's device (the rank's GPU under NCCL).

    Progress is saved to ``partial_path`` every few batches and whenever a webdataset shard is finished, so a
    killed run resumes at the last saved batch with identical numbers (the order is fixed, no randomness).

    ``top1_flags`` (packed, see ``results.flags``) says per image whether it was correct, in the order of
    ``flag_order``: every index evaluated by any rank (default ``indices``, right for one process).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    num_classes = int(getattr(classifier, "num_classes", 0))
    state = _load_partial(partial_path, partial_key) or {
        "schema": PARTIAL_SCHEMA, "key": partial_key, "done": 0, "top1": 0, "top5": 0, "forward_s": 0.0,
        "flags": [],
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
        hits = topk_hits(logits.float(), labels).cpu()  # one host sync per batch, needed for the counts
        state["forward_s"] += time.perf_counter() - t0
        state["top1"] += int(hits[:, 0].sum())
        state["top5"] += int(hits[:, 1].sum()) if hits.shape[1] > 1 else 0
        state["flags"] += hits[:, 0].tolist()
        before, state["done"] = state["done"], state["done"] + len(labels)
        bar.update(len(labels))
        batches_since_save += 1
        shard_done = any(before < end <= state["done"] for end in ends)
        if partial_path is not None and (batches_since_save >= SAVE_EVERY_BATCHES or shard_done):
            atomic_write_json(partial_path, {**state, "flags": pack_flags(state["flags"])})
            batches_since_save = 0
    bar.close()
    runtime = runtime or Runtime(device=device)
    world = runtime.world_size
    n, top1, top5, fwd = runtime.sum_values([state["done"], state["top1"], state["top5"], state["forward_s"]])
    out: dict[str, Any] = {"n": int(n), "top1": top1 / n if n else 0.0, "correct": int(top1),
                           "forward_seconds": fwd / max(world, 1)}
    if num_classes >= 5:
        out["top5"] = top5 / n if n else 0.0
    if flag_order is None and world > 1:
        raise ValueError("evaluate_clean under several ranks needs flag_order (every rank's indices)")
    order = list(indices) if flag_order is None else list(flag_order)
    flags = state["flags"] if flag_order is None else _global_flags(state["flags"], indices, order, runtime)
    out["top1_flags"] = pack_flags(flags)
    if partial_path is not None:
        partial_path.unlink(missing_ok=True)
    return out
