"""`grace-bench compare --tune`: the search spaces, the equal trial budget, the selection, knobs reaching the
trainer, the reproducible tuning run (also across --jobs) and the sensitivity figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from grace_bench.cli import main
from grace_bench.errors import UserError
from grace_bench.plots.api import draw
from grace_bench.study import search_space, tune
from grace_bench.study.plan import finetune_config
from grace_bench.study.recipe import GRACE_SPEC_DEFAULTS, load_tuning, method_spec, study_recipe
from grace_bench.study.search_space import Knob, best_trial, space_for, trial_points
from grace_bench.study.tune import plan_trials, tuned_specs


def test_trials_are_deterministic_and_every_row_gets_the_same_budget():
    recipe = study_recipe("micro")
    plan = plan_trials(recipe, 6)
    assert plan == plan_trials(recipe, 6)  # same seed: same trials, same order
    assert plan != plan_trials(recipe, 6, seed=1)
    assert set(plan) == {s.label for s in tuned_specs(recipe)}
    assert "grace-gv" not in plan and "grace" in plan and "grace-default" in plan  # ablations borrow grace's
    assert [s.label for s in tuned_specs(study_recipe("micro", methods=["grace-gv"]))] == ["grace"]
    assert {len(ts) for ts in plan.values()} == {6}
    grace = plan["grace"]
    assert {tuple(sorted(t["method_args"])) for t in grace} == {("awp_rho", "lambda_gv", "lambda_lar")}
    assert all(t["method_args"] == {} for t in plan["grace-default"])  # its knobs are pinned: lr only
    assert {t["method_args"]["label_mask"] for t in plan["flyp"]} == {False, True}
    for label in ("ft", "tecoa", "fare"):
        assert all(t["method_args"] == {} for t in plan[label])
    # Latin hypercube: the n lrs of a row fall one into each of n equal (log) strata of its range
    lr = space_for("ft", 0)[0]
    strata = sorted(int(6 * math.log(t["lr"] / lr.low) / math.log(lr.high / lr.low)) for t in plan["ft"])
    assert strata == list(range(6))


def test_a_method_without_knobs_tunes_lr_only_and_a_knob_is_one_line(monkeypatch):
    assert [k.name for k in space_for("some-new-baseline", 0)] == ["lr"]
    assert space_for("some-new-baseline", 0)[0] is search_space.LR_FULL
    assert space_for("grace", None)[0] is search_space.LR_LORA  # the method's default: GRACE trains LoRA,
    assert space_for("tecoa", None)[0] is search_space.LR_FULL  # TeCoA the whole tower
    assert space_for("tecoa", 64)[0] is search_space.LR_LORA
    monkeypatch.setitem(search_space.KNOBS, "some-new-baseline", (Knob("kappa", "test", 0.1, 1.0),))
    points = trial_points(space_for("some-new-baseline", 0), 4, key="x")
    assert all(0.1 <= p["kappa"] <= 1.0 for p in points) and len({p["kappa"] for p in points}) == 4
    assert [k.name for k in space_for("grace", None, dict(GRACE_SPEC_DEFAULTS))] == ["lr"]


def test_selection_takes_the_best_score_and_breaks_ties_deterministically():
    trials = [{"index": 0, "lr": 3e-3, "s": 0.8}, {"index": 1, "lr": 1e-3, "s": 0.9},
              {"index": 2, "lr": 2e-3, "s": 0.9}, {"index": 3, "lr": 1e-3, "s": 0.9}]
    assert best_trial(trials, "s")["index"] == 1  # ties: the smaller lr, then the earlier trial
    assert best_trial(list(reversed(trials)), "s")["index"] == 1
    assert best_trial(trials[:1] + [{"index": 5, "lr": 9e-3, "s": 0.95}], "s")["index"] == 5


def test_tuned_knobs_reach_the_trainer_and_a_row_pin_wins(tmp_path):
    recipe = study_recipe("micro", methods=["grace", "grace-default", "grace-gv"])
    recipe.lr = {"grace": 3e-3, "grace-default": 1e-2}
    recipe.knobs = {"grace": {"lambda_gv": 0.01, "awp_rho": 2e-3, "lambda_lar": 0.5}}
    grace = finetune_config(recipe, method_spec("grace"), 0, tmp_path / "a").method_args
    assert grace["lambda_gv"] == 0.01 and grace["awp_rho"] == 2e-3 and grace["eps"] == recipe.train_eps
    default = finetune_config(recipe, method_spec("grace-default"), 0, tmp_path / "b")
    assert default.lr == 1e-2
    assert {k: default.method_args[k] for k, _ in GRACE_SPEC_DEFAULTS} == dict(GRACE_SPEC_DEFAULTS)
    ablation = finetune_config(recipe, method_spec("grace-gv"), 0, tmp_path / "c")  # one change from grace
    assert ablation.lr == 3e-3 and ablation.method_args["lambda_gv"] == 0.01
    assert ablation.method_args["ablation"] == "gv"
    no_knobs = study_recipe("micro", methods=["ft"])
    no_knobs.knobs = {}  # a study from before knob tuning: its identity, and so its resume, is unchanged
    assert "knobs" in recipe.identity() and "knobs" not in no_knobs.identity()


def test_tuning_files_of_both_schemas_load_and_a_broken_one_is_refused(tmp_path):
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"selected": {"ft": {"lr": 0.003, "criterion": "val_clean"}, "grace": {"lr": 0.01}}}))
    # GRACE's lr of an lr-only file was tuned at the spec defaults: grace-default's setting
    assert load_tuning(v1) == ({"ft": 0.003, "grace": 0.01, "grace-default": 0.01}, {})
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"selected": {"ft": {"lr": 0.003, "method_args": {}},
                                           "grace": {"lr": 0.01, "method_args": {"lambda_gv": 0.1}}}}))
    assert load_tuning(v2) == ({"ft": 0.003, "grace": 0.01}, {"grace": {"lambda_gv": 0.1}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"selected": {"ft": {"rate": 1}}}))
    with pytest.raises(UserError, match="compare --tune"):
        load_tuning(bad)


def test_compare_tune_reproduces_its_choices_with_any_jobs(tmp_path, monkeypatch, capsys):
    """Two tunings on a tiny budget (one with two worker processes) give the same trials, scores and choices; a
    rerun resumes from the cached trials."""
    monkeypatch.setattr(tune, "VAL_MAX", 24)

    def run(work: Path, *extra: str) -> dict:
        argv = ["--threads", "1", "compare", "--quick", "--steps", "1", "--methods", "ft", "tecoa", "--tune",
                "--tune-only", "--trials", "2", "--work", str(work), "--no-progress", *extra]
        assert main(argv) == 0
        return json.loads((work / "tuning.json").read_text())

    def strip(record: dict) -> dict:  # wall times aside
        return {k: [{f: v for f, v in t.items() if f != "train_s"} for t in ts] for k, ts in record["trials"].items()}

    first = run(tmp_path / "a")
    second = run(tmp_path / "b", "--jobs", "2")
    assert first["selected"] == second["selected"] and strip(first) == strip(second)
    assert set(first["selected"]) == {"ft", "tecoa"} and {len(t) for t in first["trials"].values()} == {2}
    assert first["search"] == {**first["search"], "seed": 0, "trials_per_method": 2}
    again = run(tmp_path / "a")  # resumed: every trial read back, nothing retrained
    assert again["selected"] == first["selected"]
    assert all(t["train_s"] is None for ts in again["trials"].values() for t in ts)


def test_compare_rejects_bad_jobs_and_tuning_flags_without_tune(tmp_path, capsys):
    assert main(["compare", "--quick", "--jobs", "0", "--work", str(tmp_path / "w")]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert main(["compare", "--quick", "--trials", "3", "--work", str(tmp_path / "w")]) == 2
    assert "add --tune" in capsys.readouterr().err


def test_jobs_default_to_one_single_thread_run_per_core(monkeypatch):
    import os

    import torch

    from grace_bench.study.parallel import MAX_AUTO_JOBS, resolve_jobs

    before = torch.get_num_threads()
    monkeypatch.delenv("GRACE_BENCH_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(6)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    try:
        assert resolve_jobs(None, None) == min(6, MAX_AUTO_JOBS) and torch.get_num_threads() == 1
        assert resolve_jobs(None, 3) == 2  # a thread count given: as many runs as fit the cores
        assert resolve_jobs(5, 3) == 5
        with pytest.raises(UserError, match="--jobs"):
            resolve_jobs(0, None)
    finally:
        torch.set_num_threads(before)


def _tuning_record() -> dict:
    space = space_for("grace", None)
    trials = []
    for i, point in enumerate(trial_points(space, 5, key="grace")):
        lr = point.pop("lr")
        robust = 0.7 - 0.4 * point["lambda_gv"]
        trials.append({"index": i, "lr": lr, "method_args": point, "val_clean": 0.9, "val_robust": robust,
                       "val_hm": 2 / (1 / 0.9 + 1 / robust), "n": 180, "train_s": 1.0})
    best = best_trial(trials, "val_hm")
    return {"schema": "grace-bench/tuning/v2", "seed": 0, "budget": {"steps": 60},
            "spaces": {"grace": [k.to_dict() for k in space], "ft": [search_space.LR_FULL.to_dict()]},
            "trials": {"grace": trials, "ft": [{"index": 0, "lr": 1e-3, "method_args": {}, "val_clean": 0.9}]},
            "selected": {"grace": {"lr": best["lr"], "trial": best["index"]}}}


def test_sensitivity_figure_draws_from_a_tuning_file(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(_tuning_record()))
    written = draw("sensitivity", [path], tmp_path / "fig", formats=("png",), log=lambda _m: None)
    assert [p.name for p in written] == ["sensitivity-grace.png"]  # ft tuned lr only: no figure of its own
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[0].stat().st_size > 5000
    no_knobs = _tuning_record()
    del no_knobs["spaces"]["grace"]
    path.write_text(json.dumps(no_knobs))
    with pytest.raises(UserError, match="no tuning trials with method knobs"):
        draw("sensitivity", [path], tmp_path / "fig", formats=("png",))
    path.write_text(json.dumps({"schema": "grace-bench/summary/v1"}))
    with pytest.raises(UserError, match="not a tuning file"):
        draw("sensitivity", [path], tmp_path / "fig", formats=("png",))


def test_the_report_finds_the_tuning_behind_the_study(tmp_path):
    from grace_bench.study.report import tuning_file
    from grace_bench.study.state import StudyRun

    recipe = study_recipe("micro", methods=["ft"])
    recipe.lr_source = "method defaults"
    run = StudyRun(recipe, tmp_path / "work", tmp_path / "out")
    assert tuning_file(run) is None
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "tuning.json").write_text(json.dumps(_tuning_record()))
    assert tuning_file(run) == tmp_path / "work" / "tuning.json"
