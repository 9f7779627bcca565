"""The micro suite: deterministic data, fixed splits, the micro-a filter, and micro-CLIP's zero-shot profile."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from grace_bench.data import micro as M
from grace_bench.data.suites import get_suite


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def test_splits_are_fixed_disjoint_and_stratified():
    s = M.split_indices()
    assert {k: len(v) for k, v in s.items()} == {"train": 1077, "val": 180, "test": 540}
    assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])
    _, y = M.digits()
    assert np.bincount(y[s["test"]]).min() >= 50


def test_shifts_are_deterministic_and_in_range():
    for name in M.MICRO_DATASETS:
        x, y = M.micro_dataset(name).tensors
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        x2, y2 = map(torch.from_numpy, M._generate(name, "test"))  # generated afresh, not read from the cache
        assert _digest(x) == _digest(x2) and torch.equal(y, y2)


def test_micro_a_is_filtered_against_the_reference_classifier():
    x, y = M.micro_dataset("micro-a").tensors
    ref = M._reference_classifier()
    pred = ref.predict(x[:, 0].reshape(len(x), -1).numpy())
    assert len(x) == M.MICRO_A_MAX
    assert (pred != y.numpy()).all()  # every kept image fools the reference classifier
    plain_x, plain_y = M.micro_dataset("micro").tensors
    assert (ref.predict(plain_x[:, 0].reshape(len(plain_x), -1).numpy()) == plain_y.numpy()).mean() > 0.9
    assert len(np.unique(y.numpy())) == 10


def test_suite_declares_roles():
    suite = get_suite("micro")
    assert [d.role for d in suite.datasets] == ["id", "ood", "ood", "ood", "nat-adv"]
    assert len(suite.train_split(None, "train")) == 1077


@pytest.mark.slow
def test_micro_clip_zero_shot_profile(micro_clip):
    """Shifts lower zero-shot accuracy below ID, micro-a is the hardest, and ID leaves room to improve."""
    from grace_bench.eval.context import classifier_for

    suite = get_suite("micro")
    clf = classifier_for(micro_clip, suite)
    acc = {}
    with torch.no_grad():
        for d in suite.datasets:
            x, y = d.load(None).tensors
            acc[d.name] = (clf(x).argmax(1) == y).float().mean().item()
    assert 0.75 <= acc["micro"] <= 0.97, acc
    for name in ("micro-v2", "micro-sketch", "micro-r", "micro-a"):
        assert acc[name] < acc["micro"] - 0.05, acc
    assert acc["micro-a"] == min(acc.values()), acc


@pytest.mark.regression
def test_shipped_micro_a_selection_is_what_the_generator_draws_here():
    """The shipped selection was made by ``select_micro_a``; on another CPU the fit's margin cases may differ."""
    assert np.array_equal(M.select_micro_a(), M.shipped_micro_a_selection())


def test_damaged_micro_a_selection_is_a_user_error(tmp_path, monkeypatch):
    from grace_bench.errors import UserError

    bad = tmp_path / "selection.txt"
    bad.write_text("# header\n1\n2\nthree\n")
    monkeypatch.setattr(M, "MICRO_A_SELECTION", bad)
    M.shipped_micro_a_selection.cache_clear()
    try:
        with pytest.raises(UserError, match="reinstall"):
            M.shipped_micro_a_selection()
    finally:
        M.shipped_micro_a_selection.cache_clear()
