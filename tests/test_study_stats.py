"""The study's statistics on constructed inputs whose answer is known: t-intervals, the image bootstrap
(composite metrics recomputed from resampled flags), and the three-valued verdicts of the claims."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grace_bench.eval.metrics import aggregates
from grace_bench.results.values import harmonic_mean
from grace_bench.study.claims import accuracy_claims, best_hm_claim, geometry_claims
from grace_bench.study.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NO_IMAGES,
    NOT_MEASURED,
    SINGLE_SEED,
    Bootstrap,
    ImageFlags,
    Interval,
    Row,
    combined_verdict,
    metric_from_sets,
    paired_diff,
    point_metric,
    t_interval,
    t_quantile,
    verdict,
)

KEYS = ("id", "ood_avg", "nat_adv", "autoattack", "adv", "hm")


def test_t_quantiles_match_the_printed_table():
    for dof, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=5e-4)


def test_t_interval_of_one_two_three_is_two_plus_minus_t_times_se():
    got = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)  # sd([1, 2, 3]) = 1
    assert got.lo == pytest.approx(2 - half, abs=1e-5) and got.hi == pytest.approx(2 + half, abs=1e-5)
    assert t_interval([0.5]) is None  # one seed: no interval


def _flags(id_, ood=(), nat=(), robust=None) -> ImageFlags:
    clean = {"id": np.asarray(id_, bool)}
    roles = {"id": "id"}
    for i, f in enumerate(ood):
        clean[f"ood{i}"], roles[f"ood{i}"] = np.asarray(f, bool), "ood"
    for i, f in enumerate(nat):
        clean[f"nat{i}"], roles[f"nat{i}"] = np.asarray(f, bool), "nat-adv"
    return ImageFlags(clean, roles, "id", None if robust is None else np.asarray(robust, bool), "id/0-9")


def _row(label: str, flags_by_seed: dict[int, ImageFlags], **kw) -> Row:
    values = {s: {k: point_metric(f, k) for k in KEYS} for s, f in flags_by_seed.items()}
    return Row(label, values, dict(flags_by_seed), **kw)


def test_bootstrap_of_identical_rows_is_zero_and_of_opposite_rows_is_exactly_100_points():
    rng = np.random.default_rng(0)
    f = {s: _flags(rng.random(40) < 0.7) for s in range(3)}
    boot = Bootstrap(replicates=300)
    same = paired_diff(_row("a", f), _row("b", f), "id", boot)
    assert (same.boot.lo, same.boot.hi) == (0.0, 0.0) and (same.t.lo, same.t.hi) == (0.0, 0.0)
    right = {s: _flags(np.ones(40)) for s in range(3)}
    wrong = {s: _flags(np.zeros(40)) for s in range(3)}
    d = paired_diff(_row("a", right), _row("b", wrong), "id", boot)
    assert d.mean == 1.0 and (d.boot.lo, d.boot.hi) == (1.0, 1.0)


def test_hm_is_recomputed_from_resampled_flags_per_set():
    rng = np.random.default_rng(1)
    f = _flags(rng.random(30) < 0.9, ood=[rng.random(20) < 0.5, rng.random(25) < 0.4], nat=[rng.random(15) < 0.3],
               robust=rng.random(10) < 0.6)
    # at the full sample the definitions are those of the eval summary
    per = {n: {"role": f.roles[n], "top1": float(v.mean())} for n, v in f.clean.items()}
    agg = aggregates(per, {"id": {"robust_acc": float(f.robust.mean())}}, "id")
    for key in KEYS:
        assert point_metric(f, key) == pytest.approx(agg[key])
    boot = Bootstrap(replicates=7, chunk=3)
    hm = boot.metric(f, "hm")
    assert hm.shape == (7,)
    counts = {k: np.concatenate(boot.counts(k, len(v))) for k, v in f.sets().items()}
    for b in range(7):  # replicate b by hand: resampled accuracy of every set, then the paper's formulas
        acc = {k: float(counts[k][b] @ v) / len(v) for k, v in f.sets().items()}
        idv, rob = acc["clean:id:30"], acc["robust:id/0-9:10"]
        ood = (acc["clean:ood0:20"] + acc["clean:ood1:25"]) / 2
        adv = (rob + acc["clean:nat0:15"]) / 2
        assert hm[b] == pytest.approx(harmonic_mean([idv, ood, adv]))
    assert metric_from_sets(f, {k: 0.0 for k in f.sets()}, "hm") == 0.0  # a useless axis: HM 0, as summaries say


def test_bootstrap_resampling_is_recorded_and_repeatable():
    f = {0: _flags(np.arange(50) % 3 == 0), 1: _flags(np.arange(50) % 2 == 0)}
    g = {0: _flags(np.arange(50) % 5 == 0), 1: _flags(np.arange(50) % 4 == 0)}
    one = paired_diff(_row("a", f), _row("b", g), "id", Bootstrap(replicates=200, seed=3))
    two = paired_diff(_row("a", f), _row("b", g), "id", Bootstrap(replicates=200, seed=3))
    other = paired_diff(_row("a", f), _row("b", g), "id", Bootstrap(replicates=200, seed=4))
    assert one.boot == two.boot and one.boot != other.boot


def test_rows_without_flags_or_with_flags_that_disagree_get_no_bootstrap():
    f = {s: _flags(np.arange(20) < 10 + s) for s in range(3)}
    plain = Row("b", {s: {"id": 0.4} for s in range(3)})
    d = paired_diff(_row("a", f), plain, "id", Bootstrap(replicates=50))
    assert d.boot is None and d.boot_note == NO_IMAGES and d.t is not None
    lying = _row("b", f)
    lying.values[0]["id"] = 0.99
    d = paired_diff(_row("a", f), lying, "id", Bootstrap(replicates=50))
    assert d.boot is None and "does not match" in d.boot_note


def test_a_seed_independent_row_pairs_with_every_seed():
    zs = Row("zero-shot", {0: {"id": 0.5}}, fixed=True)
    ft = Row("ft", {0: {"id": 0.6}, 1: {"id": 0.7}, 2: {"id": 0.8}})
    d = paired_diff(ft, zs, "id")
    assert d.seeds == [0, 1, 2] and d.diffs == pytest.approx([0.1, 0.2, 0.3])


def test_verdict_rule_on_intervals():
    assert verdict(Interval(0.01, 0.05), 0.0) == HOLDS
    assert verdict(Interval(0.0, 0.05), 0.0) == HOLDS  # d ≥ 0: the bound itself meets it
    assert verdict(Interval(0.0, 0.05), 0.0, strict=True) == INCONCLUSIVE  # d > 0: it does not
    assert verdict(Interval(-0.05, -0.01), 0.0) == FAILS
    assert verdict(Interval(-0.01, 0.01), 0.0) == INCONCLUSIVE
    assert verdict(None, 0.0) == SINGLE_SEED
    assert combined_verdict(None, 0.0) == NOT_MEASURED


def _adv_rows(grace: list[float], tecoa: list[float]) -> dict[str, Row]:
    return {"grace": Row("grace", {s: {"adv": v} for s, v in enumerate(grace)}),
            "tecoa": Row("tecoa", {s: {"adv": v} for s, v in enumerate(tecoa)})}


def _claim(claims, name):
    return next(c for c in claims if c.claim == name)


def test_a_claim_holds_does_not_hold_or_is_inconclusive_by_its_interval():
    name = "Adv at least TeCoA's"
    tecoa = [0.40, 0.42, 0.41, 0.43, 0.40]
    holds = _claim(accuracy_claims(_adv_rows([t + 0.05 + 0.01 * (s % 2) for s, t in enumerate(tecoa)], tecoa)), name)
    assert holds.verdict == HOLDS and "+5." in holds.measured
    fails = _claim(accuracy_claims(_adv_rows([t - 0.05 - 0.01 * (s % 2) for s, t in enumerate(tecoa)], tecoa)), name)
    assert fails.verdict == FAILS
    noisy = [t + d for t, d in zip(tecoa, (0.03, -0.02, 0.01, -0.03, 0.02))]  # mean +0.2 pts, sd 2.6 pts
    unsure = _claim(accuracy_claims(_adv_rows(noisy, tecoa)), name)
    assert unsure.verdict == INCONCLUSIVE and unsure.seeds_ci.startswith("[-")
    single = _claim(accuracy_claims(_adv_rows([0.5], [0.4])), name)
    assert single.verdict == SINGLE_SEED  # one seed: no interval, no verdict
    assert _claim(accuracy_claims({}), name).verdict == NOT_MEASURED


def test_the_bootstrap_can_make_a_seed_verdict_inconclusive():
    """Every seed says +10 points (t-interval [10, 10]), but on 20 images the bootstrap straddles −1 point."""
    a = np.zeros(20, bool)
    a[:6] = True  # A alone right on 6 images, B alone right on 4: +2/20 per seed
    b = np.zeros(20, bool)
    b[6:10] = True
    rows = {"grace": _row("grace", {s: _flags(a) for s in range(3)}),
            "ft": _row("ft", {s: _flags(b) for s in range(3)})}
    claims = accuracy_claims(rows, Bootstrap(replicates=400))
    c = _claim(claims, "ID accuracy close to FT")
    assert c.seeds_ci == "[+10.00, +10.00]" and c.verdict == INCONCLUSIVE
    lo = float(c.images_ci.strip("[]").split(",")[0])
    assert lo < -1.0
    assert _claim(accuracy_claims(rows), "ID accuracy close to FT").verdict == HOLDS  # t alone would say holds


def _hm_rows(grace: list[float], **others: list[float]) -> dict[str, Row]:
    rows = {"grace": Row("grace", {s: {"hm": v} for s, v in enumerate(grace)})}
    rows.update({k.replace("_", "-"): Row(k.replace("_", "-"), {s: {"hm": v} for s, v in enumerate(vals)})
                 for k, vals in others.items()})
    return rows


def test_best_hm_holds_fails_or_is_inconclusive_against_every_contender():
    g = [0.50, 0.52, 0.51]
    assert best_hm_claim(_hm_rows(g, ft=[0.30, 0.31, 0.29], tecoa=[0.45, 0.46, 0.44]), None).verdict == HOLDS
    assert best_hm_claim(_hm_rows(g, ft=[0.30, 0.31, 0.29], fare=[0.55, 0.56, 0.57]), None).verdict == FAILS
    close = best_hm_claim(_hm_rows(g, ft=[0.30, 0.31, 0.29], fare=[0.52, 0.50, 0.51]), None)
    assert close.verdict == INCONCLUSIVE and "fare" in close.measured
    rows = _hm_rows(g, ft=[0.30, 0.31, 0.29], grace_default=[0.9, 0.9, 0.9], lora=[0.9, 0.9, 0.9])
    rows["lora"].group = "lora"  # neither GRACE's own variants nor other tables are contenders
    assert best_hm_claim(rows, None).verdict == HOLDS
    recent = _hm_rows(g, ft=[0.30, 0.31, 0.29], agft=[0.60, 0.61, 0.62])
    recent["agft"].group = "recent"
    assert best_hm_claim(recent, None).verdict == FAILS


def test_geometry_claims_on_one_seed_say_so_and_on_several_seeds_get_a_verdict():
    geo = {"grace": {"lambda_max": 1.0, "weight_drift": 0.1}, "ft": {"lambda_max": 3.0},
           "wise-ft": {"lambda_max": 2.0}, "tecoa": {"weight_drift": 0.4}}
    g = {c.claim: c for c in geometry_claims(geo)}
    flat = g["flatter minimum: λ_max about half of FT and WiSE-FT"]
    assert flat.verdict == SINGLE_SEED and "ratios 0.33, 0.50" in flat.measured
    assert g["small weight drift"].verdict == SINGLE_SEED and "meets the criterion" in g["small weight drift"].measured
    assert g["small ΔLID under shift"].verdict == NOT_MEASURED
    seeds = {"grace": {0: {"lambda_max": 1.0}, 1: {"lambda_max": 1.1}, 2: {"lambda_max": 0.9}},
             "ft": {0: {"lambda_max": 3.0}, 1: {"lambda_max": 3.2}, 2: {"lambda_max": 2.9}},
             "wise-ft": {0: {"lambda_max": 2.2}, 1: {"lambda_max": 2.4}, 2: {"lambda_max": 2.1}}}
    flat = geometry_claims({}, seeds)[0]
    assert flat.verdict == HOLDS
    seeds["wise-ft"] = {0: {"lambda_max": 1.2}, 1: {"lambda_max": 1.3}, 2: {"lambda_max": 1.1}}  # ratio ~0.83
    assert geometry_claims({}, seeds)[0].verdict == FAILS
