"""The AutoAttack adapter: identical flags to pyautoattack run directly, resolved settings, projected logits,
and bit-identical resumption after a real ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack
from torch import nn

from grace_bench.attacks.autoattack import build_autoattack, run_autoattack
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


def _direct(model, x, y, attacks, *, batch_size, eps=EPS, norm="Linf", apgd=None, apgd_t=None, fab=None, square=None):
    """Reference: pyautoattack's own ``run_standard_evaluation`` with explicitly constructed sub-attacks."""
    aa = AutoAttack(model, attacks=attacks, eps=eps, norm=norm, seed=0, version="custom", device="cpu")
    common = dict(eps=eps, norm=norm, seed=0, device="cpu", verbose=False)
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
                          settings={"apgd-ce": {"restarts": 2, "iterations": 10}}, batch_size=8, progress=False)
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
                          batch_size=6, progress=False)
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
                          batch_size=6, progress=False)
    assert ours.config["num_classes"] == 5 and ours.config["settings"]["apgd-t"]["targets"] == 4  # C - 1
    ref = _direct(_ExplicitProjection(tiny_classifier, subset), x, y, ["apgd-ce", "apgd-t"], batch_size=6,
                  apgd=dict(n_restarts=1, n_iter=5), apgd_t=dict(n_restarts=1, n_iter=5, n_target_classes=4))
    assert torch.equal(ours.robust, ref)
    assert ours.clean_acc == pytest.approx(9 / 12)


_CHILD = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES
from grace_bench.models.loading import build_clip_model
from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head
from grace_bench.attacks.autoattack import run_autoattack
torch.manual_seed(0)
clip = build_clip_model("tiny-clip")
head = build_zero_shot_head(clip.model, clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES)
clf = ZeroShotClassifier(clip.model, head, clip.mean, clip.std).eval()
g = torch.Generator().manual_seed(0)
x = torch.rand(24, 3, 16, 16, generator=g)
with torch.no_grad():
    y = clf(x).argmax(dim=1)
y[:3] = (y[:3] + 1) % 10
forward = clf.forward
def slow_forward(inp):  # same numbers, just slow enough to be killed mid-attack
    time.sleep(0.03)
    return forward(inp)
clf.forward = slow_forward
print("started", flush=True)
run_autoattack(clf, x, y, eps=1 / 255, version="custom", attacks=["apgd-ce", "apgd-t"], seed=0,
               settings={"apgd-ce": {"restarts": 2, "iterations": 10}, "apgd-t": {"iterations": 5, "targets": 3}},
               batch_size=8, state_dir=sys.argv[1], progress=False)
print("finished", flush=True)
"""


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and spinning threads cost CPU on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


_SETTINGS = {"apgd-ce": {"restarts": 2, "iterations": 10}, "apgd-t": {"iterations": 5, "targets": 3}}


def _read_state(state_dir):
    files = list(state_dir.glob("autoattack-*.json"))
    if not files:
        return None
    try:
        return json.loads(files[0].read_text())
    except ValueError:
        return None


def test_resume_after_sigkill_gives_identical_flags(tiny_classifier, tmp_path):
    state_dir = tmp_path / "state"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(state_dir), str(torch.get_num_threads())], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_at = None
    try:
        deadline = time.monotonic() + 300
        while child.poll() is None and time.monotonic() < deadline:
            state = _read_state(state_dir)
            if state and not state["done"] and (state["next_batch"] >= 1 or state["attack_index"] >= 1):
                os.kill(child.pid, signal.SIGKILL)
                killed_at = state
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None and killed_at is None:
            child.kill()
        child.wait()
    assert killed_at is not None, child.stderr.read().decode()[-2000:]
    assert child.returncode == -signal.SIGKILL
    partial = _read_state(state_dir)
    assert partial is not None and not partial["done"]

    x, y = _data(tiny_classifier, n=24, seed=0)
    resumed = run_autoattack(tiny_classifier, x, y, eps=1 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                             settings=_SETTINGS, batch_size=8, state_dir=state_dir, progress=False)
    assert resumed.timings["resumed_from"] is not None
    assert resumed.timings["resumed_from"]["attack_index"] == partial["attack_index"]
    fresh = run_autoattack(tiny_classifier, x, y, eps=1 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                           settings=_SETTINGS, batch_size=8, progress=False)
    assert torch.equal(resumed.robust, fresh.robust) and torch.equal(resumed.clean, fresh.clean)
    assert resumed.cascade == fresh.cascade
    assert 0 < int(fresh.robust.sum()) < int(fresh.clean.sum())
    # A finished state is reused as is.
    again = run_autoattack(tiny_classifier, x, y, eps=1 / 255, version="custom", attacks=["apgd-ce", "apgd-t"],
                           settings=_SETTINGS, batch_size=8, state_dir=state_dir, progress=False)
    assert torch.equal(again.robust, fresh.robust) and _read_state(state_dir)["done"]
