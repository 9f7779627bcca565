"""Training-step cost of every fine-tuning method relative to FT: wall time per step and peak memory.

Each method runs in its own subprocess (so peak-memory figures do not leak between methods) through the
real trainer (``Trainer._train_step``: method loss, backward, clipping, AdamW), on random images:

* CPU, always: ``micro-clip`` (the micro suite's model, random weights, 32 px), batch 64.
* CUDA, when available: ``ViT-B-32`` with random weights at 224 px, batch 64, fp32 (and bf16 with --bf16).

Peak memory is ``torch.cuda.max_memory_allocated`` during the timed steps on CUDA. On CPU it is the growth of
the process's peak resident set (``ru_maxrss``) over the resident set before the first training step
(activations, gradients and AdamW state): an approximation that includes allocator caching. Usage::

    python benchmarks/train_step_cost.py [--steps 5] [--methods ft,tecoa,...] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_METHODS = ["ft", "flyp", "tecoa", "fare", "pmg-aft", "ft+lora", "tecoa+lora", "grace"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(method: str, arch: str, device: str, batch: int, steps: int, precision: str) -> dict:
    """Time ``steps`` training steps of ``method`` (after 2 warm-up steps) and measure peak memory."""
    import torch
    from torch.utils.data import TensorDataset

    from grace_bench.finetune.config import FinetuneConfig
    from grace_bench.finetune.trainer import Trainer
    from grace_bench.models.loading import build_clip_model

    torch.manual_seed(0)
    lora = 64 if method == "grace" else 0  # GRACE is LoRA-based (rank 64 in the paper)
    if method.endswith("+lora"):
        method, lora = method[: -len("+lora")], 64
    clip = build_clip_model(arch)
    n = batch * (steps + 2)
    size = clip.image_size
    data = TensorDataset(torch.rand(n, 3, size, size), torch.randint(0, 10, (n,)))
    out = Path(tempfile.mkdtemp()) / "run"
    cfg = FinetuneConfig(method=method, base=arch, suite="micro", out=str(out), max_steps=steps + 2, batch_size=batch,
                         lr=1e-5, warmup_steps=0, progress=False, lora_rank=lora, device=device, precision=precision)
    tr = Trainer(cfg, clip=clip, train_data=data, val_data=None)
    batches = tr._epoch_batches(0, 0)
    cuda = tr.device.type == "cuda"

    def step() -> None:
        images, labels = next(batches)
        tr._train_step(images, labels)
        tr.step += 1

    rss0 = _rss_bytes()  # before the first step: the first steps allocate activations, grads and AdamW state
    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)
    label = method + ("+lora" if lora and method != "grace" else "")
    return {"method": label, "arch": arch, "device": str(tr.device), "batch": batch, "precision": precision,
            "step_s": seconds, "peak_bytes": int(peak), "trainable": int(sum(p.numel() for p in tr.params))}


def run_all(methods: list[str], arch: str, device: str, batch: int, steps: int, precision: str) -> list[dict]:
    from grace_bench.finetune.methods import list_methods

    known = set(list_methods())
    rows = []
    for m in methods:
        if m.split("+")[0] not in known:
            print(f"skip {m}: not registered", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--worker", m, "--arch", arch, "--device", device, "--batch", str(batch),
               "--steps", str(steps), "--precision", precision]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            print(f"{m} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {m}: {rows[-1]['step_s'] * 1000:.1f} ms/step", file=sys.stderr)
    return rows


def table(rows: list[dict], markdown: bool) -> str:
    ref = next((r for r in rows if r["method"] == "ft"), rows[0] if rows else None)
    if ref is None:
        return "(no results)"
    head = ["method", "ms/step", "x FT time", "peak MiB", "x FT memory", "trainable"]
    lines = []
    for r in rows:
        lines.append([r["method"], f"{r['step_s'] * 1000:.1f}", f"{r['step_s'] / ref['step_s']:.2f}",
                      f"{r['peak_bytes'] / 2**20:.0f}",
                      f"{r['peak_bytes'] / ref['peak_bytes']:.2f}" if ref["peak_bytes"] else "n/a",
                      f"{r['trainable']:,}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast on CUDA")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", default=None, help="write all rows to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arch", default="micro-clip", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.arch, args.device, args.batch, args.steps, args.precision)))
        return
    import torch

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = [("micro-clip", "cpu", "fp32")]
    if torch.cuda.is_available():
        settings.append(("ViT-B-32", "cuda", "fp32"))
        if args.bf16:
            settings.append(("ViT-B-32", "cuda", "bf16"))
    everything = []
    for arch, device, precision in settings:
        print(f"{arch} on {device} ({precision}), batch {args.batch}, {args.steps} timed steps", file=sys.stderr)
        rows = run_all(methods, arch, device, args.batch, args.steps, precision)
        everything += rows
        print(f"\n{arch} / {device} / {precision} / batch {args.batch}")
        print(table(rows, args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2) + "\n")


if __name__ == "__main__":
    main()
