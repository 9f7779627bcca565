"""Eval-harness throughput against a bare forward loop over the same model and tensors, and with decoding.

Peers, in one process: (a) a bare loop calling OpenCLIP's raw ``encode_image`` + the head matmul over
pre-normalised tensors; (b) ``grace_bench.eval.clean.evaluate_clean`` over the same images. Prints
images/s of each and the ratio harness/bare (target >= 0.95). With CUDA, also ViT-B-32 with random
weights at 224 px in fp32 and bf16.

Decoding rows (``--decode-n``): a synthetic JPEG tree (ImageNet val layout) and CLIP_benchmark webdataset
shards of the same JPEG bytes; for each loader-worker count, (c) decoding alone (the harness's DataLoader
without a model), (d) the model alone (as (a)), (e) the harness end to end on the tree and on the shards.
Prints harness / min(decode, model) (target >= 0.9, reachable only when decoding and the model overlap, i.e. on
spare cores or a GPU) and harness / serial, where serial = 1 / (1/decode + 1/model) is the ceiling on one core.

    python benchmarks/eval_throughput.py [--repeats 5] [--n 2048] [--decode-n 512] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

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


def write_jpeg_data(root: Path, n: int, width: int, height: int, per_shard: int) -> None:
    """``n`` JPEGs (photo-like noise, ``width`` x ``height``) as an ImageNet val tree under ``root/imagenet/val``
    and as ``root/wds_imagenet1k`` shards of the same bytes (CLIP_benchmark's layout and writer)."""
    import numpy as np
    import webdataset as wds
    from PIL import Image

    from grace_bench.data import imagenet_meta as meta

    wnids = meta.imagenet_wnids()
    tree = root / "imagenet" / "val"
    for w in wnids:
        (tree / w).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((width, height), Image.BILINEAR)  # smooth, so JPEG sizes are realistic
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        label = i % 10
        name = f"img_{i:06d}.JPEG"
        (tree / wnids[label] / name).write_bytes(buf.getvalue())
        samples.append((wnids[label], name, buf.getvalue(), label))
    shards = root / "wds_imagenet1k" / "test"
    shards.mkdir(parents=True)
    with wds.ShardWriter(str(shards / "%d.tar"), maxcount=per_shard, verbose=0) as sink:
        for k, (_, _, data, label) in enumerate(sorted(samples)):
            sink.write({"__key__": f"s{k:07d}", "jpg": data, "cls": label})
        count = sink.shard
    (shards / "nshards.txt").write_text(f"{count}\n")


def decode_only(ds, batch_size: int, workers: int, pin: bool) -> float:
    """images/s of the harness's DataLoader alone (decode + preprocess + collate), no model."""
    from grace_bench.eval.batching import iter_batches

    t0 = time.perf_counter()
    n = sum(len(y) for _, y in iter_batches(ds, list(range(len(ds))), batch_size, num_workers=workers,
                                             pin_memory=pin))
    return n / (time.perf_counter() - t0)


def harness_with_decoding(clf, ds, batch_size, device, precision, workers) -> float:
    _sync(device)
    t0 = time.perf_counter()
    evaluate_clean(clf, ds, list(range(len(ds))), batch_size=batch_size, device=device, precision=precision,
                   num_workers=workers, progress=False)
    _sync(device)
    return len(ds) / (time.perf_counter() - t0)


def measure_decoding(arch: str, n: int, size: tuple[int, int], batch_size: int, repeats: int,
                     device: torch.device, precision: str, workers: list[int]) -> None:
    """Rows: for each worker count, decode alone / model alone / harness on the tree and on the shards."""
    from grace_bench.data import imagenet as inet
    from grace_bench.data.suite_spec import DataContext

    torch.manual_seed(0)
    clip = build_clip_model(arch)
    model = clip.model.to(device).eval()
    head = torch.nn.functional.normalize(torch.randn(model.text_projection.shape[1], 1000), dim=0).to(device)
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    clf = ZeroShotClassifier(model, head, clip.mean, clip.std).to(device).eval()
    x = torch.rand(n, 3, clip.image_size, clip.image_size)
    pin = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpeg_data(root, n, *size, per_shard=max(1, n // 8))
        data = {layout: inet.imagenet_val(DataContext(root=root, preprocess=clip.preprocess,
                                                      allow_empty_classes=True, layout=layout))
                for layout in ("folders", "wds")}
        bare_loop(model, head, x[: batch_size * 2], mean, std, batch_size, device, precision)  # warm-up
        for w in workers:
            rows = {k: [] for k in ("model", "decode folders", "decode wds", "harness folders", "harness wds")}
            for _ in range(repeats):  # interleaved, so drift hits every peer alike
                rows["model"].append(bare_loop(model, head, x, mean, std, batch_size, device, precision))
                for layout, ds in data.items():
                    rows[f"decode {layout}"].append(decode_only(ds, batch_size, w, pin))
                    rows[f"harness {layout}"].append(harness_with_decoding(clf, ds, batch_size, device,
                                                                           precision, w))
            med = {k: statistics.median(v) for k, v in rows.items()}
            for layout in ("folders", "wds"):
                slower = min(med["model"], med[f"decode {layout}"])
                serial = 1 / (1 / med["model"] + 1 / med[f"decode {layout}"])  # the ceiling without overlap
                print(f"{arch:<12} {device.type:<5} {precision:<5} {layout:<7} n={n:<5} {size[0]}x{size[1]} "
                      f"bs={batch_size:<4} workers={w:<2} decode {med[f'decode {layout}']:8.1f} img/s  "
                      f"model {med['model']:8.1f} img/s  harness {med[f'harness {layout}']:8.1f} img/s  "
                      f"harness/min(decode, model) {med[f'harness {layout}'] / slower:.3f}  "
                      f"harness/serial {med[f'harness {layout}'] / serial:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--decode-n", type=int, default=512, help="JPEGs for the decoding rows (0: skip them)")
    ap.add_argument("--decode-size", type=int, nargs=2, default=(500, 375), help="JPEG width height")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers to compare")
    ap.add_argument("--skip-bare", action="store_true", help="only the decoding rows")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    if not args.skip_bare:
        measure("micro-clip", args.n, 256, args.repeats, cpu, "fp32")
    if args.decode_n:
        measure_decoding("micro-clip", args.decode_n, tuple(args.decode_size), 64, args.repeats, cpu, "fp32",
                         args.workers)
        if torch.cuda.is_available():
            measure_decoding("ViT-B-32", args.decode_n * 8, tuple(args.decode_size), 256, args.repeats,
                             torch.device("cuda"), "bf16", sorted(set(args.workers) | {4, 8, 16}))
    if args.skip_bare:
        return
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        measure("micro-clip", args.n * 8, 1024, args.repeats, gpu, "fp32")
        for precision in ("fp32", "bf16"):
            measure("ViT-B-32", 4096, 256, args.repeats, gpu, precision)


if __name__ == "__main__":
    main()
