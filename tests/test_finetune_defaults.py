"""Per-suite training defaults: micro carries the study budget and its val-tuned lrs; ImageNet keeps the papers'."""

from __future__ import annotations

import argparse
import json

import pytest

from grace_bench.data.suites import get_suite
from grace_bench.data.training_defaults import MICRO_TUNING_FILE, TrainingDefaults, display_path, from_tuning_file
from grace_bench.errors import UserError
from grace_bench.finetune.config import FinetuneConfig
from grace_bench.finetune.methods import defaults_markdown, get_method
from grace_bench.finetune.resolve import resolve_config
from grace_bench.study.recipe import StudyRecipe, load_tuned_lr, study_recipe

SHIPPED = display_path(MICRO_TUNING_FILE)  # grace_bench/study/micro_tuning.json (else the older micro_lr.json)
MICRO_LR_SOURCE = f"suite micro default ({SHIPPED}, tuned on val)"
MICRO_BUDGET_SOURCE = f"suite micro default ({SHIPPED}, study budget)"


def _parse(argv: list[str]):
    from grace_bench.finetune.cli import add_finetune_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers())
    return config_from_args(parser.parse_args(["finetune", *argv]))


def test_cli_finetune_on_micro_takes_the_suite_lr_and_records_its_source(tmp_path, capsys):
    from grace_bench.cli import main

    out = tmp_path / "ft"
    code = main(["finetune", "--suite", "micro", "--method", "ft", "--max-steps", "2", "--out", str(out),
                 "--no-progress", "--num-workers", "0", "--val-max-samples", "32"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == load_tuned_lr()["ft"]  # the study's reader of the same file
    assert cfg["sources"]["lr"] == MICRO_LR_SOURCE
    assert cfg["batch_size"] == 32 and cfg["sources"]["batch_size"] == MICRO_BUDGET_SOURCE
    assert cfg["max_steps"] == 2 and cfg["sources"]["max_steps"] == "command line"
    assert cfg["sources"]["weight_decay"].startswith("method 'ft' default (Wortsman et al.")
    # the suite's 6-step warmup does not fit a 2-step run: shortened, and the note says whose default it was
    assert cfg["warmup_steps_effective"] == 1 and "suite's default warmup (6 steps)" in cfg["warmup_note"]


def test_explicit_values_win_over_the_suite_and_say_so(tmp_path):
    cli = resolve_config(_parse(["--method", "ft", "--lr", "1e-4"]))
    assert cli.lr == 1e-4 and cli.sources["lr"] == "command line"
    config_file = tmp_path / "c.yaml"
    config_file.write_text("method: tecoa\nbatch_size: 16\nmethod_args:\n  eps: 2/255\n")
    from_file = resolve_config(_parse(["--config", str(config_file), "--pgd-steps", "3"]))
    assert from_file.batch_size == 16 and from_file.sources["batch_size"] == f"--config {config_file}"
    assert from_file.method_args == {"eps": "2/255", "pgd_steps": "3", "pgd_step_size": "1/255"}
    assert from_file.sources["method_args.eps"] == f"--config {config_file}"
    assert from_file.sources["method_args.pgd_steps"] == "command line"
    assert from_file.sources["method_args.pgd_step_size"] == MICRO_BUDGET_SOURCE
    # an explicit run length in epochs is not overridden by the suite's step budget
    epochs = resolve_config(_parse(["--method", "ft", "--epochs", "2"]))
    assert epochs.epochs == 2 and epochs.max_steps is None
    # a FinetuneConfig built in code (the study, API users) is recorded as set by the caller
    api = resolve_config(FinetuneConfig(method="ft", lr=5e-4))
    assert api.sources["lr"] == "set by the caller (FinetuneConfig)"


def test_micro_defaults_per_method_lora_variant_and_threat_model():
    tuned = load_tuned_lr()
    ft_lora = resolve_config(FinetuneConfig(method="ft", lora_rank=8))
    assert ft_lora.lr == tuned["ft-lora"] and ft_lora.sources["lr"] == MICRO_LR_SOURCE
    grace = resolve_config(FinetuneConfig(method="grace"))  # LoRA by default: the study's "grace" row
    assert grace.lora_rank == 64 and grace.lr == tuned["grace"]
    knobs = json.loads(MICRO_TUNING_FILE.read_text())["selected"]["grace"].get("method_args", {})
    assert grace.method_args == {"eps": "4/255", "pgd_steps": 5, "pgd_step_size": "1/255", **knobs}
    assert all(grace.sources[f"method_args.{k}"] == MICRO_LR_SOURCE for k in knobs)
    grace_full = resolve_config(FinetuneConfig(method="grace", lora_rank=0))  # never tuned: the paper's lr
    assert grace_full.lr == get_method("grace").trainer_defaults["lr"].value
    assert grace_full.sources["lr"].startswith("method 'grace' default")
    ft = resolve_config(FinetuneConfig(method="ft"))
    assert ft.method_args == {} and (ft.max_steps, ft.batch_size, ft.warmup_steps) == (60, 32, 6)


def test_imagenet_keeps_the_paper_defaults():
    assert get_suite("imagenet").training_defaults() is None
    for name in ("ft", "tecoa", "grace"):
        paper = get_method(name).trainer_defaults
        cfg = resolve_config(FinetuneConfig(method=name, suite="imagenet"))
        for key in ("lr", "batch_size", "warmup_steps", "weight_decay"):
            assert getattr(cfg, key) == paper[key].value, (name, key)
            assert cfg.sources[key] == f"method '{name}' default ({paper[key].source})"
        assert cfg.method_args == {}


def test_study_recipe_and_micro_suite_share_one_budget():
    suite = get_suite("micro").training_defaults()
    recipe = study_recipe("micro")
    assert StudyRecipe().to_dict() == {**recipe.to_dict(), "lr": {}, "knobs": {}, "lr_source": ""}  # the fallback too
    assert suite.trainer == {"max_steps": recipe.steps, "batch_size": recipe.batch_size,
                             "warmup_steps": recipe.warmup_steps}
    assert suite.method_args == {"eps": recipe.train_eps, "pgd_steps": recipe.train_pgd_steps,
                                 "pgd_step_size": recipe.train_pgd_step_size}
    study_lr = load_tuned_lr(MICRO_TUNING_FILE)  # the study also gives grace-default GRACE's lr of an lr-only file
    assert dict(suite.lr) == {k: v for k, v in study_lr.items() if k != "grace-default" or k in suite.lr}


def test_broken_tuning_file_is_one_line(tmp_path):
    bad = tmp_path / "lr.json"
    bad.write_bytes(b"\x00\xff{")
    with pytest.raises(UserError, match=r"lr.json is not valid JSON .*compare --tune") as err:
        from_tuning_file("micro", bad)
    assert "\n" not in str(err.value)
    bad.write_text(json.dumps({"selected": {"ft": {"lr": "fast"}}}))
    with pytest.raises(UserError, match="selected.ft.lr must be a positive number"):
        from_tuning_file("micro", bad)
    assert TrainingDefaults(source="s", lr={"ft-lora": 1.0}).lr_for("ft", lora=True, lora_by_default=False) == 1.0


def test_markdown_tables_still_render():
    from grace_bench.data.suites import suite_defaults_markdown

    methods = defaults_markdown()
    assert methods.startswith("| method | setting | default | source |") and "| ft | lr | 3e-05 |" in methods
    suites = suite_defaults_markdown()
    assert f"| micro | lr (ft) | {load_tuned_lr()['ft']!r} | {MICRO_LR_SOURCE} |" in suites
    assert "| micro | eps | '4/255' |" in suites and "| imagenet | (all) | method paper defaults |" in suites


def test_tuned_knobs_of_a_method_fill_its_unset_settings(tmp_path, monkeypatch):
    """``finetune --suite micro --method grace`` trains at the knobs chosen with its lr, not at the spec defaults."""
    import grace_bench.finetune.resolve as resolve

    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"budget": {"steps": 60}, "selected": {
        "grace": {"lr": 3e-3, "method_args": {"lambda_gv": 0.01, "awp_rho": 0.02}},
        "grace-default": {"lr": 1e-2, "method_args": {}}, "tecoa": {"lr": 1e-3}}}))
    suite = from_tuning_file("micro", path)
    assert suite.knobs_for("grace", lora=True, lora_by_default=True) == {"lambda_gv": 0.01, "awp_rho": 0.02}
    assert suite.knobs_for("grace", lora=False, lora_by_default=True) == {}  # grace-full was never tuned
    monkeypatch.setattr(resolve, "_suite_training_defaults", lambda name: suite)
    grace = resolve_config(FinetuneConfig(method="grace"))
    assert (grace.lr, grace.method_args["lambda_gv"], grace.method_args["awp_rho"]) == (3e-3, 0.01, 0.02)
    assert grace.sources["method_args.lambda_gv"] == suite.lr_source
    assert "lambda_lar" not in grace.method_args  # not tuned: the method's default applies
    explicit = resolve_config(FinetuneConfig(method="grace", method_args={"lambda_gv": 1.0}))
    assert explicit.method_args["lambda_gv"] == 1.0 and explicit.method_args["awp_rho"] == 0.02
    path.write_text(json.dumps({"selected": {"grace": {"lr": 1e-3, "method_args": [1]}}}))
    with pytest.raises(UserError, match="selected.grace.method_args must be an object"):
        from_tuning_file("micro", path)
