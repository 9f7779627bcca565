"""Sanity checks and invariants (robust <= clean, eps=0 invariance), threat parsing, and the
``evaluate_adversarial`` entry point (JSON-ready output, resume, projected logits)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from grace_bench.attacks import sanity
from grace_bench.attacks.evaluate import evaluate_adversarial
from grace_bench.attacks.threat import canonical_attack, format_eps, parse_attack_spec, parse_eps, parse_norm
from grace_bench.errors import UserError


def _dataset(classifier, n=12, seed=0, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = classifier(x).argmax(dim=1)
    y[:2] = (y[:2] + 1) % num_classes  # two clean errors
    return TensorDataset(x, y)


# ---- threat parsing -------------------------------------------------------------------------------------------


def test_parse_eps_and_norm():
    assert parse_eps("4/255") == pytest.approx(4 / 255)
    assert parse_eps("0.0157") == pytest.approx(0.0157)
    assert parse_eps("0") == 0.0 and parse_eps(0.5) == 0.5 and parse_eps(" 1e-2 ") == pytest.approx(0.01)
    for junk in ["four", "4/0", "-1", "nan", "inf", "4/", "/255", "1/2/3", "", True]:
        with pytest.raises(UserError):
            parse_eps(junk)
    assert format_eps(4 / 255) == "4/255" and format_eps("0") == "0" and format_eps(0.5) == "0.5"
    assert format_eps("8/510") == "4/255" and format_eps("0.0157") == "0.0157"
    assert parse_norm("linf") == "Linf" and parse_norm("L2") == "L2"
    with pytest.raises(UserError):
        parse_norm("L1")


def test_parse_attack_spec():
    assert parse_attack_spec("none").kind == "none"
    assert parse_attack_spec("pgd").kind == "pgd"
    std = parse_attack_spec("aa-standard")
    assert (std.kind, std.version, std.attacks) == ("autoattack", "standard", ())
    assert parse_attack_spec("AA-Plus").version == "plus" and parse_attack_spec("aa-rand").version == "rand"
    ce = parse_attack_spec("apgd-ce")
    assert (ce.version, ce.attacks) == ("custom", ("apgd-ce",))
    custom = parse_attack_spec("custom:apgd-ce[restarts=1;iterations=50],apgd-t[targets=3],square")
    assert custom.attacks == ("apgd-ce", "apgd-t", "square")
    assert custom.settings_dict() == {"apgd-ce": {"restarts": "1", "iterations": "50", "eot": "1"},
                                      "apgd-t": {"restarts": "1", "iterations": "100", "targets": "3", "eot": "1"},
                                      "square": {"restarts": "1", "queries": "5000"}}
    assert parse_attack_spec(custom.name) == custom  # canonical names round-trip
    hash(custom)  # frozen and hashable
    assert parse_attack_spec("pgd[steps=20;step=2/255]").settings_dict() == {"pgd": {"steps": "20", "step": "2/255"}}
    for bad in ["fgsm", "custom:", "custom:apgd-ce,bogus", "custom:apgd-ce[restarts=0]", "custom:fab-t[restarts=2]",
                "custom:apgd-ce,apgd-ce", "custom:apgd-ce[restarts=x]", "pgd[targets=3]", "custom:apgd-ce[restarts",
                "apgd-ce[iters=5,iterations=6]"]:
        with pytest.raises(UserError):
            parse_attack_spec(bad)


def test_attack_names_are_canonical_and_explicit():
    """A bare name, the default and the spelled-out name are one attack with one recorded name."""
    from grace_bench.data.suites import get_suite

    explicit = "apgd-ce[restarts=1,iters=100]"
    for text in ["apgd-ce", "APGD-CE", get_suite("micro").attack, "apgd-ce[iterations=100]", explicit,
                 "apgd-ce[iters=100;restarts=1;eot=1]"]:
        assert canonical_attack(text) == explicit, text
    assert parse_attack_spec("apgd-ce").settings_dict()["apgd-ce"]["restarts"] == "1"
    assert canonical_attack("pgd") == "pgd[steps=10,step=1/255]"
    assert canonical_attack("pgd[step=0.5/127.5]") == "pgd[steps=10,step=1/255]"
    assert canonical_attack("custom:fab-t,apgd-dlr[eot=20]") == \
        "custom:fab-t[iters=100,targets=9],apgd-dlr[restarts=1,iters=100,eot=20]"
    assert canonical_attack("AA-Standard") == "aa-standard" and canonical_attack("None") == "none"


def test_attack_descriptions_come_from_the_recorded_attack():
    from grace_bench.attacks.naming import describe_attack, robust_title

    assert describe_attack("apgd-ce") == "APGD-CE 1×100"
    assert robust_title("apgd-ce", "4/255", "Linf") == "robust (APGD-CE 1×100, ε=4/255 ℓ∞)"
    assert robust_title("none", "4/255", "Linf") == "robust (no attack)"  # no threat model when nothing ran
    assert describe_attack("pgd[steps=3]") == "PGD 3 steps of 1/255"
    assert describe_attack("aa-standard", short=True) == "AA-standard"
    assert describe_attack("aa-standard").startswith("AA-standard: APGD-CE 1×100 + APGD-T 1×100 (9 targets)")
    # A result written before canonical names: the bare "apgd-ce[restarts=1]" plus the settings that ran.
    old = {"attack": "custom:apgd-ce[restarts=1]", "eps": "4/255", "norm": "Linf",
           "config": {"version": "custom", "attacks": ["apgd-ce"], "eps": 4 / 255,
                      "settings": {"apgd-ce": {"restarts": 1, "iterations": 25, "eot": 1, "loss": "ce"}}}}
    assert robust_title(old) == "robust (APGD-CE 1×25, ε=4/255 ℓ∞)"
    old_pgd = {"attack": "pgd", "config": {"attack": "pgd", "steps": 10, "step_size": "1/255"}}
    assert describe_attack(old_pgd) == "PGD 10 steps of 1/255"
    assert describe_attack({"attack": "something-new[x=1]"}) == "something-new[x=1]"  # shown as recorded


def test_version_settings_table_matches_pyautoattack(tiny_classifier):
    from grace_bench.attacks.autoattack import build_autoattack
    from grace_bench.attacks.threat import SUBATTACK_DEFAULTS, VERSION_SETTINGS

    for version, table in VERSION_SETTINGS.items():
        resolved = build_autoattack(tiny_classifier, num_classes=10, version=version, eps="4/255")[1]["settings"]
        assert list(resolved) == list(table) if version != "plus" else set(resolved) == set(table)
        for attack, settings in table.items():
            assert {k: resolved[attack][k] for k in settings} == settings, (version, attack)
    standard = build_autoattack(tiny_classifier, num_classes=10, version="standard", eps="4/255")[1]["settings"]
    for attack in standard:
        assert {k: standard[attack][k] for k in SUBATTACK_DEFAULTS[attack]} == SUBATTACK_DEFAULTS[attack]


# ---- invariants -----------------------------------------------------------------------------------------------


def test_check_invariants_catches_violations():
    clean = torch.tensor([True, True, False, True])
    sanity.check_invariants(torch.tensor([True, False, False, False]), clean, eps=4 / 255)
    with pytest.raises(sanity.AttackInvariantError):
        sanity.check_invariants(torch.tensor([True, False, True, False]), clean, eps=4 / 255)  # robust > clean
    with pytest.raises(sanity.AttackInvariantError):
        sanity.check_invariants(torch.tensor([True, False, False, True]), clean, eps=0.0)  # eps=0 changed one


@pytest.mark.parametrize("attack", ["pgd", "custom:apgd-ce[restarts=1;iterations=5]"])
def test_robust_le_clean_and_eps_zero_equals_clean(tiny_classifier, tmp_path, attack):
    data = _dataset(tiny_classifier)
    for eps in ["2/255", "0"]:
        out = evaluate_adversarial(tiny_classifier, data, attack=attack, eps=eps, n=10, batch_size=4,
                                   state_dir=tmp_path / eps.replace("/", "_"), progress=False)
        robust, clean = torch.tensor(out["robust_flags"]), torch.tensor(out["clean_flags"])
        assert not (robust & ~clean).any() and out["robust_acc"] <= out["clean_acc"]
        assert not clean[:2].any()
        if eps == "0":
            assert torch.equal(robust, clean) and out["robust_acc"] == out["clean_acc"]
        else:
            assert out["robust_acc"] < out["clean_acc"]  # 2/255 fools a random tiny model on some inputs


# ---- evaluate_adversarial -------------------------------------------------------------------------------------


def test_evaluate_adversarial_pgd_is_json_ready_resumable_and_restores_the_model(tiny_classifier, tmp_path):
    data = _dataset(tiny_classifier, n=10)
    tiny_classifier.train()
    out = evaluate_adversarial(tiny_classifier, data, attack="pgd", eps="4/255", batch_size=4, chunk_size=4,
                               state_dir=tmp_path, seed=3, progress=False)
    assert tiny_classifier.training and all(p.requires_grad and p.grad is None for p in tiny_classifier.parameters())
    json.dumps(out)
    assert out["eps"] == "4/255" and out["eps_value"] == pytest.approx(4 / 255) and out["norm"] == "Linf"
    assert out["n"] == 10 and len(out["robust_flags"]) == 10 and out["indices"] == list(range(10))
    assert out["config"]["steps"] == 10 and out["config"]["step_size"] == "1/255" and out["config"]["seed"] == 3
    assert out["config"]["precision"] == "fp32" and out["config"]["random_start"] is True
    assert out["config"]["chunk_size"] == 4 and out["config"]["n_chunks"] == 3
    assert out["attack"] == "pgd[steps=10,step=1/255]" and out["attack_label"] == "PGD 10 steps of 1/255"
    assert out["cascade"] == {"clean": out["clean_acc"], "pgd": out["robust_acc"]}
    assert out["robust_acc"] == pytest.approx(sum(out["robust_flags"]) / 10)
    assert out["timings"]["image_steps_per_s"] > 0
    for key in ["clean_acc", "robust_acc"]:
        assert 0 <= out[key] <= 1
    again = evaluate_adversarial(tiny_classifier, data, attack="pgd", eps="4/255", batch_size=4, chunk_size=4,
                                 state_dir=tmp_path, seed=3, progress=False)
    assert again["timings"]["resumed_from"] == {"chunk": 3, "attack_index": 0}
    assert again["robust_flags"] == out["robust_flags"]
    assert again["timings"]["steps_run"] == 0
    fresh = evaluate_adversarial(tiny_classifier, data, attack="pgd", eps="4/255", batch_size=2, chunk_size=4,
                                 state_dir=tmp_path / "other", seed=3, progress=False)
    assert fresh["robust_flags"] == out["robust_flags"] and fresh["timings"]["resumed_from"] is None


def test_evaluate_adversarial_autoattack_on_projected_logits_with_indices(tiny_classifier, tmp_path):
    subset = [0, 2, 4, 6, 8]
    projected = tiny_classifier.with_subset(subset)
    data = _dataset(projected, n=12, seed=5, num_classes=5)
    out = evaluate_adversarial(projected, data, attack="custom:apgd-ce[restarts=1;iterations=5],apgd-t[iterations=5]",
                               eps=1 / 255, indices=[11, 0, 1, 5, 7, 3], n=5, batch_size=4, state_dir=tmp_path,
                               progress=False)
    json.dumps(out)
    assert out["indices"] == [11, 0, 1, 5, 7] and out["n"] == 5 and out["eps"] == "1/255"
    assert out["config"]["num_classes"] == 5 and out["config"]["settings"]["apgd-t"]["targets"] == 4
    assert out["config"]["version"] == "custom" and out["config"]["seed"] == 0 and out["config"]["precision"] == "fp32"
    assert list(out["cascade"]) == ["clean", "apgd-ce", "apgd-t"]
    assert out["clean_flags"][1:3] == [False, False]  # dataset items 0 and 1 are the clean errors
    assert out["cascade"]["apgd-t"] == pytest.approx(out["robust_acc"])


def test_evaluate_adversarial_rejects_bad_requests(tiny_classifier, tmp_path):
    data = _dataset(tiny_classifier, n=4)
    cases = [dict(attack="none", eps="4/255"), dict(attack="pgd", eps="4/255", n=5),
             dict(attack="pgd", eps="4/255", indices=[0, 9]), dict(attack="pgd", eps="2"),
             dict(attack="fgsm", eps="4/255")]
    for kwargs in cases:
        with pytest.raises(UserError):
            evaluate_adversarial(tiny_classifier, data, batch_size=2, state_dir=tmp_path, progress=False, **kwargs)
    normalised = TensorDataset((data.tensors[0] - 0.5) / 0.25, data.tensors[1])  # not pixel space
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        evaluate_adversarial(tiny_classifier, normalised, attack="pgd", eps="4/255", batch_size=2, state_dir=tmp_path,
                             progress=False)


# ---- warnings -------------------------------------------------------------------------------------------------


class _Softmax(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(dim=-1)


class _Quantised(nn.Module):
    """Rounds the input to 8 levels: piecewise constant, so input gradients are exactly zero."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 8) / 8)


class _Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


def test_model_checks_warn(tiny_classifier):
    data = _dataset(tiny_classifier, n=6)
    x, y = data.tensors
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sanity.model_checks(tiny_classifier, x, y) == []
    cases = {"probabilities": _Softmax(tiny_classifier), "zero input gradients": _Quantised(tiny_classifier),
             "random": _Noisy(tiny_classifier)}
    for phrase, model in cases.items():
        with pytest.warns(sanity.AttackSanityWarning, match=phrase):
            messages = sanity.model_checks(model, x, y)
        assert any(phrase in m for m in messages), messages


def test_gradient_masking_warning():
    masked = {"clean": 0.9, "apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.40}
    assert "gradient masking" in sanity.check_gradient_masking(masked)
    assert sanity.check_gradient_masking({**masked, "square": 0.45}) is None
    assert sanity.check_gradient_masking({"clean": 0.9, "square": 0.5}) is None  # no white-box attack before it


def test_evaluate_reports_gradient_masking_on_a_quantised_model(tiny_classifier, tmp_path):
    """Zero gradients leave APGD with its random start only, while Square (black-box) keeps finding examples."""
    model = _Quantised(tiny_classifier)
    data = _dataset(model, n=8, seed=2)
    with pytest.warns(sanity.AttackSanityWarning):
        out = evaluate_adversarial(model, data, attack="custom:apgd-ce[restarts=1;iterations=3],square[queries=60]",
                                   eps=16 / 255, batch_size=8, state_dir=tmp_path, progress=False)
    assert out["cascade"]["square"] < out["cascade"]["apgd-ce"]
    assert any("gradient masking" in w for w in out["warnings"])
    assert any("zero input gradients" in w for w in out["warnings"])
    assert not math.isnan(out["timings"]["total_s"])


def test_clear_state_removes_only_attack_state(tmp_path):
    from grace_bench.attacks.chunks import clear_state

    state = tmp_path / "state"
    (state / "autoattack-0123").mkdir(parents=True)
    (state / "autoattack-0123" / "chunk-00000.json").write_text("{}")
    (state / "pgd-4567.json").write_text("{}")
    clear_state(state)
    assert not state.exists()  # nothing else was there
    (state / "autoattack-89ab").mkdir(parents=True)
    (state / "notes.txt").write_text("keep me")
    clear_state(state)
    assert [p.name for p in state.iterdir()] == ["notes.txt"]
    clear_state(tmp_path / "missing")  # no state: nothing to do


def test_eval_help_states_what_the_bare_name_and_the_default_run(capsys, monkeypatch):
    from grace_bench.cli import main
    from grace_bench.data.suites import get_suite

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside names
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for name in ("micro", "imagenet"):
        assert f"bare apgd-ce = {canonical_attack(get_suite(name).attack)} (the default)" in text
    assert canonical_attack("apgd-ce") == canonical_attack(get_suite("micro").attack)
