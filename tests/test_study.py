"""`grace-bench compare`: the recipe, the claim verdicts, and the quick study end to end with a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grace_bench.cli import main
from grace_bench.errors import UserError
from grace_bench.study.claims import VERDICTS, accuracy_claims
from grace_bench.study.plan import entries
from grace_bench.study.recipe import study_recipe
from grace_bench.study.runner import check_recipe
from grace_bench.study.stats import Row


def test_recipe_adds_what_a_row_needs_and_rejects_unknown_methods():
    recipe = study_recipe("micro", methods=["wise-ft"], seeds=2)
    assert recipe.methods == ["zero-shot", "ft", "wise-ft"]
    assert recipe.seeds == [0, 1]
    with pytest.raises(UserError, match="unknown study method"):
        study_recipe("micro", methods=["graze"])
    with pytest.raises(UserError, match="--seeds"):
        study_recipe("micro", seeds=0)


def test_plan_trains_ablations_on_the_first_seed_and_draws_the_wise_curve_once(tmp_path):
    recipe = study_recipe("micro", methods=["grace", "grace-gv", "wise-ft"], seeds=3)
    found = entries(recipe, tmp_path)
    labels = [(e.label, e.seed) for e in found]
    assert labels.count(("zero-shot", 0)) == 1
    assert [s for lab, s in labels if lab == "grace"] == [0, 1, 2]
    assert [s for lab, s in labels if lab == "grace-gv"] == [0]
    curve = [e.alpha for e in found if e.alpha is not None and e.seed == 0]
    assert curve == sorted(set(recipe.wise_curve) | {0.5})
    assert [e.alpha for e in found if e.alpha is not None and e.seed == 1] == [0.5]


def test_resuming_a_study_with_other_settings_is_refused(tmp_path):
    check_recipe(tmp_path, study_recipe("micro"))
    check_recipe(tmp_path, study_recipe("micro", seeds=5))  # more seeds: same study, grows
    with pytest.raises(UserError, match="other settings"):
        check_recipe(tmp_path, study_recipe("micro", steps=7))


def _rows(**means):
    """Rows over three seeds whose values wobble by ±0.2 points around ``means``."""
    return {label: Row(label, {s: {k: v + 0.002 * (s - 1) for k, v in m.items()} for s in range(3)},
                       fixed=label == "zero-shot")
            for label, m in means.items()}


def test_claim_verdicts_follow_the_numbers():
    row = {"id": 0.9, "ood_avg": 0.5, "adv": 0.2, "hm": 0.4}
    means = {"zero-shot": {**row, "id": 0.85, "adv": 0.1}, "ft": {**row, "adv": 0.1, "hm": 0.3},
             "wise-ft": {**row, "adv": 0.1, "hm": 0.3}, "tecoa": {**row, "adv": 0.18, "hm": 0.35},
             "grace": {**row, "id": 0.895, "adv": 0.3, "hm": 0.45}}
    verdicts = [c.verdict for c in accuracy_claims(_rows(**means))]
    assert verdicts == ["holds"] * 5
    bad = json.loads(json.dumps(means))
    bad["grace"].update(id=0.85, adv=0.12, hm=0.2)
    verdicts = {c.claim: c.verdict for c in accuracy_claims(_rows(**bad))}
    assert verdicts["ID accuracy close to FT"] == "does not hold"
    assert verdicts["Adv far above FT and WiSE-FT"] == "does not hold"
    assert verdicts["best HM of all methods"] == "does not hold"
    assert all(c.verdict == "not measured" for c in accuracy_claims({}))


def _stat_row(group, hm):
    return {"group": group, "n": 3, "mean": {"hm": hm}, "std": {"hm": 0.0}}


def test_main_table_puts_grace_default_beside_grace_and_recent_rows_after_the_papers():
    from grace_bench.study.report import main_rows, markdown_table

    stats = {"ft": _stat_row("main", 0.3), "grace": _stat_row("main", 0.4), "tecoa": _stat_row("main", 0.5),
             "agft": _stat_row("recent", 0.6), "laat": _stat_row("recent", 0.2),
             "grace-default": _stat_row("main", 0.1), "wise-ft α=0.25": _stat_row("main", 0.9)}
    order = [None if r is None else r[0] for r in main_rows(stats, ("main", "recent"))]
    assert order == ["tecoa", "grace", "grace-default", "ft", None, "agft", "laat"]
    del stats["grace"], stats["agft"], stats["laat"]  # rows absent from a run are skipped, not an error
    assert [r[0] for r in main_rows(stats, ("main", "recent"))] == ["tecoa", "ft", "grace-default"]
    table = markdown_table(stats, ("main", "recent"), [], None)
    assert "HM − GRACE" not in table and table.count("\n") == 4  # header, rule, three rows


@pytest.mark.slow
def test_compare_quick_end_to_end_and_resume(tmp_path, capsys):
    """The CI form of the study: every stage runs, every artefact is written, and a rerun changes nothing."""
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["compare", "--quick", "--work", str(work), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    labels = {e["label"] for e in study["entries"]}
    assert {"zero-shot", "ft", "wise-ft", "tecoa", "grace", "grace-gv"} <= labels
    for e in study["entries"]:
        assert 0 <= e["aggregates"]["id"] <= 1 and e["aggregates"]["hm"] is not None
    assert {c["verdict"] for c in study["claims"]} <= set(VERDICTS)
    # one seed: no interval over seeds, but the image bootstrap runs on the per-image flags of the result files
    hm = study["statistics"]["vs_grace"]["tecoa"]["hm"]
    assert hm["t"] is None and hm["boot"]["lo"] <= hm["mean"] <= hm["boot"]["hi"]
    assert study["geometry"]["grace"]["lambda_max"] > 0
    assert (out / "leaderboard" / "leaderboard.md").is_file()
    figures = [Path(p) for p in study["figures"]]
    assert {"tradeoff", "wise", "training", "spectrum", "curvature", "cka-methods", "landscape-1d"} <= {
        p.stem for p in figures}
    for p in figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = (out / "study.md").read_text()
    assert "## The paper's claims at this scale" in md and "grace-bench compare --quick" in md

    model = work / "runs" / "grace-s0" / "model.safetensors"
    before = model.stat().st_mtime_ns
    assert main(argv) == 0  # resume: nothing retrains, every number is read back unchanged
    assert model.stat().st_mtime_ns == before
    again = json.loads((out / "study.json").read_text())
    assert again["entries"] == study["entries"] and again["geometry"] == study["geometry"]


def test_recorded_command_keeps_global_options_in_place():
    """``grace-bench --threads 2 compare`` is recorded as given, not with a second ``compare``."""
    import argparse

    from grace_bench.study.cli import _argv

    assert _argv(argparse.Namespace(argv=["--threads", "2", "compare", "--quick"])) == [
        "--threads", "2", "compare", "--quick"]
    assert _argv(argparse.Namespace(argv=["--quick"])) == ["compare", "--quick"]
