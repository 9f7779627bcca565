"""GRACE's training-step cost against TeCoA and FT at the same PGD budget: step time and peak memory.

Each method is built by the real ``Trainer`` (same LoRA, optimiser, clipping and step code) on random
weights (timing does not depend on them) and random images. Timing: all methods are built, then
``--steps`` rounds of one step per method are timed after ``--warmup`` rounds (interleaved, so load from
other work hits every method alike). Memory: each method alone, one step after ``--warmup`` steps.
TeCoA and GRACE both use PGD-10 at 4/255 with step 1/255. Rows:

* ``ft``: full fine-tuning of the vision tower (no attack);
* ``tecoa``: adversarial training of the whole vision tower (the paper's "standard AT");
* ``tecoa-lora``: the same with GRACE's LoRA (rank ``--lora-rank``), the apples-to-apples reference;
* ``grace``: full GRACE (LoRA + LAR-AWP + curriculum + GV), and ``grace-lora-ft`` (its LoRA-FT ablation).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed steps; on CPU the process's peak
RSS (VmHWM, reset through ``/proc/self/clear_refs`` before each method), both minus the level before the
timed steps (so "+MiB" is what the steps add on top of weights and optimiser state).

    python benchmarks/grace_step_cost.py                       # micro-CLIP, CPU or CUDA
    python benchmarks/grace_step_cost.py --arch ViT-B-32 --image-size 224 --batch-size 128   # needs CUDA
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

PGD = {"eps": 4 / 255, "pgd_steps": 10, "pgd_step_size": 1 / 255}


def method_rows(lora_rank: int, pgd_steps: int) -> dict[str, dict]:
    pgd = {**PGD, "pgd_steps": pgd_steps}
    return {
        "ft": {"method": "ft", "lora_rank": 0, "method_args": {}},
        "tecoa": {"method": "tecoa", "lora_rank": 0, "method_args": dict(pgd)},
        "tecoa-lora": {"method": "tecoa", "lora_rank": lora_rank, "method_args": dict(pgd)},
        "grace-lora-ft": {"method": "grace", "lora_rank": lora_rank, "method_args": {"ablation": "lora-ft"}},
        "grace": {"method": "grace", "lora_rank": lora_rank, "method_args": {**pgd, "ablation": "full"}},
    }


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Bench:
    """One method's run, built by the real ``Trainer`` on random weights and random images."""

    def __init__(self, name: str, row: dict, args: argparse.Namespace, device: torch.device, tmp: str) -> None:
        from grace_bench.finetune.config import FinetuneConfig
        from grace_bench.finetune.trainer import Trainer
        from grace_bench.models.loading import build_clip_model

        torch.manual_seed(0)
        clip = build_clip_model(args.arch)
        size = args.image_size or clip.image_size
        n = args.batch_size * 2
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))
        cfg = FinetuneConfig(
            method=row["method"], base=args.arch, suite="micro", out=str(Path(tmp) / name), batch_size=args.batch_size,
            max_steps=10_000, lora_rank=row["lora_rank"], method_args=row["method_args"], progress=False,
            device=str(device), precision=args.precision, warmup_steps=0,
        )
        self.name, self.row, self.device = name, row, device
        self.trainer = Trainer(cfg, clip=clip, train_data=data, val_data=data)
        self.x, self.y = data.tensors[0][: args.batch_size], data.tensors[1][: args.batch_size]
        self.trainable = int(sum(p.numel() for p in self.trainer.params))
        self.times: list[float] = []

    def step(self, i: int) -> float:
        """One full training step (attack, loss, backward, clipping, AdamW); returns seconds."""
        self.trainer.step = i  # the step index drives GRACE's curvature schedule and the RNG streams
        _sync(self.device)
        t0 = time.perf_counter()
        self.trainer._train_step(self.x, self.y)
        _sync(self.device)
        return time.perf_counter() - t0


def measure_memory(name: str, row: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Peak memory of one step of ``name`` built alone (after ``args.warmup`` steps), and what the step adds."""
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(name, row, args, device, tmp)
        for i in range(args.warmup):
            bench.step(i)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            bench.step(args.warmup)
            peak = torch.cuda.max_memory_allocated(device)
        else:
            ok = _rss_peak_reset()
            base = (_rss_kib("VmRSS") or 0) * 1024
            bench.step(args.warmup)
            peak = (_rss_kib("VmHWM") or 0) * 1024 if ok else None
        trainable = bench.trainable
        del bench
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"peak_mib": None if peak is None else peak / 2**20,
            "added_mib": None if peak is None else (peak - base) / 2**20, "trainable": trainable}


def measure_time(names: list[str], rows: dict, args: argparse.Namespace, device: torch.device) -> dict:
    """Step times with all methods built up front and their steps interleaved round by round.

    Interleaving spreads any slowdown from other work on the machine over every method alike.
    """
    with tempfile.TemporaryDirectory() as tmp:
        benches = [Bench(n, rows[n], args, device, tmp) for n in names]
        for i in range(args.warmup):
            for b in benches:
                b.step(i)
        for i in range(args.warmup, args.warmup + args.steps):
            for b in benches:
                b.times.append(b.step(i))
        out = {b.name: {"step_s": statistics.median(b.times), "step_s_min": min(b.times), "times": b.times}
               for b in benches}
        del benches
    gc.collect()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="micro-clip", help="OpenCLIP architecture (random weights)")
    p.add_argument("--image-size", type=int, default=0, help="input size (default: the architecture's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default="ft,tecoa,tecoa-lora,grace-lora-ft,grace")
    p.add_argument("--statistic", default="step_s", choices=["step_s", "step_s_min"],
                   help="ratio of median (default) or minimum step times (min is steadier on a shared machine)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows = method_rows(args.lora_rank, args.pgd_steps)
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in rows]
    if unknown:
        print(f"error: unknown method row(s) {unknown}; choose from {', '.join(rows)}", file=sys.stderr)
        return 2
    print(f"# {args.arch} batch {args.batch_size} on {device} ({args.precision}), PGD-{args.pgd_steps}, "
          f"LoRA rank {args.lora_rank}; median of {args.steps} interleaved steps after {args.warmup} warm-up")
    results = {}
    for name in wanted:
        results[name] = {"name": name, **{k: rows[name][k] for k in ("method", "lora_rank", "method_args")},
                         **measure_memory(name, rows[name], args, device)}
    for name, r in measure_time(wanted, rows, args, device).items():
        results[name].update(r)
    for name in wanted:
        r = results[name]
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:9.1f} MiB peak  {r['added_mib']:+9.1f} MiB"
        print(f"{name:14s} {r['step_s'] * 1000:9.1f} ms/step (min {r['step_s_min'] * 1000:8.1f})   {mem}   "
              f"trainable {r['trainable']:,}", flush=True)
    ratios = {}
    for ref in ("tecoa", "tecoa-lora", "ft", "grace-lora-ft"):
        if "grace" in results and ref in results:
            t = results["grace"][args.statistic] / results[ref][args.statistic]
            m = None
            if results["grace"]["peak_mib"] and results[ref]["peak_mib"]:
                m = results["grace"]["peak_mib"] / results[ref]["peak_mib"]
            ratios[f"grace/{ref}"] = {"time": t, "peak_memory": m}
            target = "  (target <= 1.3)" if ref == "tecoa" else ""
            print(f"GRACE/{ref}: time {t:.2f}x, peak memory {'n/a' if m is None else f'{m:.2f}x'}{target}")
    if args.out:
        from grace_bench.utils.atomic import atomic_write_json

        atomic_write_json(args.out, {"args": vars(args), "device": str(device), "results": results, "ratios": ratios,
                                     "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
