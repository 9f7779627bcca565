"""The AutoAttack adapter: identical flags to pyautoattack run directly, resolved settings, projected logits,
chunked per-sub-attack resumption with identical flags (the real ``kill -9`` of ``grace-bench eval`` is in
test_attack_resume.py)."""

from __future__ import annotations

import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack
from torch import nn

from grace_bench.attacks.autoattack import build_autoattack, run_autoattack
from grace_bench.attacks.chunks import chunk_seed
from grace_bench.errors import UserError

EPS = 1 / 255


def _data(classifier, n=24, seed=0, num_classes=10):
    """Random images labelled with the model's own predictions, except the first 3 (clean errors)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = classifier(x).argmax(dim=1)
    y[:3] = (y[:3] + 1) % num_classes
    return x, y


def _direct(model, x, y, attacks, *, batch_size, **kwargs):
    """Reference: pyautoattack's own ``run_standard_evaluation`` on each chunk of ``batch_size`` examples,
    seeded with ``chunk_seed(0, c)``, with explicitly constructed sub-attacks."""
    flags = [_direct_one(model, x[s : s + batch_size], y[s : s + batch_size], attacks, batch_size=batch_size,
                         seed=chunk_seed(0, c), **kwargs)
             for c, s in enumerate(range(0, x.shape[0], batch_size))]
    return torch.cat(flags)


def _direct_one(model, x, y, attacks, *, batch_size, seed, eps=EPS, norm="Linf", apgd=None, apgd_t=None, fab=None,
                square=None):
    aa = AutoAttack(model, attacks=attacks, eps=eps, norm=norm, seed=seed, version="custom", device="cpu")
    common = dict(eps=eps, norm=norm, seed=seed, device="cpu", verbose=False)
    if apgd:
        aa.apgd = APGDAttack(model, eot_iter=1, rho=0.75, logger=aa.logger, **apgd, **common)
    if apgd_t:
        aa.apgd_targeted = APGDAttack_targeted(model, eot_iter=1, rho=0.75, logger=aa.logger, **apgd_t, **common)
    if fab:
        aa.fab = FABAttack_PT(model, **fab, **common)
    if square:
        aa.square = SquareAttack(model, p_init=0.8, resc_schedule=False, **square, **common)
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return y_adv == y


def test_apgd_ce_flags_identical_to_direct_pyautoattack(tiny_classifier):
    x, y = _data(tiny_classifier)
    ours = run_autoattack(tiny_classifier, x, y, eps=EPS, version="custom", attacks=["apgd-ce"],
                          settings={"apgd-ce": {"restarts": 2, "iterations": 10}}, chunk_size=8, progress=False)
    ref = _direct(tiny_classifier, x, y, ["apgd-ce"], batch_size=8, apgd=dict(n_restarts=2, n_iter=10))
    assert torch.equal(ours.robust, ref)
    assert not ours.clean[:3].any() and not ours.robust[:3].any()  # clean errors count as non-robust
    assert 0 < int(ours.robust.sum()) < int(ours.clean.sum())  # the attack fooled some, not all
    assert ours.cascade == pytest.approx({"clean": 21 / 24, "apgd-ce": float(ref.float().mean())})
    assert ours.config["settings"]["apgd-ce"]["restarts"] == 2 and ours.config["seed"] == 0


def test_full_custom_cascade_identical_to_direct_pyautoattack(tiny_classifier):
    attacks = ["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"]
    x, y = _data(tiny_classifier, n=16, seed=1)
    settings = {"apgd-ce": {"restarts": 1, "iterations": 5}, "apgd-dlr": {"restarts": 1, "iterations": 5},
                "apgd-t": {"iterations": 5, "targets": 2}, "fab-t": {"iterations": 5, "targets": 2},
                "square": {"queries": 20}}
    ours = run_autoattack(tiny_classifier, x, y, eps=0.6 / 255, version="custom", attacks=attacks, settings=settings,
                          chunk_size=6, progress=False)
    ref = _direct(tiny_classifier, x, y, attacks, batch_size=6, eps=0.6 / 255, apgd=dict(n_restarts=1, n_iter=5),
                  apgd_t=dict(n_restarts=1, n_iter=5, n_target_classes=2),
                  fab=dict(n_restarts=1, n_iter=5, n_target_classes=2), square=dict(n_restarts=1, n_queries=20))
    assert torch.equal(ours.robust, ref)
    assert list(ours.cascade) == ["clean", *attacks]
    values = list(ours.cascade.values())
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(ours.robust_acc) and values[0] == pytest.approx(ours.clean_acc)
    assert set(ours.timings["attacks_s"]) == set(attacks)


def test_versions_record_the_settings_actually_used(tiny_classifier):
    def settings(version, attacks=None, num_classes=10):
        return build_autoattack(tiny_classifier, num_classes=num_classes, version=version, attacks=attacks,
                                eps="4/255")[1]

    std = settings("standard")
    assert std["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and std["eps_str"] == "4/255"
    assert std["settings"]["apgd-ce"] == {"restarts": 1, "iterations": 100, "eot": 1, "rho": 0.75, "loss": "ce"}
    assert std["settings"]["apgd-t"]["targets"] == 9 and std["settings"]["fab-t"]["targets"] == 9
    assert std["settings"]["square"]["queries"] == 5000
    assert settings("custom", ["apgd-ce"])["settings"]["apgd-ce"]["restarts"] == 5  # custom default differs
    plus = settings("plus")["settings"]
    assert plus["apgd-ce"]["restarts"] == 5 and plus["fab"]["restarts"] == 5 and plus["fab-t"]["restarts"] == 1
    assert settings("rand")["settings"]["apgd-dlr"]["eot"] == 20
    five = settings("standard", num_classes=5)["settings"]
    assert five["apgd-t"]["targets"] == 4 and five["apgd-t"]["targets_requested"] == 9
    three = settings("standard", num_classes=3)
    assert "apgd-t" not in three["attacks"] and "apgd-t" in three["dropped"]
    with pytest.raises(UserError):
        settings("custom")
    with pytest.raises(UserError):
        settings("standard", ["apgd-ce"])


class _ExplicitProjection(nn.Module):
    """Independent reference for projected logits: full logits, then pick the subset's columns."""

    def __init__(self, full: nn.Module, subset: list[int]):
        super().__init__()
        self.full, self.subset = full, subset

    def forward(self, x):
        return self.full(x)[:, self.subset]


def test_attacks_on_projected_logits(tiny_classifier):
    subset = [1, 3, 5, 7, 9]
    projected = tiny_classifier.with_subset(subset)
    x, y = _data(projected, n=12, seed=2, num_classes=5)
    assert y.max() < 5
    ours = run_autoattack(projected, x, y, eps=EPS, version="custom", attacks=["apgd-ce", "apgd-t"],
                          settings={"apgd-ce": {"restarts": 1, "iterations": 5}, "apgd-t": {"iterations": 5}},
                          chunk_size=6, progress=False)
    assert ours.config["num_classes"] == 5 and ours.config["settings"]["apgd-t"]["targets"] == 4  # C - 1
    ref = _direct(_ExplicitProjection(tiny_classifier, subset), x, y, ["apgd-ce", "apgd-t"], batch_size=6,
                  apgd=dict(n_restarts=1, n_iter=5), apgd_t=dict(n_restarts=1, n_iter=5, n_target_classes=4))
    assert torch.equal(ours.robust, ref)
    assert ours.clean_acc == pytest.approx(9 / 12)


_SETTINGS = {"apgd-ce": {"restarts": 2, "iterations": 10}, "apgd-t": {"iterations": 5, "targets": 3}}


class _Killed(Exception):
    pass


def _counting_perturb(monkeypatch, fail_after=None):
    """Count sub-attack executions (``_perturb`` calls); optionally raise on call number ``fail_after + 1``."""
    from grace_bench.attacks import autoattack as aa_mod

    real, calls = aa_mod._perturb, []

    def counted(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise _Killed
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(aa_mod, "_perturb", counted)
    return calls


def test_interrupted_run_resumes_per_sub_attack_with_identical_flags(tiny_classifier, tmp_path, monkeypatch):
    x, y = _data(tiny_classifier, n=24, seed=0)
    kw = dict(eps=1 / 255, version="custom", attacks=["apgd-ce", "apgd-t"], settings=_SETTINGS, chunk_size=8,
              progress=False)
    with monkeypatch.context() as m:
        fresh_calls = _counting_perturb(m)
        fresh = run_autoattack(tiny_classifier, x, y, **kw)
    assert len(fresh_calls) == 6  # 3 chunks x 2 sub-attacks, each chunk keeps robust examples
    with monkeypatch.context() as m:
        _counting_perturb(m, fail_after=3)  # dies inside the 4th sub-attack execution
        with pytest.raises(_Killed):
            run_autoattack(tiny_classifier, x, y, state_dir=tmp_path, **kw)
    with monkeypatch.context() as m:
        resumed_calls = _counting_perturb(m)
        resumed = run_autoattack(tiny_classifier, x, y, state_dir=tmp_path, **kw)
    assert len(resumed_calls) == 3 and resumed.timings["steps_run"] == 3  # only the unfinished steps
    assert resumed.timings["resumed_from"] == {"chunk": 1, "attack_index": 1}
    assert torch.equal(resumed.robust, fresh.robust) and torch.equal(resumed.clean, fresh.clean)
    assert resumed.cascade == fresh.cascade
    assert 0 < int(fresh.robust.sum()) < int(fresh.clean.sum())
    again = run_autoattack(tiny_classifier, x, y, state_dir=tmp_path, **kw)  # finished chunks are reused as is
    assert again.timings["steps_run"] == 0 and torch.equal(again.robust, fresh.robust)
    assert again.timings["resumed_from"] == {"chunk": 3, "attack_index": 0} and fresh.timings["resumed_from"] is None
    assert fresh.config["chunk_size"] == 8 and fresh.config["n_chunks"] == 3


def test_chunk_seeds_differ_and_are_recorded(tiny_classifier):
    """Chunk seeds derive from (seed, chunk index) and are recorded; chunk 0 equals pyautoattack with its seed."""
    assert len({chunk_seed(0, c) for c in range(100)}) == 100 and chunk_seed(0, 1) != chunk_seed(1, 1)
    x, y = _data(tiny_classifier, n=8, seed=3)
    kw = dict(eps=1 / 255, version="custom", attacks=["apgd-ce"], settings={"apgd-ce": {"iterations": 3}},
              progress=False)
    one = run_autoattack(tiny_classifier, x, y, chunk_size=8, **kw)
    assert "chunk" in one.config["chunk_seeds"] and one.config["seed"] == 0
    ref = _direct_one(tiny_classifier, x, y, ["apgd-ce"], batch_size=8, seed=chunk_seed(0, 0),
                      apgd=dict(n_restarts=1, n_iter=3))
    assert torch.equal(one.robust, ref)


class _RecordingBar:
    """Stands in for tqdm: records totals, updates and postfixes."""

    made: list[_RecordingBar] = []

    def __init__(self, *args, total=None, disable=False, **kwargs):
        self.total, self.disable, self.updates, self.postfixes = total, disable, [], []
        _RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix(self, fields=None, refresh=True, **kwargs):
        self.postfixes.append(dict(fields or {}, **kwargs))

    def close(self):
        pass


def test_progress_advances_per_iteration_inside_a_sub_attack(tiny_classifier, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    _RecordingBar.made = []
    x, y = _data(tiny_classifier, n=12, seed=4)
    run_autoattack(tiny_classifier, x, y, eps=1 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                   settings={"apgd-ce": {"restarts": 2, "iterations": 10}, "apgd-t": {"iterations": 4, "targets": 2}},
                   chunk_size=8, progress=True, checks=False)
    (bar,) = [b for b in _RecordingBar.made if not b.disable]
    assert bar.total == 2 * (2 * 10 + 2 * 4)  # chunks x (restarts x iterations [x targets]) in iterations
    assert sum(bar.updates) == bar.total
    positive = [u for u in bar.updates if u > 0]
    assert len(positive) > 4 * 2  # many moves per step, not one per batch
    assert [(p["chunk"], p["attack"]) for p in bar.postfixes] == [("1/2", "apgd-ce"), ("1/2", "apgd-t"),
                                                                  ("2/2", "apgd-ce"), ("2/2", "apgd-t")]
    assert bar.postfixes[0]["robust"] == "5/8" and bar.postfixes[2]["robust"].endswith("/4")  # 3 clean errors
