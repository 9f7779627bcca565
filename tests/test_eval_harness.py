"""The clean half of `grace-bench eval`: head equality, aggregates, result store, skip and resume, DDP."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch

from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES
from grace_bench.eval import clean as clean_mod
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.metrics import aggregates, harmonic_mean, topk_correct
from grace_bench.eval.run import run_eval
from grace_bench.models.zero_shot import build_zero_shot_head
from tests.helpers import register_tiny_suite


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    from grace_bench.eval import context

    context._MEMORY.clear()


def test_head_equals_open_clip_zero_shot_classifier(tiny_clip):
    ours = build_zero_shot_head(tiny_clip.model, tiny_clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES,
                                classes_per_batch=3)
    ref = open_clip.build_zero_shot_classifier(tiny_clip.model, tiny_clip.tokenizer, MICRO_CLASSNAMES,
                                               MICRO_TEMPLATES, num_classes_per_batch=10)
    assert ours.shape == (32, 10)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_classifier_matches_manual_clip_logits(tiny_classifier, tiny_clip):
    x = torch.rand(5, 3, 16, 16)
    mean = torch.tensor(tiny_clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny_clip.std).view(1, 3, 1, 1)
    with torch.no_grad():
        f = tiny_clip.model.encode_image((x - mean) / std, normalize=True)
        expected = tiny_clip.model.logit_scale.exp() * f @ tiny_classifier.head
        got = tiny_classifier(x)
    torch.testing.assert_close(got, expected)
    sub = tiny_classifier.with_subset([7, 2, 5])
    with torch.no_grad():
        torch.testing.assert_close(sub(x), expected[:, [7, 2, 5]])


def test_topk_and_aggregates():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.4]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, (1, 2, 5)) == {1: 1, 2: 2}
    per = {"id": {"role": "id", "top1": 0.8}, "o1": {"role": "ood", "top1": 0.5}, "o2": {"role": "ood", "top1": 0.7},
           "a": {"role": "nat-adv", "top1": 0.2}}
    agg = aggregates(per, {"id": {"robust_acc": 0.4}}, "id")
    assert agg["ood_avg"] == pytest.approx(0.6) and agg["adv"] == pytest.approx(0.3)
    assert agg["hm"] == pytest.approx(3 / (1 / 0.8 + 1 / 0.6 + 1 / 0.3))
    assert aggregates(per, {}, "id")["hm"] is None  # no adversarial axis -> no made-up HM
    assert harmonic_mean([0.5, 0.0]) == 0.0
    # the paper's Table 6 GRACE row: HM recomputes from ID / OOD / Adv
    assert harmonic_mean([0.7421, 0.5701, 0.2244]) == pytest.approx(0.3969, abs=1e-4)


def _cfg(tmp_path, **kw):
    return EvalConfig(checkpoint="tiny", suite="tiny-micro", out=tmp_path / "out", attack="none", workers=0,
                      batch_size=16, progress=False, **kw)


def test_run_eval_writes_results_and_skips_on_rerun(tiny_clip, tmp_path):
    register_tiny_suite()
    summary = run_eval(_cfg(tmp_path), clip=tiny_clip)
    assert set(summary["per_dataset"]) == {"micro", "micro-v2", "micro-sketch", "micro-a"}
    files = sorted((tmp_path / "out" / "results").rglob("*.json"))
    assert len(files) == 4
    rec = json.loads(files[0].read_text())
    for key in ("metrics", "config", "config_hash", "versions", "seed", "wall_time_s", "images_per_s"):
        assert key in rec
    # manual count for the ID set
    from tests.helpers import downsampled

    x, y = downsampled("micro").tensors
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.context import classifier_for

    clf = classifier_for(tiny_clip, get_suite("tiny-micro"))
    with torch.no_grad():
        expected = (clf(x).argmax(1) == y).float().mean().item()
    assert summary["per_dataset"]["micro"]["top1"] == pytest.approx(expected)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = run_eval(_cfg(tmp_path), clip=tiny_clip)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # finished work is skipped
    assert again["per_dataset"] == summary["per_dataset"]
    assert (tmp_path / "out" / f"summary-{tiny_clip.fingerprint()[:12]}.json").exists()


def test_clean_eval_resumes_from_partial_state(tiny_classifier, tmp_path, monkeypatch):
    from tests.helpers import downsampled

    ds = downsampled("micro", n=64)
    full = clean_mod.evaluate_clean(tiny_classifier, ds, list(range(64)), batch_size=8, progress=False)
    monkeypatch.setattr(clean_mod, "SAVE_EVERY_BATCHES", 1)
    partial = tmp_path / "partial.json"

    class Killed(Exception):
        pass

    calls = {"n": 0}
    real_forward = tiny_classifier.forward

    def dying_forward(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Killed
        return real_forward(x)

    monkeypatch.setattr(tiny_classifier, "forward", dying_forward)
    with pytest.raises(Killed):
        clean_mod.evaluate_clean(tiny_classifier, ds, list(range(64)), batch_size=8, progress=False,
                                 partial_path=partial, partial_key="k")
    state = json.loads(partial.read_text())
    assert state["done"] == 24
    monkeypatch.setattr(tiny_classifier, "forward", real_forward)
    resumed = clean_mod.evaluate_clean(tiny_classifier, ds, list(range(64)), batch_size=8, progress=False,
                                       partial_path=partial, partial_key="k")
    assert resumed["correct"] == full["correct"] and resumed["n"] == 64
    assert resumed["top1_flags"] == full["top1_flags"]  # the flags of the first 24 images came from the state
    assert not partial.exists()


def _ddp_worker(rank, world, port, out_dir, sd_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from grace_bench.models.loading import build_clip_model

    register_tiny_suite()
    clip = build_clip_model("tiny-clip", load_file(sd_path))
    summary = run_eval(EvalConfig(checkpoint="tiny", suite="tiny-micro", out=out_dir, attack="none", workers=0,
                                  batch_size=8, progress=False, device="cpu"), clip=clip)
    if rank == 0:
        with open(os.path.join(out_dir, "ddp.json"), "w") as fh:
            json.dump(summary["per_dataset"], fh)
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.slow  # two processes: ~17 s on 2 cores
def test_ddp_eval_equals_single_process(tiny_clip, tmp_path):
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import save_file

    register_tiny_suite()
    single = run_eval(_cfg(tmp_path / "single"), clip=tiny_clip)["per_dataset"]
    sd_path = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}, sd_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = str(tmp_path / "ddp")
    os.makedirs(out_dir)
    mp.start_processes(_ddp_worker, args=(2, port, out_dir, sd_path), nprocs=2, join=True, start_method="spawn")
    ddp = json.loads(open(os.path.join(out_dir, "ddp.json")).read())
    for name, r in single.items():
        assert ddp[name]["n"] == r["n"]
        assert ddp[name]["top1"] == pytest.approx(r["top1"], abs=1e-12)
        flags = [json.loads(open(e["result_file"]).read())["metrics"]["top1_flags"] for e in (ddp[name], r)]
        assert flags[0] == flags[1]  # each rank's per-image flags land at their image's place
