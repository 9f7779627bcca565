"""Is the micro study compute-bound? micro-CLIP's forward+backward FLOP rate against the core's matmul rate.

The study's wall time is almost all forward and backward passes of micro-CLIP's image tower on batches of 32
(PGD steps, training steps, APGD iterations, Hessian-vector products). This benchmark measures, on one thread,
in the same run:

* the peer: ``torch.mm`` FLOP rate, on a large square product (the core's practical peak) and on the shape of
  micro-CLIP's biggest GEMM at batch 32 (tokens × width × MLP width);
* ours: the FLOP rate of one PGD-style pass (forward + backward to the input) and one training pass (forward +
  backward to every weight) of micro-CLIP at batch 32, with FLOPs counted by ``torch.utils.flop_counter``.

It prints each rate and its ratio to the peer. A ratio near 1 means the passes run at the core's matmul speed,
so the study can only get faster by computing less. Usage::

    python benchmarks/study_compute_bound.py [--repeats 20] [--batch 32]
"""

from __future__ import annotations

import argparse
import time


def _rate(fn, flops: float, repeats: int) -> float:
    """GFLOP/s of ``fn`` (best of ``repeats`` timed calls after two warm-up calls)."""
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def _counted_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from grace_bench.models.micro import load_micro_clip

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    peak = _rate(lambda: torch.mm(a, b), 2.0 * n ** 3, args.repeats)
    rows.append(("peer: torch.mm 1024x1024x1024", peak))

    clip = load_micro_clip()
    visual = clip.model.visual
    tokens = (visual.image_size[0] // visual.patch_size[0]) ** 2 + 1
    width = visual.transformer.width
    hidden = visual.transformer.resblocks[0].mlp.c_fc.out_features
    m = args.batch * tokens
    x_gemm, w_gemm = torch.randn(m, width), torch.randn(width, hidden)
    gemm = _rate(lambda: torch.mm(x_gemm, w_gemm), 2.0 * m * width * hidden, args.repeats)
    rows.append((f"peer: torch.mm {m}x{width}x{hidden} (micro-CLIP's MLP GEMM at batch {args.batch})", gemm))

    model = clip.model.train()
    head = F.normalize(torch.randn(10, model.text_projection.shape[1]), dim=-1)
    images = torch.rand(args.batch, 3, *visual.image_size)
    labels = torch.randint(0, 10, (args.batch,))

    def logits(x: torch.Tensor) -> torch.Tensor:
        return 100.0 * F.normalize(model.encode_image(x), dim=-1) @ head.T

    params = [p for p in visual.parameters() if p.requires_grad]

    def input_pass() -> None:  # one PGD / APGD step: the gradient w.r.t. the images only
        for p in params:
            p.requires_grad_(False)
        x = images.clone().requires_grad_(True)
        F.cross_entropy(logits(x), labels).backward()
        for p in params:
            p.requires_grad_(True)

    def weight_pass() -> None:  # one training step's forward and backward (image tower)
        for p in params:
            p.grad = None
        F.cross_entropy(logits(images), labels).backward()

    for name, fn in (("ours: forward + backward to the input (a PGD step)", input_pass),
                     ("ours: forward + backward to the weights (a training step)", weight_pass)):
        rows.append((name, _rate(fn, _counted_flops(fn), args.repeats)))

    print(f"torch {torch.__version__}, 1 thread, batch {args.batch}, {tokens} tokens, width {width}")
    print(f"{'what':<78} {'GFLOP/s':>8} {'x peak':>7} {'x GEMM':>7}")
    for name, rate in rows:
        print(f"{name:<78} {rate:8.1f} {rate / peak:7.2f} {rate / gemm:7.2f}")


if __name__ == "__main__":
    main()
