"""Eval results: merged summaries, labels from each model's own run, early validation, per-result locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grace_bench.cli import main
from grace_bench.errors import UserError
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.labels import MICRO_LABEL, Identity, merged_identity, spec_label
from grace_bench.eval.lock import ResultLock, lock_path_for
from grace_bench.eval.run import run_eval
from grace_bench.leaderboard.collect import load_summaries
from grace_bench.models.loading import build_clip_model
from grace_bench.utils.atomic import atomic_save_safetensors, atomic_write_json
from tests.helpers import register_tiny_suite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    from grace_bench.eval import context

    context._MEMORY.clear()
    register_tiny_suite(n=32)


def _cfg(out: Path, **kw) -> EvalConfig:
    base = {"checkpoint": "tiny", "suite": "tiny-micro", "out": out, "attack": "none", "workers": 0,
            "batch_size": 16, "progress": False, "device": "cpu", "limit": 16}
    return EvalConfig(**{**base, **kw})


def _summary(out: Path, fp: str) -> dict:
    return json.loads((out / f"summary-{fp[:12]}.json").read_text())


# ---------------------------------------------------------------- one summary merges every finished result


def test_eval_without_attack_keeps_the_earlier_robust_result(tiny_clip, tmp_path):
    out = tmp_path / "out"
    first = run_eval(_cfg(out, attack="pgd[steps=1]", n_adv=8), clip=tiny_clip)
    robust = first["adversarial"]["micro"]["robust_acc"]
    assert first["aggregates"]["adv"] is not None
    assert not (out / "state").exists()  # attack and clean resume state is removed once the results are written
    second = run_eval(_cfg(out, attack="none"), clip=tiny_clip)
    saved = _summary(out, tiny_clip.fingerprint())
    for summary in (second, saved):
        assert summary["adversarial"]["micro"]["robust_acc"] == robust
        assert summary["aggregates"]["adv"] == first["aggregates"]["adv"]
        assert summary["protocol"]["attack"] == "pgd[steps=1,step=1/255]" and summary["protocol"]["n_adv"] == 8
        kinds = sorted(r["kind"] for r in summary["results"].values())
        assert kinds == ["adversarial"] + ["clean"] * 4
    # the leaderboard and the trade-off figure still see Adv
    assert load_summaries(out)[0].aggregates["adv"] == first["aggregates"]["adv"]
    assert main(["plot", "tradeoff", str(out), "--out", str(tmp_path / "fig")]) == 0


def test_summary_merges_results_of_separate_dataset_runs(tiny_clip, tmp_path):
    out = tmp_path / "out"
    a = run_eval(_cfg(out, datasets=["micro"]), clip=tiny_clip)
    run_eval(_cfg(out, datasets=["micro-v2"]), clip=tiny_clip)
    saved = _summary(out, tiny_clip.fingerprint())
    assert set(saved["per_dataset"]) == {"micro", "micro-v2"}
    assert saved["per_dataset"]["micro"]["top1"] == a["per_dataset"]["micro"]["top1"]
    assert saved["aggregates"]["id"] == a["per_dataset"]["micro"]["top1"]


def test_eval_cli_prints_where_it_wrote(tmp_path, capsys):
    torch.manual_seed(0)
    atomic_save_safetensors(tmp_path / "m.safetensors", build_clip_model("tiny-clip").model.state_dict())
    out = tmp_path / "out"
    code = main(["eval", f"tiny-clip:{tmp_path / 'm.safetensors'}", "--suite", "tiny-micro", "--attack", "none",
                 "--limit", "8", "--workers", "0", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = next(out.glob("summary-*.json"))
    fp12 = summary.stem.split("-")[1]
    text = capsys.readouterr().out
    assert f"summary: {summary}" in text and f"results: {out / 'results' / fp12}/" in text


# ---------------------------------------------------------------- labels come from each model's own run


def _tiny_file(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    atomic_save_safetensors(path, build_clip_model("tiny-clip").model.state_dict(), metadata={"arch": "tiny-clip"})
    return f"tiny-clip:{path}"


def _tiny_run(folder: Path, seed: int, method: str) -> str:
    _tiny_file(folder / "model.safetensors", seed)
    atomic_write_json(folder / "config.json", {"arch": "tiny-clip", "method": method, "base": None})
    return str(folder)


def _labels(out: Path) -> dict[str, dict]:
    return {s.fp12: s.data for s in load_summaries(out)}


def _wise_eval(zs: str, ft: str, tmp_path: Path, out: Path) -> None:
    assert main(["wise", zs, ft, "--alpha", "0,0.5,1", "--out", str(tmp_path / "wise"), "--eval", "--suite",
                 "tiny-micro", "--attack", "none", "--limit", "8", "--eval-out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0


def test_wise_endpoints_do_not_relabel_the_models_they_copy(tmp_path):
    zs = _tiny_file(tmp_path / "zs.safetensors", 0)
    ft = _tiny_run(tmp_path / "runs" / "t", 1, "tecoa")
    out = tmp_path / "out"
    zs_sum = run_eval(_cfg(out, checkpoint=zs, limit=8))
    ft_sum = run_eval(_cfg(out, checkpoint=ft, limit=8))
    assert (zs_sum["label"], ft_sum["label"]) == (zs, "tecoa")
    _wise_eval(zs, ft, tmp_path, out)
    by_fp = _labels(out)
    zs_fp, ft_fp = zs_sum["checkpoint"]["fingerprint"][:12], ft_sum["checkpoint"]["fingerprint"][:12]
    assert len(by_fp) == 3  # the endpoints are the same weights: no new summaries
    assert by_fp[zs_fp]["label"] == zs and by_fp[ft_fp]["label"] == "tecoa"
    assert by_fp[zs_fp]["checkpoint"]["spec"] == zs and by_fp[ft_fp]["checkpoint"]["method"] == "tecoa"
    # the WiSE-FT figure still finds both endpoints; the zero-shot model was also evaluated as alpha_0.00
    assert by_fp[zs_fp]["checkpoint"]["wise_alpha"] == 0.0 and by_fp[ft_fp]["checkpoint"]["wise_alpha"] == 1.0
    assert any(s.endswith("alpha_0.00") for s in by_fp[zs_fp]["checkpoint"]["evaluated_as"])
    (mid,) = [d for fp, d in by_fp.items() if fp not in (zs_fp, ft_fp)]
    assert mid["label"] == "wise-ft alpha=0.5"
    assert {s.label for s in load_summaries(out)} == {zs, "tecoa", "wise-ft alpha=0.5"}


def test_wise_first_then_explicit_label_wins_and_sticks(tmp_path):
    zs = _tiny_file(tmp_path / "zs.safetensors", 0)
    ft = _tiny_run(tmp_path / "runs" / "t", 1, "tecoa")
    out = tmp_path / "out"
    _wise_eval(zs, ft, tmp_path, out)  # the endpoints are evaluated first, through the wise run dirs
    labels = {d["label"] for d in _labels(out).values()}
    assert labels == {zs, "tecoa", "wise-ft alpha=0.5"}
    ft_sum = run_eval(_cfg(out, checkpoint=ft, limit=8, label="TeCoA (ours)"))
    assert ft_sum["label"] == "TeCoA (ours)"
    _wise_eval(zs, ft, tmp_path, out)  # a later command without --label keeps the explicit one
    assert {d["label"] for d in _labels(out).values()} == {zs, "TeCoA (ours)", "wise-ft alpha=0.5"}


def test_label_rules():
    assert spec_label("micro") == MICRO_LABEL and spec_label("runs/t", "grace") == "grace"
    legacy = {"label": "wise-ft alpha=0", "checkpoint": {"spec": "x/alpha_0.00"}}  # written before label sources
    assert merged_identity(Identity("zero-shot", "endpoint"), legacy).label == "zero-shot"
    own = {"label": MICRO_LABEL, "label_source": "own", "checkpoint": {"spec": "micro"}}
    kept = merged_identity(Identity("wise-ft alpha=0", "endpoint", {}, 0.0), own)
    assert kept.label == MICRO_LABEL and kept.checkpoint["spec"] == "micro" and kept.wise_alpha == 0.0


# ---------------------------------------------------------------- every argument is checked before any loading


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if run_eval loads a model or a dataset."""
    import grace_bench.eval.run as run_mod
    import grace_bench.models.checkpoints as ckpt_mod

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("loaded before validation finished")

    monkeypatch.setattr(ckpt_mod, "load_checkpoint", spy)
    monkeypatch.setattr(run_mod, "_load_dataset", spy)
    return calls


BAD = [
    ({"attack": "nope"}, "unknown attack"),
    ({"attack": "pgd[steps=x]"}, "integer"),
    ({"eps": "abc"}, "invalid eps"),
    ({"eps": "4"}, "exceeds 1"),
    ({"norm": "L3"}, "unknown norm"),
    ({"n_adv": 0}, "n-adv"),
    ({"n_adv": -1, "attack": "none"}, "n-adv"),
    ({"datasets": ["nope"]}, "no dataset 'nope'"),
    ({"adv_datasets": ["nope"]}, "no dataset 'nope'"),
    ({"datasets": ["micro"], "adv_datasets": ["micro-v2"]}, "add it to --datasets"),
    ({"limit": 0}, "--limit"),
    ({"batch_size": 0}, "--batch-size"),
    ({"precision": "fp16"}, "precision"),
    ({"templates_file": Path("/no/such/templates.txt")}, "templates"),
    ({"suite": "nope"}, "unknown suite"),
    ({"base": "/no/such/base.safetensors"}, "base.safetensors"),
    ({"data_root": Path("/no/such/root")}, "--data-root"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_argument_fails_before_loading(no_loading, tmp_path, change, message):
    out = tmp_path / "out"
    cfg = EvalConfig(**{"checkpoint": "micro", "out": out, "attack": "pgd", "progress": False, "device": "cpu",
                        **change})
    with pytest.raises(UserError, match=message):
        run_eval(cfg)
    assert not no_loading and not out.exists()  # nothing loaded, no folder created


def test_unwritable_out_fails_before_loading(no_loading, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, message in ((a_file, "is a file"), (a_file / "sub", "cannot create")):
        with pytest.raises(UserError, match=message):
            run_eval(EvalConfig(checkpoint="micro", out=out, attack="none", progress=False, device="cpu"))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(UserError, match="not writable"):
            run_eval(EvalConfig(checkpoint="micro", out=ro, attack="none", progress=False, device="cpu"))
    assert not no_loading
    assert main(["eval", "micro", "--out", str(a_file)]) == 2


def test_n_adv_above_the_dataset_fails_before_the_clean_pass(tiny_clip, tmp_path, monkeypatch):
    import grace_bench.eval.run as run_mod

    monkeypatch.setattr(run_mod, "evaluate_clean", lambda *a, **k: pytest.fail("clean pass ran"))
    with pytest.raises(UserError, match="exceeds the 32 examples"):
        run_eval(_cfg(tmp_path / "out", attack="pgd", n_adv=33, limit=None), clip=tiny_clip)


# ---------------------------------------------------------------- per-result locks


def _concurrent_worker(out: str, counter: str, barrier) -> None:
    import time

    import grace_bench.eval.run as run_mod

    register_tiny_suite(n=32)
    torch.manual_seed(0)
    clip = build_clip_model("tiny-clip")
    real = run_mod.evaluate_clean

    def counted(*args, **kwargs):
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # widen the window in which the other process would start the same work
        return real(*args, **kwargs)

    run_mod.evaluate_clean = counted
    barrier.wait()
    run_eval(_cfg(Path(out)), clip=clip)


def test_concurrent_evals_compute_each_result_once(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "computations.txt"
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path / "out"), str(counter), barrier))
             for _ in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(counter.read_text().split()) == 4  # four datasets, each computed by one process only
    assert len(list((tmp_path / "out" / "results").rglob("*.json"))) == 4
    assert not list((tmp_path / "out").rglob("*.lock"))


def test_lock_of_a_killed_holder_does_not_block(tmp_path):
    result = tmp_path / "results" / "x.json"
    code = ("import sys, time; from grace_bench.eval.lock import ResultLock; ResultLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(result)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert ResultLock(result).acquire(blocking=False) is False  # a live holder blocks
        assert f"{holder.pid} " in lock_path_for(result).read_text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path_for(result).exists()  # the dead holder left its lock file behind
    lock = ResultLock(result)
    assert lock.acquire(blocking=False) is True
    lock.release()
    assert not lock_path_for(result).exists()
