"""Overhead of our AutoAttack adapter over pyautoattack run directly, and attack throughput.

1. Runs ``AutoAttack(model, version=..., eps=..., seed=chunk_seed(0, c)).run_standard_evaluation(x_c, y_c,
   batch_size=...)`` on each chunk ``c`` of ``--batch-size`` examples, and our ``run_autoattack`` with
   ``chunk_size=--batch-size`` (with a state dir, so including its per-step atomic saves and sanity
   checks) on the same random-weight model, inputs and seed, interleaved ``--repeats`` times. Asserts the
   robust flags are identical and prints the time ratio ours/direct (target <= 1.05) from the best run of
   each, both in process CPU time (robust on a shared machine) and wall time.
2. PGD throughput (10 steps, 4/255, step 1/255) in image-steps/s.
3. With CUDA (or ``--vit-device``): ViT-B-32 with random weights at 224 px: PGD and APGD-CE image-steps/s,
   and images/s of the full AutoAttack version on the first ``--vit-n`` images.

    python benchmarks/attack_overhead.py                  # tiny-clip, standard AA, CPU, about 1-2 minutes
    python benchmarks/attack_overhead.py --arch micro-clip --n 32 --batch-size 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def build_classifier(arch: str, device: str, num_classes: int = 10):
    """A zero-shot classifier on random weights (timings and flag equality do not depend on them)."""
    from grace_bench.data.micro_text import MICRO_CLASSNAMES, MICRO_TEMPLATES
    from grace_bench.models.loading import build_clip_model
    from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head

    torch.manual_seed(0)
    clip = build_clip_model(arch)
    if num_classes == len(MICRO_CLASSNAMES):
        head = build_zero_shot_head(clip.model, clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES)
    else:  # e.g. 1000 ImageNet-sized classes: random unit class embeddings
        dim = clip.model.text_projection.shape[1]
        head = F.normalize(torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(1)), dim=0)
    clf = ZeroShotClassifier(clip.model, head, clip.mean, clip.std).to(device).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf, clip.image_size


def make_inputs(clf, n: int, size: int, device: str, num_classes: int):
    """Random images labelled with the model's predictions, 1 in 8 relabelled (clean errors)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g)
    with torch.no_grad():
        y = torch.cat([clf(x[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, n, 64)])
    y[::8] = (y[::8] + 1) % num_classes
    return x, y


@contextlib.contextmanager
def sub_attack_clock():
    """Accumulate process CPU time spent inside pyautoattack's sub-attack ``perturb`` calls (timing only)."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_base import FABAttack
    from pyautoattack.square import SquareAttack

    clock = {"s": 0.0, "depth": 0}
    classes = (APGDAttack, APGDAttack_targeted, FABAttack, SquareAttack)
    originals = {cls: cls.__dict__["perturb"] for cls in classes if "perturb" in cls.__dict__}

    def make(orig):
        def perturb(self, *a, **k):
            clock["depth"] += 1
            t0 = time.process_time()
            try:
                return orig(self, *a, **k)
            finally:
                clock["depth"] -= 1
                if clock["depth"] == 0:
                    clock["s"] += time.process_time() - t0
        return perturb

    for cls, orig in originals.items():
        cls.perturb = make(orig)
    try:
        yield clock
    finally:
        for cls, orig in originals.items():
            cls.perturb = orig


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - w0, time.process_time() - c0


def direct_autoattack(clf, x, y, *, eps, version, batch_size, device):
    from pyautoattack import AutoAttack

    from grace_bench.attacks.chunks import chunk_seed

    flags = []
    for c, start in enumerate(range(0, x.shape[0], batch_size)):
        xc, yc = x[start : start + batch_size], y[start : start + batch_size]
        aa = AutoAttack(clf, eps=eps, norm="Linf", seed=chunk_seed(0, c), version=version, device=device)
        _, y_adv = aa.run_standard_evaluation(xc, yc, batch_size=batch_size)
        flags.append((y_adv == yc).cpu())
    return torch.cat(flags)


def our_autoattack(clf, x, y, *, eps, version, batch_size, device):
    from grace_bench.attacks.autoattack import run_autoattack

    with tempfile.TemporaryDirectory() as state_dir:
        return run_autoattack(clf, x, y, eps=eps, version=version, seed=0, chunk_size=batch_size,
                              state_dir=state_dir, device=device, progress=False)


def pgd_throughput(clf, x, y, device, steps: int = 10, repeats: int = 3) -> float:
    from grace_bench.attacks.pgd import pgd_attack

    x, y = x.to(device), y.to(device)
    pgd_attack(clf, x, y, eps=4 / 255, steps=1)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _, wall, _ = timed(lambda: pgd_attack(clf, x, y, eps=4 / 255, steps=steps, step_size=1 / 255,
                                              generator=torch.Generator(device=device).manual_seed(0)))
        best = min(best, wall)
    return x.shape[0] * steps / best


def overhead(args) -> dict:
    clf, size = build_classifier(args.arch, "cpu")
    x, y = make_inputs(clf, args.n, size, "cpu", 10)
    kw = dict(eps=args.eps, version=args.version, batch_size=args.batch_size, device="cpu")
    best = {"direct": [float("inf"), float("inf")], "ours": [float("inf"), float("inf")]}
    result = None
    outside = {"direct": float("inf"), "ours": float("inf")}
    attack_cpu = float("inf")
    for r in range(args.repeats):
        with sub_attack_clock() as clock:
            ref, w_ref, c_ref = timed(lambda: direct_autoattack(clf, x, y, **kw))
        outside["direct"] = min(outside["direct"], c_ref - clock["s"])
        attack_cpu = min(attack_cpu, clock["s"])
        with sub_attack_clock() as clock:
            result, w_ours, c_ours = timed(lambda: our_autoattack(clf, x, y, **kw))
        outside["ours"] = min(outside["ours"], c_ours - clock["s"])
        if not torch.equal(ref, result.robust):
            raise SystemExit(f"FAIL: robust flags differ from pyautoattack (repeat {r})")
        best["direct"] = [min(best["direct"][0], w_ref), min(best["direct"][1], c_ref)]
        best["ours"] = [min(best["ours"][0], w_ours), min(best["ours"][1], c_ours)]
        print(f"  repeat {r}: direct {w_ref:.2f}s wall / {c_ref:.2f}s cpu, ours {w_ours:.2f}s wall / "
              f"{c_ours:.2f}s cpu, flags identical", flush=True)
    return {
        "arch": args.arch, "n": args.n, "batch_size": args.batch_size, "version": args.version, "eps": args.eps,
        "flags_identical": True, "clean_acc": result.clean_acc, "robust_acc": result.robust_acc,
        "cascade": result.cascade,
        "direct_wall_s": best["direct"][0], "ours_wall_s": best["ours"][0],
        "direct_cpu_s": best["direct"][1], "ours_cpu_s": best["ours"][1],
        "ratio_wall": best["ours"][0] / best["direct"][0], "ratio_cpu": best["ours"][1] / best["direct"][1],
        "outside_sub_attacks_cpu_s": outside, "sub_attacks_cpu_s": attack_cpu,
        "ratio_same_attack_work": (attack_cpu + outside["ours"]) / (attack_cpu + outside["direct"]),
        "pgd_image_steps_per_s": pgd_throughput(clf, x[: args.pgd_batch], y[: args.pgd_batch], "cpu"),
    }


def vit_b32(args, device: str) -> dict:
    from grace_bench.attacks.autoattack import run_autoattack

    clf, size = build_classifier("ViT-B-32", device, num_classes=1000)
    x, y = make_inputs(clf, args.vit_n, size, device, 1000)
    out = {"device": device, "n": args.vit_n, "batch_size": args.vit_batch_size, "image_size": size}
    xb, yb = x[: args.vit_batch_size], y[: args.vit_batch_size]
    out["pgd10_image_steps_per_s"] = pgd_throughput(clf, xb, yb, device)
    iters = args.vit_apgd_iters
    res, wall, _ = timed(lambda: run_autoattack(clf, xb, yb, eps=4 / 255, version="custom", attacks=["apgd-ce"],
                                                settings={"apgd-ce": {"restarts": 1, "iterations": iters}},
                                                chunk_size=args.vit_batch_size, device=device, progress=False,
                                                checks=False))
    out["apgd_ce_image_steps_per_s"] = xb.shape[0] * iters / wall
    ref, wall_ref, _ = timed(lambda: _direct_apgd(clf, xb, yb, iters, args.vit_batch_size, device))
    out["apgd_ce_flags_identical_to_direct"] = bool(torch.equal(ref, res.robust))
    out["apgd_ce_ratio_wall"] = wall / wall_ref
    res, wall, _ = timed(lambda: run_autoattack(clf, x, y, eps=4 / 255, version=args.version,
                                                chunk_size=args.vit_batch_size, device=device, progress=False))
    out.update(autoattack_version=args.version, autoattack_images_per_s=x.shape[0] / wall,
               autoattack_wall_s=wall, autoattack_cascade=res.cascade, autoattack_attack_s=res.timings["attacks_s"])
    return out


def _direct_apgd(clf, x, y, iters, batch_size, device):
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack

    from grace_bench.attacks.chunks import chunk_seed

    seed = chunk_seed(0, 0)  # x is one chunk
    aa = AutoAttack(clf, attacks=["apgd-ce"], eps=4 / 255, norm="Linf", seed=seed, version="custom", device=device)
    aa.apgd = APGDAttack(clf, n_restarts=1, n_iter=iters, eps=4 / 255, norm="Linf", eot_iter=1, rho=0.75, seed=seed,
                         device=device, verbose=False, logger=aa.logger)
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return (y_adv == y).cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny-clip", help="tiny-clip or micro-clip (random weights)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--version", default="standard", choices=["standard", "plus", "rand"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pgd-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadiest timings)")
    parser.add_argument("--vit-device", default=None, help="run the ViT-B-32 section on this device "
                        "(default: cuda when available, else skipped)")
    parser.add_argument("--vit-n", type=int, default=256)
    parser.add_argument("--vit-batch-size", type=int, default=128)
    parser.add_argument("--vit-apgd-iters", type=int, default=100)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"AutoAttack {args.version} on {args.arch} (random weights), n={args.n}, batch {args.batch_size}, "
          f"eps={args.eps:.5f}, seed 0", flush=True)
    report = {"overhead": overhead(args)}
    o = report["overhead"]
    print(f"cascade {o['cascade']}")
    print(f"time ratio ours/direct: {o['ratio_cpu']:.3f} (CPU time), {o['ratio_wall']:.3f} (wall); target <= 1.05")
    print(f"CPU time outside pyautoattack's sub-attacks: ours {o['outside_sub_attacks_cpu_s']['ours']:.3f}s, direct "
          f"{o['outside_sub_attacks_cpu_s']['direct']:.3f}s, sub-attacks {o['sub_attacks_cpu_s']:.2f}s -> ratio at "
          f"equal attack work {o['ratio_same_attack_work']:.4f} (free of load noise)")
    print(f"PGD-10 throughput ({args.arch}, CPU, batch {args.pgd_batch}): {o['pgd_image_steps_per_s']:.0f} "
          "image-steps/s")
    vit_device = args.vit_device or ("cuda" if torch.cuda.is_available() else None)
    if vit_device:
        v = report["vit_b32"] = vit_b32(args, vit_device)
        print(f"ViT-B-32 @224 on {vit_device}: PGD-10 {v['pgd10_image_steps_per_s']:.0f} image-steps/s, "
              f"APGD-CE {v['apgd_ce_image_steps_per_s']:.0f} image-steps/s (ratio to direct "
              f"{v['apgd_ce_ratio_wall']:.3f}, flags identical: {v['apgd_ce_flags_identical_to_direct']}), "
              f"AutoAttack {args.version}: {v['autoattack_images_per_s']:.2f} images/s, cascade "
              f"{v['autoattack_cascade']}")
    else:
        print("ViT-B-32 section skipped (no CUDA; pass --vit-device cpu to force it)")
    if args.json:
        from grace_bench.utils.atomic import atomic_write_json

        atomic_write_json(args.json, report)
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
