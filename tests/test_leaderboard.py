"""Leaderboard build, RobustBench / CLIP_benchmark exports and the leaderboard CLI, on synthetic result files.

The result files are a test fixture written to tmp_path in the schema of docs/INTERFACES.md; their numbers
are made up for the test and only need to be self-consistent (HM is recomputed from ID, OOD avg and Adv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from grace_bench.errors import UserError
from grace_bench.leaderboard.build import build_leaderboard
from grace_bench.leaderboard.cli import add_leaderboard_parser, run_leaderboard
from grace_bench.leaderboard.collect import format_eps, load_summaries
from grace_bench.leaderboard.robustbench import MODEL_INFO_FIELDS, clip_benchmark_records, robustbench_card

# label -> (ID, [V2, Sketch, R], [A], AutoAttack robust acc, clean acc on the attacked subset)
METHODS = {
    "zero-shot": (0.80, [0.70, 0.50, 0.60], [0.20], 0.02, 0.79),
    "ft": (0.95, [0.80, 0.40, 0.45], [0.15], 0.01, 0.96),
    "tecoa": (0.70, [0.60, 0.40, 0.40], [0.25], 0.35, 0.71),
    "grace": (0.93, [0.82, 0.55, 0.60], [0.30], 0.30, 0.92),
}
OOD = ("micro-v2", "micro-sketch", "micro-r")
PROTOCOL = {"attack": "aa-standard", "eps": "4/255", "norm": "Linf", "n_adv": 100, "seed": 0, "templates": "micro-8"}


def fingerprint(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def hm3(i: float, o: float, a: float) -> float:
    return 3.0 / (1.0 / i + 1.0 / o + 1.0 / a)


def summary_dict(label: str, values, protocol=None, alpha=None, attack=None) -> dict:
    id_acc, ood, nat, aa, clean = values
    protocol = dict(PROTOCOL if protocol is None else protocol)
    per = {"micro": {"role": "id", "top1": id_acc, "top5": min(1.0, id_acc + 0.04), "n": 360,
                     "mean_per_class_recall": id_acc - 0.01}}
    per.update({ds: {"role": "ood", "top1": v, "n": 300} for ds, v in zip(OOD, ood)})
    per["micro-a"] = {"role": "nat-adv", "top1": nat[0], "n": 200}
    ood_avg, nat_adv = float(np.mean(ood)), float(np.mean(nat))
    adv = (aa + nat_adv) / 2
    ckpt = {"spec": f"runs/{label}", "fingerprint": fingerprint(label), "arch": "micro-clip"}
    if alpha is not None:
        ckpt["alpha"] = alpha
    return {
        "schema": "grace-bench/summary/v1",
        "checkpoint": ckpt,
        "suite": "micro",
        "label": label,
        "per_dataset": per,
        "adversarial": {"micro": {"attack": attack or protocol.get("attack"), "eps": protocol.get("eps"),
                                  "robust_acc": aa, "clean_acc": clean, "n": protocol.get("n_adv"),
                                  "cascade": {"apgd-ce": aa + 0.01, "apgd-t": aa}}},
        "aggregates": {"id": id_acc, "ood_avg": ood_avg, "nat_adv": nat_adv, "autoattack": aa, "adv": adv,
                       "hm": hm3(id_acc, ood_avg, adv)},
        "protocol": protocol,
        "created": "2026-01-01T00:00:00",
    }


def write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


LAYERS = [f"visual.transformer.resblocks.{i}.{p}" for i in range(3) for p in ("attn", "mlp")]
GEOMETRY_CONFIG = {"dataset": "micro", "n": 128, "params": "vision", "seed": 0}


def write_geometry(root: Path, label: str, ref: str = "zero-shot", scale: float = 1.0, nested: bool = False) -> None:
    """hessian (+density), weights, features (+layer CKA) and landscape (1D) results for ``label``.

    ``nested=False`` writes the flat canonical fields (``lambda_max``, ``trace``, ``per_layer_curvature``...);
    ``nested=True`` writes the dicts that grace_bench.geometry returns (``hessian_report``, ``weight_drift``,
    ``landscape``) under ``metrics``. The readers must give the same numbers for both.
    """
    fp = fingerprint(label)
    ckpt = {"spec": f"runs/{label}", "fingerprint": fp, "arch": "micro-clip"}
    base = {"schema": "grace-bench/geometry/v1", "checkpoint": ckpt, "config": GEOMETRY_CONFIG}
    grid = np.linspace(-2, 40 * scale, 200)
    dens = np.exp(-grid**2) + 1e-3 * np.exp(-((grid - 30 * scale) ** 2))
    kappa = {name: scale * (1 + i) for i, name in enumerate(LAYERS)}
    alphas = np.linspace(-1, 1, 11)
    loss, acc = 0.2 + scale * alphas**2, 0.9 - 0.3 * scale * alphas**2
    if nested:
        hessian = {"metrics": {
            "top_eigenvalues": {"method": "lanczos-full-reorth", "eigenvalues": [12.0, 30.0 * scale]},
            "trace": {"trace": 250.0 * scale, "trace_se": 4.0,
                      "layers": {n: {"dim": 10, "trace": 10 * k, "kappa": k} for n, k in kappa.items()}},
        }}
        dens_arrays = {"density_grid": grid, "density_density": dens}
        weights = {"metrics": {"overall": {"relative": 0.05 * scale, "abs": 1.0}}}
        landscape = {"metrics": {"meta": {"kind": "1d"}}}
        land_arrays = {"axis_0": alphas, "loss": loss, "accuracy": acc}
    else:
        hessian = {"lambda_max": 30.0 * scale, "trace": 250.0 * scale, "trace_se": 4.0, "per_layer_curvature": kappa}
        dens_arrays = {"density_grid": grid, "density": dens}
        weights = {"metrics": {"relative_drift": 0.05 * scale}}
        landscape = {"mode": "directions"}
        land_arrays = {"alphas": alphas, "loss": loss, "acc": acc}
    write_json(root / f"geometry-hessian-{fp[:12]}.json", {**base, "kind": "hessian", **hessian})
    np.savez(root / f"geometry-hessian-{fp[:12]}.npz", **dens_arrays)
    write_json(root / f"geometry-weights-{fp[:12]}.json", {**base, "kind": "weights", **weights})
    write_json(root / f"geometry-features-{fp[:12]}.json", {
        **base, "kind": "features", "metrics": {"cka_to_ref": 1 - 0.1 * scale},
        "ref": {"spec": "micro", "fingerprint": fingerprint(ref)}, "layer_names": LAYERS[::2],
    })
    np.savez(root / f"geometry-features-{fp[:12]}.npz",
             cka_layers=np.clip(np.eye(3) * 0.9 + 0.05 * scale, 0, 1))
    write_json(root / f"geometry-landscape-{fp[:12]}.json", {**base, "kind": "landscape", **landscape})
    np.savez(root / f"geometry-landscape-{fp[:12]}.npz", **land_arrays)


def write_landscape_2d(root: Path, label: str, scale: float) -> None:
    fp = fingerprint(label + "-2d")
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    write_json(root / f"geometry-landscape-{fp[:12]}.json",
               {"schema": "grace-bench/geometry/v1", "kind": "landscape", "mode": "2d", "label": label,
                "checkpoint": {"spec": f"runs/{label}", "fingerprint": fp}, "config": GEOMETRY_CONFIG})
    np.savez(root / f"geometry-landscape-{fp[:12]}.npz", xs=x, ys=y, loss=0.2 + scale * (xx**2 + 2 * yy**2))


def write_synthetic_results(root: Path, protocol=None, geometry=True) -> Path:
    """Four evaluated methods; geometry for ft and grace only (zero-shot and tecoa show '—')."""
    for label, values in METHODS.items():
        write_json(root / f"summary-{fingerprint(label)[:12]}.json", summary_dict(label, values, protocol))
    if geometry:
        write_geometry(root, "ft", scale=2.0, nested=True)
        write_geometry(root, "grace", scale=1.0)
    return root


def results_table(markdown: str) -> tuple[list[str], list[list[str]]]:
    body = markdown.split("## Results", 1)[1].strip().splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body if line.startswith("|")]
    return rows[0], rows[2:]


def test_markdown_has_every_column_sorted_by_hm(tmp_path):
    results = write_synthetic_results(tmp_path / "res")
    board = build_leaderboard(results, tmp_path / "lb", "micro")
    header, rows = results_table(board.markdown)
    expected = ["#", "model", "micro", *OOD, "micro-a", "ID", "OOD avg", "Nat-adv", "robust (AA-standard, ε=4/255 ℓ∞)",
                "Adv", "HM", "λ_max", "trace", "weight drift", "CKA to θ0"]
    assert header == expected
    hms = {k: hm3(v[0], float(np.mean(v[1])), (v[3] + v[2][0]) / 2) for k, v in METHODS.items()}
    assert [r[1] for r in rows] == sorted(hms, key=hms.get, reverse=True)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    by_label = {r[1]: dict(zip(header, r)) for r in rows}
    # percent with two decimals, recomputed independently from the fixture values
    assert by_label["grace"]["HM"] == f"{100 * hms['grace']:.2f}"
    assert by_label["grace"]["micro-sketch"] == "55.00"
    assert by_label["grace"]["λ_max"] == "30"
    assert by_label["ft"]["λ_max"] == "60"
    assert by_label["grace"]["trace"] == "250 ± 4"
    assert by_label["grace"]["weight drift"] == "0.050"
    assert by_label["ft"]["CKA to θ0"] == "0.800"
    for missing in ("zero-shot", "tecoa"):
        assert [by_label[missing][c] for c in ("λ_max", "trace", "weight drift", "CKA to θ0")] == ["—"] * 4


def test_json_keeps_fractions_and_rank_order(tmp_path):
    results = write_synthetic_results(tmp_path / "res")
    build_leaderboard(results, tmp_path / "lb")
    data = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    assert data["schema"] == "grace-bench/leaderboard/v1" and data["name"] == "lb"
    hms = [r["aggregates"]["hm"] for r in data["rows"]]
    assert hms == sorted(hms, reverse=True)
    grace = next(r for r in data["rows"] if r["label"] == "grace")
    assert grace["per_dataset"]["micro"] == pytest.approx(0.93)
    assert grace["aggregates"]["ood_avg"] == pytest.approx(np.mean([0.82, 0.55, 0.60]))
    assert grace["geometry"] == {"lambda_max": 30.0, "trace": 250.0, "weight_drift": 0.05,
                                 "cka_to_ref": pytest.approx(0.9), "trace_se": 4.0}
    ft = next(r for r in data["rows"] if r["label"] == "ft")  # the nested (library-native) layout
    assert ft["geometry"] == {"lambda_max": 60.0, "trace": 500.0, "weight_drift": 0.1,
                              "cka_to_ref": pytest.approx(0.8), "trace_se": 4.0}
    zs = next(r for r in data["rows"] if r["label"] == "zero-shot")
    assert zs["geometry"]["lambda_max"] is None
    assert {c["key"] for c in data["columns"]} >= {"micro", "hm", "lambda_max", "cka_to_ref"}


def test_header_states_protocol_from_the_summaries(tmp_path):
    proto = {**PROTOCOL, "eps": "8/255", "attack": "apgd-ce", "n_adv": 50}
    results = write_synthetic_results(tmp_path / "res", protocol=proto, geometry=False)
    md = build_leaderboard(results, tmp_path / "lb").markdown
    header_part = md.split("## Results")[0]
    assert "APGD-CE 1×100 Linf ε=8/255 on micro (n=50)" in header_part  # restarts × iterations spelled out
    assert "| robust (APGD-CE 1×100, ε=8/255 ℓ∞) |" in header_part  # the column is named after the attack
    assert "4/255" not in md
    assert "micro-v2, micro-sketch, micro-r" in header_part  # OOD avg definition from the roles in the files
    assert "| λ_max |" not in md  # no geometry anywhere: no geometry columns


def test_robust_column_names_the_recorded_attack_or_none(tmp_path):
    """An old result (bare custom:apgd-ce, which ran 5 restarts) is named from its recorded settings; a
    table without any attack says so and names no threat model."""
    old = summary_dict("old", METHODS["ft"], protocol={**PROTOCOL, "attack": "custom:apgd-ce"})
    old["adversarial"]["micro"]["config"] = {"version": "custom", "attacks": ["apgd-ce"],
                                             "settings": {"apgd-ce": {"restarts": 5, "iterations": 100, "eot": 1}}}
    write_json(tmp_path / "a" / f"summary-{fingerprint('old')[:12]}.json", old)
    board = build_leaderboard(tmp_path / "a", tmp_path / "lb-a")
    assert [c.title for c in board.columns if c.key == "autoattack"] == ["robust (APGD-CE 5×100, ε=4/255 ℓ∞)"]
    clean_only = summary_dict("zs", METHODS["ft"], protocol={**PROTOCOL, "attack": "none"})
    clean_only["adversarial"] = {}
    write_json(tmp_path / "b" / f"summary-{fingerprint('zs')[:12]}.json", clean_only)
    board = build_leaderboard(tmp_path / "b", tmp_path / "lb-b")
    assert [c.title for c in board.columns if c.key == "autoattack"] == ["robust (no attack)"]


def test_mixed_protocols_fail_unless_allowed(tmp_path):
    res = tmp_path / "res"
    write_synthetic_results(res, geometry=False)
    odd = summary_dict("odd", METHODS["ft"], protocol={**PROTOCOL, "eps": "8/255"})
    odd["checkpoint"]["fingerprint"] = fingerprint("odd")
    write_json(res / f"summary-{fingerprint('odd')[:12]}.json", odd)
    with pytest.raises(UserError, match="eps: 4/255 vs 8/255"):
        build_leaderboard(res, tmp_path / "lb")
    assert not (tmp_path / "lb" / "leaderboard.md").exists()
    md = build_leaderboard(res, tmp_path / "lb", allow_mixed=True).markdown
    assert "**eps** (MIXED across rows): 4/255 | 8/255" in md


def test_robustbench_card_format(tmp_path):
    results = write_synthetic_results(tmp_path / "res", geometry=False)
    [grace] = [s for s in load_summaries(results) if s.label == "grace"]
    card = robustbench_card(grace)
    assert tuple(card) == MODEL_INFO_FIELDS
    assert card["eps"] == "4/255" and card["clean_acc"] == "92.00" and card["autoattack_acc"] == "30.00"
    assert card["dataset"] == "micro" and card["architecture"] == "micro-clip" and card["unreliable"] is False
    assert card["number_forward_passes"] == 1 and card["reported"] == ""
    # a float eps and a non-AutoAttack attack: eps as a fraction string, card flagged, footnote says why
    grace.data["adversarial"]["micro"].update(eps=4 / 255, attack="pgd")
    card = robustbench_card(grace, meta={"venue": "CVPR 2026"})
    assert card["eps"] == "4/255" and card["unreliable"] is True and "upper bound" in card["footnote"]
    assert card["venue"] == "CVPR 2026"
    with pytest.raises(UserError, match="unknown RobustBench card field"):
        robustbench_card(grace, meta={"paper": "x"})
    board_dir = tmp_path / "lb"
    build_leaderboard(results, board_dir)
    written = json.loads((board_dir / "robustbench" / "micro" / "Linf" / "grace.json").read_text())
    assert written["autoattack_acc"] == "30.00" and set(written) == set(MODEL_INFO_FIELDS)


def test_clip_benchmark_records(tmp_path):
    results = write_synthetic_results(tmp_path / "res", geometry=False)
    [ft] = [s for s in load_summaries(results) if s.label == "ft"]
    recs = {r["dataset"]: r for r in clip_benchmark_records(ft)}
    assert set(recs) == {"micro", *OOD, "micro-a"}
    r = recs["micro"]
    assert set(r) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert (r["model"], r["pretrained"], r["task"], r["language"]) == ("micro-clip", "runs/ft",
                                                                       "zeroshot_classification", "en")
    assert r["metrics"] == {"acc1": 0.95, "acc5": pytest.approx(0.99), "mean_per_class_recall": pytest.approx(0.94)}
    assert recs["micro-r"]["metrics"]["acc5"] is None  # not measured -> null, not a made-up number
    build_leaderboard(results, tmp_path / "lb")
    on_disk = json.loads((tmp_path / "lb" / "clip_benchmark" / "ft" / "micro-v2.json").read_text())
    assert on_disk["metrics"]["acc1"] == 0.80


def _cli(argv):
    parser = argparse.ArgumentParser(prog="grace-bench")
    add_leaderboard_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_build_and_errors(tmp_path, capsys):
    results = write_synthetic_results(tmp_path / "res")
    out = tmp_path / "leaderboards" / "micro"
    args = _cli(["leaderboard", "build", str(results), "--out", str(out)])
    assert args.func is run_leaderboard
    assert run_leaderboard(args) == 0
    printed = capsys.readouterr().out
    assert "| 1 | grace |" in printed
    assert (out / "leaderboard.md").read_text().startswith("# Leaderboard: micro")
    with pytest.raises(UserError, match="no such file or directory"):
        run_leaderboard(_cli(["leaderboard", "build", str(tmp_path / "nope"), "--out", str(out)]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no summary"):
        run_leaderboard(_cli(["leaderboard", "build", str(tmp_path / "empty"), "--out", str(out)]))
    bad = write_json(tmp_path / "bad" / "summary-0123456789ab.json", {"schema": "other"})
    with pytest.raises(UserError, match="schema"):
        run_leaderboard(_cli(["leaderboard", "build", str(bad), "--out", str(out)]))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary-0123456789ab.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        run_leaderboard(_cli(["leaderboard", "build", str(tmp_path / "broken"), "--out", str(out)]))


def test_format_eps():
    assert format_eps("4/255") == "4/255"
    assert format_eps(4 / 255) == "4/255"
    assert format_eps(1 / 255) == "1/255"
    assert format_eps(0.25) == "1/4"
    assert format_eps(0.0) == "0"
    assert format_eps(None) is None
