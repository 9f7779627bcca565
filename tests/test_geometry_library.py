"""Geometry as a library: config dataclasses, the kind registry, the resume hash, and CLI = library."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
from pathlib import Path

import pytest

from grace_bench.cli import build_parser, main
from grace_bench.errors import UserError
from grace_bench.geometry.config import add_arguments, from_dict, from_namespace
from grace_bench.geometry.registry import get_kind, kinds

GEOMETRY = Path(__file__).resolve().parents[1] / "grace_bench" / "geometry"
RUNNER = Path(__file__).resolve().parents[1] / "grace_bench" / "study" / "runner.py"


def test_every_kind_has_a_config_with_help_and_the_cli_defaults_are_its_defaults():
    assert list(kinds()) == ["hessian", "sharpness", "landscape", "features", "weights"]
    for name, kind in kinds().items():
        for f in dataclasses.fields(kind.config):
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"
        p = argparse.ArgumentParser()
        add_arguments(p, kind.config)
        assert from_namespace(kind.config, p.parse_args([])) == kind.config()


def test_cli_flags_keep_their_names_and_defaults():
    parser = build_parser()
    args = parser.parse_args(["geometry", "hessian", "micro"])
    assert (args.top_k, args.lanczos_iter, args.tol, args.n, args.trace_samples, args.slq_runs) == (5, 100, 1e-3, 32,
                                                                                                    10, 1)
    args = parser.parse_args(["geometry", "sharpness", "micro", "--kind", "worst", "--m", "4"])
    cfg = from_namespace(get_kind("sharpness").config, args)
    assert (cfg.which, cfg.m, cfg.rho, cfg.n) == ("worst", 4, "0.01,0.02,0.05,0.1", 128)
    args = parser.parse_args(["geometry", "landscape", "micro", "--range=-0.5:0.5:3", "--range-y", "0,1"])
    assert (args.xrange, args.yrange, args.mode) == ("-0.5:0.5:3", "0,1", "1d")
    args = parser.parse_args(["geometry", "features", "micro", "--ood", "a", "b", "--k", "5"])
    assert (args.ood, args.k, args.eps, args.n) == (["a", "b"], 5, "4/255", 256)


def test_library_errors_name_the_parameter_and_the_cli_names_the_flag(capsys):
    cfg = get_kind("hessian").config(top_k=0)
    with pytest.raises(UserError, match=r"^top_k must be at least 1, got 0$"):
        cfg.validate()
    with pytest.raises(UserError, match="trace_samples"):
        get_kind("hessian").config(trace_samples=1).validate()
    with pytest.raises(UserError, match="^rho "):
        get_kind("sharpness").config(rho="a:b").validate()
    with pytest.raises(UserError, match="unknown setting.*top_kk"):
        from_dict(get_kind("hessian").config, {"top_kk": 3})
    assert main(["geometry", "hessian", "micro", "--top-k", "0", "--no-progress"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err


def _raised_messages(path: Path) -> list[str]:
    """The constant text of every ``raise SomeError(...)`` message in a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in node.exc.args:
                out += [c.value for c in ast.walk(arg) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return out


def test_geometry_library_errors_name_no_cli_flag():
    modules = [p for p in GEOMETRY.rglob("*.py") if p.name != "cli.py"]
    assert len(modules) > 10
    offenders = [f"{p.name}: {m}" for p in modules for m in _raised_messages(p) if "--" in m]
    assert not offenders, offenders


def test_compare_drives_geometry_through_the_library_not_the_cli():
    tree = ast.parse(RUNNER.read_text())
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "parse_args" not in calls and "build_parser" not in calls and "redirect_stdout" not in calls
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "grace_bench.cli" not in imports and "grace_bench.geometry.api" in imports
    (stage,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_geometry"]
    flags = [c.value for c in ast.walk(stage) if isinstance(c, ast.Constant) and isinstance(c.value, str)
             and c.value.startswith("-")]
    assert not flags, flags  # no argv built in the geometry stage


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"

    def run(*argv: str) -> int:
        return main(["geometry", *argv, "--out", str(out)])

    run.out = out
    return run


def test_rerun_with_another_label_device_and_flag_order_resumes(cli, capsys):
    flags = ["--n", "8", "--batch-size", "8", "--rho", "0,0.05", "--samples", "2", "--steps", "1", "--group",
             "visual.proj"]
    assert cli("sharpness", "micro", *flags, "--label", "first", "--no-progress") == 0
    (path,) = cli.out.glob("geometry-sharpness-*.json")
    before = path.read_bytes()
    capsys.readouterr()
    shuffled = ["--group", "visual.proj", "--steps", "1", "--samples", "2", "--rho", "0,0.05", "--batch-size", "8",
                "--n", "8"]
    assert cli("sharpness", "micro", "--label", "second", "--device", "cpu", "--threads", "1", *shuffled) == 0
    assert "up to date" in capsys.readouterr().out
    assert path.read_bytes() == before
    assert cli("sharpness", "micro", *flags, "--samples", "3", "--no-progress") == 2  # a number changes: refused
    assert "--force" in capsys.readouterr().err


def test_library_run_and_compute_share_the_cli_record(cli, capsys):
    from grace_bench.geometry import WeightsConfig, compute, run
    from grace_bench.models.checkpoints import load_checkpoint

    clip = load_checkpoint("micro")
    ref = load_checkpoint("micro")
    with pytest.raises(UserError, match="reference"):
        run("weights", clip, None, WeightsConfig())
    result = run("weights", clip, None, WeightsConfig(), ref=ref, label="zs")
    assert result.record["overall"]["relative"] == 0.0 and result.record["label"] == "zs"
    json.dumps(result.record)  # JSON-able as it is
    path, fresh = compute("weights", clip, WeightsConfig(), cli.out, ref="micro")
    assert fresh is not None and path.is_file()
    assert json.loads(path.read_text())["config_hash"] == result.record["config_hash"]
    assert cli("weights", "micro", "--ref", "micro", "--label", "other", "--no-progress") == 0  # the CLI reuses it
    assert "up to date" in capsys.readouterr().out
    assert compute("weights", clip, WeightsConfig(), cli.out, ref="micro") == (path, None)


def test_study_settings_of_every_kind_are_valid_configs():
    from grace_bench.geometry.registry import study_geometry
    from grace_bench.study.recipe import study_recipe

    for profile in ("micro", "quick", "paper"):
        settings = study_geometry(profile)
        assert {"hessian", "features", "landscape", "weights"} <= set(settings)
        for kind, values in settings.items():
            from_dict(get_kind(kind).config, values).validate()
    assert study_recipe("micro", quick=True).geometry == study_geometry("quick")


def test_a_file_from_the_old_hash_scheme_is_refused_with_the_fix(tmp_path):
    from grace_bench.geometry import WeightsConfig, compute
    from grace_bench.geometry.api import result_path
    from grace_bench.models.checkpoints import load_checkpoint

    clip = load_checkpoint("micro")
    path = result_path(tmp_path, "weights", clip)
    path.write_text(json.dumps({"schema": "grace-bench/geometry/v1", "kind": "weights", "config_hash": "0" * 16}))
    with pytest.raises(UserError, match="older grace-bench.*force=True"):
        compute("weights", clip, WeightsConfig(), tmp_path, ref="micro")
    assert compute("weights", clip, WeightsConfig(), tmp_path, ref="micro", force=True)[1] is not None
