"""Eval-harness throughput against a bare forward loop over the same model and tensors.

Peers, in one process: (a) a bare loop calling OpenCLIP's raw ``encode_image`` + the head matmul over
pre-normalised tensors; (b) ``grace_bench.eval.clean.evaluate_clean`` over the same images. Prints
images/s of each and the ratio harness/bare (target >= 0.95). With CUDA, also ViT-B-32 with random
weights at 224 px in fp32 and bf16.

    python benchmarks/eval_throughput.py [--repeats 5] [--n 2048]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from grace_bench.eval.clean import evaluate_clean
from grace_bench.models.loading import build_clip_model
from grace_bench.models.zero_shot import ZeroShotClassifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bare_loop(model, head, x, mean, std, batch_size, device, precision) -> float:
    """images/s of OpenCLIP's raw forward + head over pre-loaded tensors (normalisation included)."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(
        device.type, enabled=False)
    _sync(device)
    t0 = time.perf_counter()
    correct = 0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size].to(device, non_blocking=True)
        with ctx:
            f = model.encode_image((xb - mean) / std, normalize=True)
            logits = model.logit_scale.exp() * f @ head
        correct += int(logits.argmax(1).sum())  # same one host sync per batch as the harness
    _sync(device)
    return len(x) / (time.perf_counter() - t0)


def harness(clf, ds, batch_size, device, precision) -> float:
    _sync(device)
    t0 = time.perf_counter()
    evaluate_clean(clf, ds, list(range(len(ds))), batch_size=batch_size, device=device, precision=precision,
                   progress=False)
    _sync(device)
    return len(ds) / (time.perf_counter() - t0)


def measure(arch: str, n: int, batch_size: int, repeats: int, device: torch.device, precision: str) -> None:
    torch.manual_seed(0)
    clip = build_clip_model(arch)
    model = clip.model.to(device).eval()
    size = clip.image_size
    x = torch.rand(n, 3, size, size)
    y = torch.randint(0, 10, (n,))
    if device.type == "cuda":
        x = x.pin_memory()
    head = torch.nn.functional.normalize(torch.randn(model.text_projection.shape[1], 10), dim=0).to(device)
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    clf = ZeroShotClassifier(model, head, clip.mean, clip.std).to(device).eval()
    ds = TensorDataset(x, y)
    bare_loop(model, head, x[: batch_size * 2], mean, std, batch_size, device, precision)  # warm-up
    ratios, bares, ours = [], [], []
    for _ in range(repeats):  # interleave A/B so drift hits both
        b = bare_loop(model, head, x, mean, std, batch_size, device, precision)
        h = harness(clf, ds, batch_size, device, precision)
        bares.append(b)
        ours.append(h)
        ratios.append(h / b)
    print(f"{arch:<12} {device.type:<5} {precision:<5} n={n:<6} bs={batch_size:<4} "
          f"bare {statistics.median(bares):9.1f} img/s  harness {statistics.median(ours):9.1f} img/s  "
          f"ratio harness/bare median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2048)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    measure("micro-clip", args.n, 256, args.repeats, cpu, "fp32")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        measure("micro-clip", args.n * 8, 1024, args.repeats, gpu, "fp32")
        for precision in ("fp32", "bf16"):
            measure("ViT-B-32", 4096, 256, args.repeats, gpu, precision)


if __name__ == "__main__":
    main()
