"""Method-level tables (``grace_bench.leaderboard.by_method``) on synthetic summaries of several seeds.

The summaries are a fixture written to tmp_path in the schema ``grace-bench eval`` writes (checked against a
real micro run): same keys, the harness's own ``aggregates()`` for ID/OOD/Nat-adv/Adv/HM, written with
``atomic_write_json``. Their accuracies are drawn at random; expected values are recomputed with numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from grace_bench.errors import UserError
from grace_bench.eval.metrics import AGGREGATE_DEFINITIONS, aggregates
from grace_bench.leaderboard.by_method import (
    HM_OF_MEANS,
    dataset_columns,
    format_cell,
    load_records,
    method_json,
    method_markdown,
    method_table,
)
from grace_bench.leaderboard.collect import load_geometry, load_summaries
from grace_bench.utils.atomic import atomic_write_json
from tests.test_leaderboard import write_geometry

ROLES = {"micro": "id", "micro-v2": "ood", "micro-sketch": "ood", "micro-r": "ood", "micro-a": "nat-adv"}
PROTOCOL = {"attack": "apgd-ce", "eps": "4/255", "norm": "Linf", "n_adv": 250, "limit": None, "seed": 0}


def fingerprint(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def eval_summary(root: Path, label: str, seed: int, top1: dict[str, float], robust: float | None,
                 protocol: dict | None = None, suite: str = "micro", ckpt_name: str | None = None) -> Path:
    """Write ``summary-<fp12>.json`` for checkpoint ``<label>-s<seed>`` the way ``run_eval`` does."""
    proto = {**PROTOCOL, **(protocol or {})}
    ckpt_name = ckpt_name or f"{label}-s{seed}"
    fp = fingerprint(ckpt_name)
    res = root / "results" / fp[:12]
    per_dataset = {ds: {"role": ROLES[ds], "n": 540, "top1": v, "top5": min(1.0, v + 0.05),
                        "result_file": str(res / f"{ds}-clean-{fp[12:24]}.json")} for ds, v in top1.items()}
    adversarial = {}
    if robust is not None and proto["attack"] != "none":
        adversarial["micro"] = {
            "attack": proto["attack"], "eps": proto["eps"], "eps_value": 4 / 255, "norm": proto["norm"],
            "n": proto["n_adv"], "clean_acc": top1["micro"], "robust_acc": robust,
            "cascade": {"clean": top1["micro"], proto["attack"]: robust}, "config": {"n": proto["n_adv"]},
            "timings": {"total_s": 1.0}, "warnings": [], "result_file": str(res / "micro-adversarial-0.json"),
        }
    summary = {
        "schema": "grace-bench/summary/v1",
        "checkpoint": {"spec": f"runs/{ckpt_name}", "fingerprint": fp, "arch": "micro-clip", "base": None},
        "suite": suite,
        "label": label,
        "per_dataset": per_dataset,
        "adversarial": adversarial,
        "aggregates": aggregates(per_dataset, adversarial, "micro"),
        "protocol": {
            "version": "grace-bench/eval/v1", "templates": 10, "templates_hash": "52633106ff7d",
            "classnames_hash": "6ee0868914ab", "attack": proto["attack"], "eps": proto["eps"], "norm": proto["norm"],
            "n_adv": proto["n_adv"], "precision_clean": "fp32", "precision_attack": "fp32", "limit": proto["limit"],
            "seed": proto["seed"], "definitions": AGGREGATE_DEFINITIONS,
        },
        "versions": {"grace-bench": "0.1.0", "python": "3.11"},
    }
    path = root / f"summary-{fp[:12]}.json"
    atomic_write_json(path, summary)
    return path


def random_seeds(root: Path, label: str, n: int, rng: np.random.Generator, **kw) -> np.ndarray:
    """``n`` seeds of ``label``; returns their [n, 6] array: micro, v2, sketch, r, a top-1, robust acc."""
    vals = rng.uniform(0.05, 0.95, size=(n, 6))
    for seed, v in enumerate(vals):
        eval_summary(root, label, seed, dict(zip(ROLES, v[:5])), float(v[5]), **kw)
    return vals


def hm3(i, o, a):
    return 3.0 / (1.0 / i + 1.0 / o + 1.0 / a)


def test_schema_matches_the_eval_harness(tmp_path):
    """The fixture has the keys of a real summary (read from the harness code path: run_eval's dict)."""
    path = eval_summary(tmp_path, "grace", 0, dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2])), 0.1)
    data = json.loads(path.read_text())
    assert set(data) == {"schema", "checkpoint", "suite", "label", "per_dataset", "adversarial", "aggregates",
                         "protocol", "versions"}
    assert set(data["aggregates"]) == {"id", "ood_avg", "nat_adv", "autoattack", "adv", "hm"}
    rec = load_summaries(tmp_path)[0]
    assert rec.label == "grace" and rec.fp12 == fingerprint("grace-s0")[:12]
    assert rec.aggregates["hm"] == pytest.approx(hm3(0.9, 0.4, (0.1 + 0.2) / 2))


def test_mean_and_sample_std_match_numpy(tmp_path):
    rng = np.random.default_rng(7)
    grace = random_seeds(tmp_path, "grace", 3, rng)
    ft = random_seeds(tmp_path, "ft", 2, rng)
    zs = random_seeds(tmp_path, "zero-shot", 1, rng)
    rows = {r.label: r for r in method_table(load_records(tmp_path))}
    assert set(rows) == {"grace", "ft", "zero-shot"}
    for label, vals in (("grace", grace), ("ft", ft), ("zero-shot", zs)):
        row = rows[label]
        ood = vals[:, 1:4].mean(axis=1)
        adv = (vals[:, 5] + vals[:, 4]) / 2
        hm = hm3(vals[:, 0], ood, adv)
        expected = {"id": vals[:, 0], "ood_avg": ood, "nat_adv": vals[:, 4], "autoattack": vals[:, 5],
                    "adv": adv, "hm": hm}
        assert row.n == len(vals)
        for key, col in expected.items():
            stat = row.aggregates[key]
            assert stat.n == len(vals)
            assert stat.mean == pytest.approx(np.mean(col), abs=1e-12)
            if len(vals) > 1:
                assert stat.std == pytest.approx(np.std(col, ddof=1), abs=1e-12)
            else:
                assert stat.std is None
        for j, ds in enumerate(ROLES):
            assert row.per_dataset[ds].mean == pytest.approx(np.mean(vals[:, j]), abs=1e-12)
        # HM of the row = mean of per-seed HMs; HM(means) = HM of the mean columns; they differ in general
        assert row.hm_of_means == pytest.approx(hm3(np.mean(vals[:, 0]), np.mean(ood), np.mean(adv)), abs=1e-12)
        if len(vals) > 1:
            assert abs(row.hm_of_means - row.aggregates["hm"].mean) > 1e-6
    assert [r.label for r in method_table(load_records(tmp_path))] == sorted(
        rows, key=lambda k: -rows[k].aggregates["hm"].mean)


def test_geometry_joins_by_fingerprint(tmp_path):
    rng = np.random.default_rng(1)
    random_seeds(tmp_path, "grace", 3, rng)
    scales = [1.0, 1.5]  # seed 2 has no geometry
    for seed, scale in enumerate(scales):
        write_geometry(tmp_path, f"grace-s{seed}", scale=scale, nested=bool(seed))
    records = load_summaries(tmp_path) + load_geometry(tmp_path)
    (row,) = method_table(records)
    lam = [30.0 * s for s in scales]
    assert row.geometry["lambda_max"].values == pytest.approx(lam)
    assert row.geometry["lambda_max"].std == pytest.approx(np.std(lam, ddof=1))
    assert row.geometry["weight_drift"].mean == pytest.approx(np.mean([0.05 * s for s in scales]))
    assert row.geometry["cka_to_ref"].mean == pytest.approx(np.mean([1 - 0.1 * s for s in scales]))
    assert format_cell(row, "lambda_max") == f"{np.mean(lam):.4g} ± {np.std(lam, ddof=1):.2g} (2/3)"
    assert len(row.geometry_files) == 8  # 4 kinds x 2 checkpoints


def test_markdown_cells(tmp_path):
    eval_summary(tmp_path, "grace", 0, dict(zip(ROLES, [0.90, 0.5, 0.3, 0.4, 0.2])), 0.10)
    eval_summary(tmp_path, "grace", 1, dict(zip(ROLES, [0.92, 0.5, 0.3, 0.4, 0.2])), 0.12)
    eval_summary(tmp_path, "zero-shot", 0, dict(zip(ROLES, [0.80, 0.6, 0.4, 0.5, 0.1])), 0.01)
    rows = method_table(load_records(tmp_path), order=["zero-shot", "grace"])
    cols = ["id", "autoattack", "hm", HM_OF_MEANS, *dataset_columns(rows)]
    md = method_markdown(rows, cols, title="T", notes=["extra note"])
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == ["method", "n", "ID", "robust (APGD-CE 1×100, ε=4/255 ℓ∞)", "HM", "HM(means)", "micro", "micro-v2",
                    "micro-sketch", "micro-r", "micro-a"]
    zs = [c.strip() for c in lines[2].strip("|").split("|")]
    gr = [c.strip() for c in lines[3].strip("|").split("|")]
    assert zs[:4] == ["zero-shot", "1", "80.00", "1.00"]  # n = 1: no std
    assert gr[:4] == ["grace", "2", "91.00 ± 1.41", "11.00 ± 1.41"]
    hms = [hm3(0.90, 0.4, 0.15), hm3(0.92, 0.4, 0.16)]
    assert gr[4] == f"{100 * np.mean(hms):.2f} ± {100 * np.std(hms, ddof=1):.2f}"
    assert gr[5] == f"{100 * hm3(0.91, 0.4, 0.155):.2f}"
    assert "HM is the mean over checkpoints of each checkpoint's" in md and "is HM(means) (JSON: hm_of_means)" in md
    assert "- extra note" in md
    assert "(k/n)" not in md  # every column measured on every seed


def test_partial_columns_are_marked(tmp_path):
    eval_summary(tmp_path, "ft", 0, dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2])), 0.1)
    eval_summary(tmp_path, "ft", 1, dict(zip(ROLES, [0.8, 0.5, 0.3, 0.4, 0.2])), None)  # attack left out
    (row,) = method_table(load_records(tmp_path))
    assert row.aggregates["hm"].n == 1 and row.n == 2
    assert format_cell(row, "hm") == f"{100 * hm3(0.9, 0.4, 0.15):.2f} (1/2)"
    assert row.hm_of_means is None  # Adv not known for every seed
    assert "(k/n)" in method_markdown([row], ["id", "hm"])


def test_protocol_mismatch_is_refused(tmp_path):
    top1 = dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2]))
    eval_summary(tmp_path, "grace", 0, top1, 0.1)
    eval_summary(tmp_path, "grace", 1, top1, 0.1, protocol={"n_adv": 100})
    with pytest.raises(UserError, match="label 'grace' pools summaries with different protocols.*n_adv: 250 vs 100"):
        method_table(load_records(tmp_path))
    (row,) = method_table(load_records(tmp_path), allow_mixed=True)
    assert row.n == 2
    assert method_json([row])["protocol"]["n_adv"] == "mixed: 250 | 100"


@pytest.mark.parametrize("change", [{"attack": "aa-standard"}, {"eps": "8/255"}, {"suite": "imagenet"}])
def test_rows_with_different_protocols_are_refused(tmp_path, change):
    top1 = dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2]))
    eval_summary(tmp_path, "ft", 0, top1, 0.1)
    suite = change.pop("suite", "micro")
    eval_summary(tmp_path, "grace", 0, top1, 0.1, protocol=change, suite=suite)
    with pytest.raises(UserError, match="rows .* use different protocols"):
        method_table(load_records(tmp_path))
    assert len(method_table(load_records(tmp_path), order=["grace"])) == 1  # one row alone is fine
    if suite != "micro":
        assert [r.label for r in method_table(load_records(tmp_path, suite="micro"))] == ["ft"]


def test_eps_spellings_and_seed_do_not_split_a_pool(tmp_path):
    top1 = dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2]))
    eval_summary(tmp_path, "grace", 0, top1, 0.1)
    eval_summary(tmp_path, "grace", 1, top1, 0.1, protocol={"eps": 4 / 255, "seed": 1})
    (row,) = method_table(load_records(tmp_path))
    assert row.n == 2 and row.protocol["eps"] == "4/255"


def test_duplicates_labels_map_and_order(tmp_path):
    top1 = dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2]))
    old = eval_summary(tmp_path / "a", "grace", 0, {**top1, "micro": 0.5}, 0.1)
    os.utime(old, (1_000_000, 1_000_000))
    eval_summary(tmp_path / "b", "grace", 0, top1, 0.1)  # the same checkpoint re-evaluated: newest wins
    eval_summary(tmp_path, "runs/grace-s1", 1, top1, 0.1, ckpt_name="grace-s1")
    eval_summary(tmp_path, "mystery", 0, top1, 0.3, ckpt_name="tecoa-s0")
    mapping = {"runs/grace-s1": "grace", fingerprint("tecoa-s0")[:12]: "tecoa"}
    rows = method_table(load_records(tmp_path), order=["tecoa", "flyp", "grace"], labels_map=mapping)
    assert [r.label for r in rows] == ["tecoa", "grace"]
    assert rows[1].n == 2 and rows[1].aggregates["id"].values == [0.9, 0.9]
    assert method_table(load_records(tmp_path), order=["grace"])[0].n == 1  # without the map: one grace seed
    # the same checkpoint evaluated under another protocol is not a re-evaluation: it is refused, not replaced
    eval_summary(tmp_path / "c", "grace", 0, top1, 0.1, protocol={"attack": "aa-standard"})
    with pytest.raises(UserError, match="attack: apgd-ce vs aa-standard|attack: aa-standard vs apgd-ce"):
        method_table(load_records(tmp_path), order=["grace"])


def test_json_keeps_both_hms(tmp_path):
    rng = np.random.default_rng(3)
    vals = random_seeds(tmp_path, "grace", 3, rng)
    data = method_json(method_table(load_records(tmp_path)), table="t")
    (row,) = data["rows"]
    assert data["schema"] == "grace-bench/method-table/v1" and data["table"] == "t"
    ood = vals[:, 1:4].mean(axis=1)
    adv = (vals[:, 5] + vals[:, 4]) / 2
    assert row["hm_mean_of_seeds"] == pytest.approx(np.mean(hm3(vals[:, 0], ood, adv)))
    assert row[HM_OF_MEANS] == pytest.approx(hm3(vals[:, 0].mean(), ood.mean(), adv.mean()))
    assert sorted(row["aggregates"]["id"]["values"]) == pytest.approx(sorted(vals[:, 0]))
    assert row["per_dataset"]["micro-a"]["role"] == "nat-adv"
    assert data["protocol"] == {"suite": "micro", "attack": "apgd-ce", "eps": "4/255", "norm": "Linf", "n_adv": 250,
                                "limit": None, "templates_hash": "52633106ff7d", "classnames_hash": "6ee0868914ab",
                                "version": "grace-bench/eval/v1"}
    json.dumps(data)  # serialisable as is
