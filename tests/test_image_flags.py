"""Per-image correct flags in clean results: packed compactly, equal to a manual count, kept across a resume,
placed by index order under several ranks, and read back by the study (old files without flags still load)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grace_bench.errors import UserError
from grace_bench.eval.clean import evaluate_clean
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.run import run_eval
from grace_bench.results.flags import pack_flags, unpack_flags
from grace_bench.results.records import load_summaries, result_from_file
from grace_bench.study.rows import image_flags
from grace_bench.study.stats import point_metric
from tests.helpers import downsampled, register_tiny_suite


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    from grace_bench.eval import context

    context._MEMORY.clear()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 540])
def test_flags_pack_and_unpack_exactly(n):
    flags = np.random.default_rng(n).random(n) < 0.5
    packed = json.loads(json.dumps(pack_flags(flags)))
    assert packed["n"] == n and len(packed["bits"]) <= 4 * ((n + 7) // 8 + 2) // 3 + 4
    np.testing.assert_array_equal(unpack_flags(packed), flags)
    assert unpack_flags(None) is None  # a result written before the flags were stored


@pytest.mark.parametrize("bad", [[1, 0], {"encoding": "raw", "n": 1, "bits": "AA=="},
                                 {"encoding": "packbits-base64", "n": 9, "bits": "AA=="},
                                 {"encoding": "packbits-base64", "n": 3, "bits": "not base64!"},
                                 {"encoding": "packbits-base64", "n": "3", "bits": "AA=="}])
def test_garbled_flags_are_one_line_errors(bad):
    with pytest.raises(UserError, match="re-run grace-bench eval"):
        unpack_flags(bad, "x.json")


def test_flags_follow_flag_order_whatever_order_the_images_ran_in(tiny_classifier):
    ds = downsampled("micro", n=12)
    straight = evaluate_clean(tiny_classifier, ds, list(range(12)), batch_size=5, progress=False)
    shuffled = evaluate_clean(tiny_classifier, ds, [5, 11, 0, 3, 8, 1, 2, 10, 4, 9, 7, 6], batch_size=5,
                              progress=False, flag_order=range(12))
    assert shuffled["top1_flags"] == straight["top1_flags"]
    x, y = ds.tensors
    with torch.no_grad():
        manual = (tiny_classifier(x).argmax(1) == y).numpy()
    np.testing.assert_array_equal(unpack_flags(straight["top1_flags"]), manual)
    assert int(manual.sum()) == straight["correct"]


def test_eval_results_carry_flags_and_the_study_reads_them_back(tiny_clip, tmp_path):
    register_tiny_suite()
    cfg = EvalConfig(checkpoint="tiny", suite="tiny-micro", out=tmp_path / "out", attack="none", workers=0,
                     batch_size=16, progress=False)
    summary = run_eval(cfg, clip=tiny_clip)
    for entry in summary["per_dataset"].values():
        assert "top1_flags" not in entry  # summaries stay as they were
        record = result_from_file(entry["result_file"])
        assert int(record.top1_flags.sum()) == record.data["metrics"]["correct"] and len(record.top1_flags) == 64
    [loaded] = load_summaries(tmp_path / "out")
    flags = image_flags(loaded)
    assert point_metric(flags, "id") == loaded.aggregates["id"]
    assert point_metric(flags, "ood_avg") == pytest.approx(loaded.aggregates["ood_avg"], abs=1e-12)
    for entry in summary["per_dataset"].values():  # a result file from before the flags: still readable
        data = json.loads(open(entry["result_file"]).read())
        del data["metrics"]["top1_flags"]
        open(entry["result_file"], "w").write(json.dumps(data))
    assert result_from_file(entry["result_file"]).top1_flags is None
    assert image_flags(load_summaries(tmp_path / "out")[0]) is None
