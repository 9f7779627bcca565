"""The typed results layer: committed result files of the current schema load into records with the right
values, one metrics table feeds every reader, one writer stamps every record, and the shared helpers
(harmonic mean, ε, the paper's Table 6) live in one place."""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

from grace_bench.attacks.threat import describe_eps, format_eps, parse_eps, parse_fraction
from grace_bench.errors import UserError
from grace_bench.results import (
    METRICS,
    AdversarialResult,
    CleanResult,
    GeometryRecord,
    Metric,
    SummaryRecord,
    get_metric,
    harmonic_mean,
    load_geometry,
    load_record,
    load_results,
    load_summaries,
    metrics,
    register_metric,
    write_record,
)
from grace_bench.results.records import geometry_by_fingerprint

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "results"
EVAL = FIXTURES / "eval"
GEOMETRY = FIXTURES / "geometry"
FP12 = "93060f7d5e34"  # the shipped micro-CLIP the fixtures were made with


def _raw(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------ committed files of the current schema


def test_fixture_summary_loads_with_its_values():
    [summary] = load_summaries(FIXTURES)
    raw = _raw(EVAL / f"summary-{FP12}.json")
    assert isinstance(summary, SummaryRecord)
    assert summary.fp12 == FP12 and summary.label == "micro-fixture" and summary.suite == "micro"
    assert summary.to_json() == raw
    for key in ("id", "ood_avg", "nat_adv", "autoattack", "adv", "hm"):
        assert summary.metric(key) == raw["aggregates"][key]
    assert summary.metric("id") == 0.9375 and summary.metric("autoattack") == 0.875
    assert summary.top1("micro-v2") == raw["per_dataset"]["micro-v2"]["top1"]
    assert summary.protocol["eps"] == "4/255" and summary.protocol["attack"] == "pgd[steps=1,step=1/255]"
    assert summary.versions["runtime"]["threads"] == 1
    # the HM the summary stores is the one harmonic mean of its ID, OOD avg and Adv
    agg = raw["aggregates"]
    assert harmonic_mean([agg["id"], agg["ood_avg"], agg["adv"]]) == pytest.approx(agg["hm"], rel=1e-12)


def test_fixture_eval_results_load_as_clean_and_adversarial():
    results = {type(r): r for r in load_results(EVAL)}
    clean, adv = results[CleanResult], results[AdversarialResult]
    assert clean.dataset == "micro" and clean.role == "id" and clean.suite == "micro"
    assert (clean.n, clean.top1, clean.top5) == (16, 0.9375, 1.0)
    assert adv.attack == "pgd[steps=1,step=1/255]" and adv.eps == "4/255" and adv.norm == "Linf"
    assert (adv.n, adv.clean_acc, adv.robust_acc) == (8, 1.0, 0.875)
    assert clean.fingerprint.startswith(FP12) and adv.config_hash == adv.path.stem.rsplit("-", 1)[1]
    # the summary's entries are these results
    summary = load_summaries(EVAL)[0]
    assert summary.per_dataset["micro"]["top1"] == clean.top1
    assert summary.adversarial["micro"]["robust_acc"] == adv.robust_acc
    for rec in (clean, adv):
        assert type(rec).from_json(rec.to_json(), rec.path).to_json() == _raw(rec.path)
        assert type(load_record(rec.path)) is type(rec)


def test_fixture_geometry_records_load_with_their_values_and_arrays():
    by_kind = geometry_by_fingerprint(load_geometry(GEOMETRY))[FP12]
    assert sorted(by_kind) == ["features", "hessian", "weights"]
    hess, feats, weights = by_kind["hessian"], by_kind["features"], by_kind["weights"]
    raw = _raw(hess.path)
    assert hess.metric("lambda_max") == raw["lambda_max"] == max(raw["top_eigenvalues"]["eigenvalues"])
    assert hess.metric("trace") == raw["trace"]["trace"] and hess.metric("trace_se") == raw["trace"]["trace_se"]
    assert hess.metric("cka_to_ref") is None  # a features metric is not read from a hessian record
    assert hess.array("density_grid") is not None and hess.array("density_grid").ndim == 1
    assert feats.metric("cka_to_ref") == pytest.approx(1.0)  # the reference is the checkpoint itself
    f = _raw(feats.path)
    assert feats.metric("centroid_id_adv") == f["centroid_cosine"]["id_to_adv"]["mean"]
    assert feats.metric("delta_lid_adv") == f["lid"]["delta_adv"]
    assert weights.metric("weight_drift") == 0.0
    assert isinstance(load_record(hess.path), GeometryRecord) and load_record(hess.path).kind == "hessian"


def test_load_record_refuses_a_file_of_no_known_schema(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": "other/v1"}))
    with pytest.raises(UserError, match="not a grace-bench summary"):
        load_record(path)


# ------------------------------------------------------------------ one metrics table


def test_every_builtin_metric_has_key_path_title_and_direction():
    for m in metrics():
        assert m.key and m.path and m.title and m.direction in ("higher", "lower", "none")
    assert [m.key for m in metrics("aggregate")] == ["id", "ood_avg", "nat_adv", "autoattack", "adv", "hm"]
    assert get_metric("hm").better(0.5, 0.4) and get_metric("lambda_max").better(1.0, 2.0)
    assert get_metric("id").format(0.9375) == "93.75" and get_metric("id").heading == "ID (%)"
    assert "trace_se" not in [m.key for m in metrics("geometry", errors=False)]


def test_register_metric_refuses_a_conflicting_definition():
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("trace", "other", "hessian", ("x",)))
    with pytest.raises(ValueError, match="direction"):
        Metric("k", "t", "hessian", ("x",), direction="up")
    with pytest.raises(KeyError, match="unknown metric"):
        get_metric("no-such-metric")


@pytest.fixture
def new_diagnostic(monkeypatch):
    """A diagnostic registered the way a new module would: one register_metric call (undone afterwards)."""
    metric = Metric("hessian_dim", "Hessian dim", "hessian", ("dim", "trace.dim"), "none", "parameters in the Hessian",
                    fmt=".0f")
    monkeypatch.setitem(METRICS, metric.key, metric)
    return metric


def test_a_registered_metric_reaches_leaderboard_study_and_analysis(new_diagnostic, tmp_path):
    from analysis.tables import geometry_columns
    from grace_bench.leaderboard.build import build_leaderboard
    from grace_bench.leaderboard.by_method import column_title, load_records, method_table
    from grace_bench.study.report import geometry_metrics

    dim = _raw(GEOMETRY / f"geometry-hessian-{FP12}.json")["dim"]
    board = build_leaderboard(FIXTURES, tmp_path / "board")
    assert "Hessian dim" in [c.title for c in board.columns]
    assert board.data["rows"][0]["geometry"]["hessian_dim"] == dim
    assert f"| {dim} |" in board.markdown.split("## Results", 1)[1]
    [row] = method_table(load_records(FIXTURES))
    assert row.geometry["hessian_dim"].mean == dim and column_title("hessian_dim") == "Hessian dim"
    assert "hessian_dim" in geometry_columns()
    assert new_diagnostic in geometry_metrics()


@pytest.fixture
def restore_metrics():
    """Undo every registration a test makes (the table is process-wide)."""
    saved = dict(METRICS)
    yield
    METRICS.clear()
    METRICS.update(saved)


def test_a_geometry_record_carries_its_new_columns_to_another_process(restore_metrics, tmp_path):
    """The diagnostic's module registers its metric when it writes; a leaderboard that never imported that module
    (here: the registration removed again) still shows the column, from the record's declaration."""
    import shutil

    from grace_bench.leaderboard.build import build_leaderboard

    results = tmp_path / "results"
    shutil.copytree(EVAL, results / "eval")
    register_metric(Metric("toy_score", "toy score", "toy", ("toy.score",), "lower", "a toy diagnostic"))
    written = write_record(results / f"geometry-toy-{FP12}.json",
                          {"kind": "toy", "checkpoint": {"fingerprint": FP12}, "toy": {"score": 0.25}},
                          kind="geometry")
    assert [c["key"] for c in written["columns"]] == ["toy_score"]
    assert "columns" not in write_record(tmp_path / "h.json", {"kind": "hessian"}, kind="geometry")  # built-ins
    del METRICS["toy_score"]
    board = build_leaderboard(results, tmp_path / "board")
    assert get_metric("toy_score").title == "toy score"
    assert board.data["rows"][0]["geometry"]["toy_score"] == 0.25 and "toy score" in board.markdown
    # ... and its figure: the generic per-metric bars of `plot metrics`
    from grace_bench.cli import main

    assert main(["plot", "metrics", str(results), "--out", str(tmp_path / "fig"), "--format", "png"]) == 0
    assert (tmp_path / "fig" / "metric-toy_score.png").stat().st_size > 0


def test_a_malformed_declared_column_is_one_line(restore_metrics, tmp_path):
    for bad, match in (({"key": "x", "title": "x", "source": "toy", "paths": "x"}, "malformed"),
                       ({"key": "x", "title": "x", "source": "toy", "paths": ["x"], "fmt": "%%q"}, "malformed"),
                       ({"key": "x", "title": "x", "source": "hessian", "paths": ["x"]}, "another kind")):
        path = tmp_path / f"geometry-toy-{FP12}.json"
        path.write_text(json.dumps({"kind": "toy", "columns": [bad]}))
        with pytest.raises(UserError, match=match):
            load_geometry(tmp_path)
    assert "x" not in METRICS


def test_the_key_tables_live_only_in_the_metrics_table():
    """The readers that held near-copies of the key table (titles and JSON paths) now hold neither."""
    titles = {m.title for m in metrics()} - {"trace", "ID", "Adv", "HM"}  # short words that occur in prose too
    paths = {p for m in metrics("geometry") for p in m.paths if "." in p}
    for rel in ("grace_bench/leaderboard/collect.py", "grace_bench/leaderboard/build.py",
                "grace_bench/study/report.py", "grace_bench/leaderboard/by_method.py", "analysis/tables.py"):
        tree = ast.parse((REPO / rel).read_text())
        strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
        assert not (titles | paths) & strings, rel


def test_leaderboard_of_the_fixtures_reads_through_the_table(tmp_path):
    from grace_bench.leaderboard.build import build_leaderboard

    board = build_leaderboard(FIXTURES, tmp_path / "board")
    geo = board.data["rows"][0]["geometry"]
    hess = _raw(GEOMETRY / f"geometry-hessian-{FP12}.json")
    assert geo["lambda_max"] == hess["lambda_max"] and geo["trace_se"] == hess["trace"]["trace_se"]
    assert [c.key for c in board.columns if c.group == "geometry"] == ["lambda_max", "trace", "weight_drift",
                                                                      "cka_to_ref"]
    assert board.data["rows"][0]["aggregates"]["hm"] == _raw(EVAL / f"summary-{FP12}.json")["aggregates"]["hm"]


# ------------------------------------------------------------------ one writer


def test_write_record_stamps_schema_versions_hardware_and_time(tmp_path):
    path = tmp_path / "out" / "geometry-x-0123456789ab.json"
    path.parent.mkdir()
    written = write_record(path, {"kind": "x", "value": 1.5}, kind="geometry")
    saved = json.loads(path.read_text())
    assert saved == written and saved["schema"] == "grace-bench/geometry/v1" and saved["value"] == 1.5
    assert saved["created"].endswith("+00:00")
    runtime = saved["versions"]["runtime"]
    assert runtime["threads"] >= 1 and "cpu" in runtime and saved["versions"]["torch"]
    assert list(path.parent.iterdir()) == [path]  # atomic: no temporary file left behind
    kept = write_record(path, {"schema": "grace-bench/geometry/v0", "created": "then", "versions": {"a": "1"}},
                        kind="geometry")
    assert (kept["schema"], kept["created"], kept["versions"]) == ("grace-bench/geometry/v0", "then", {"a": "1"})
    with pytest.raises(ValueError, match="unknown record kind"):
        write_record(path, {}, kind="nope")


def test_eval_writes_results_and_summary_through_the_writer(tiny_clip, tmp_path, monkeypatch):
    from grace_bench.eval import context
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.run import run_eval
    from tests.helpers import register_tiny_suite

    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    context._MEMORY.clear()
    register_tiny_suite(n=16)
    out = tmp_path / "out"
    cfg = EvalConfig(checkpoint="tiny", suite="tiny-micro", out=out, attack="none", workers=0, batch_size=16,
                     progress=False, device="cpu", limit=8, datasets=["micro"])
    returned = run_eval(cfg, clip=tiny_clip)
    [summary] = load_summaries(out)
    assert summary.created and summary.versions["runtime"]["threads"] >= 1
    assert returned["created"] == summary.created
    [clean] = load_results(out)
    assert clean.created and clean.versions["runtime"]["threads"] >= 1 and clean.n == 8


# ------------------------------------------------------------------ helpers kept in one place


def test_harmonic_mean_has_one_semantics():
    assert harmonic_mean([0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert harmonic_mean([0.7421, 0.5701, 0.2244]) == pytest.approx(0.3969, abs=1e-4)
    assert harmonic_mean([0.5, 0.0]) == 0.0 and harmonic_mean([0.5, -0.1]) == 0.0
    assert harmonic_mean([]) is None and harmonic_mean([0.5, None]) is None
    assert harmonic_mean([0.5, math.nan]) is None and harmonic_mean([0.5, math.inf]) is None
    assert harmonic_mean(np.array([0.25, 0.75])) == pytest.approx(0.375)

    from grace_bench.eval import metrics as eval_metrics
    from grace_bench.leaderboard import by_method
    from grace_bench.plots import tradeoff

    for module in (eval_metrics, by_method, tradeoff):
        assert getattr(module, "harmonic_mean", harmonic_mean) is harmonic_mean, module.__name__


def test_eps_is_parsed_and_formatted_in_one_place():
    assert parse_fraction("4/255") == pytest.approx(4 / 255) and parse_fraction(" 1e-5 ") == 1e-5
    assert parse_fraction(-0.5) == -0.5
    for bad in ("1/0", "abc", True, None):
        with pytest.raises(ValueError):
            parse_fraction(bad)
    assert parse_eps("4/255") == parse_fraction("4/255")
    assert format_eps(4 / 255) == "4/255" and format_eps(0.25) == "0.25"  # configs (and hashes) keep repr
    assert describe_eps(0.25) == "1/4" and describe_eps("0.0156862745") == "4/255" and describe_eps(0) == "0"
    assert describe_eps(None) is None and describe_eps("garbled") == "garbled"

    from grace_bench.leaderboard import build, by_method, collect, robustbench

    for module in (collect, build, by_method, robustbench):
        assert module.format_eps is describe_eps, module.__name__


def test_a_zero_denominator_hyperparameter_is_a_user_error():
    """``--hparams lr=1/0`` used to escape as ZeroDivisionError (a traceback); now it is the usual one line."""
    from grace_bench.finetune.methods.base import coerce_like

    with pytest.raises(UserError, match="lr: cannot use '1/0'"):
        coerce_like(1e-5, "1/0", "lr")
    assert coerce_like(1e-5, "4/255", "eps") == pytest.approx(4 / 255)


def test_the_papers_table6_is_written_once():
    from analysis import table6_main
    from grace_bench.study import claims

    source = (REPO / "analysis" / "table6_main.py").read_text()
    assert "63.35" not in source and "39.69" not in source  # derived from claims.PAPER_TABLE6, not a copy
    assert table6_main.PAPER_TABLE6 == {k: (v["id"], v["ood_avg"], v["adv"], v["hm"])
                                        for k, v in claims.PAPER_TABLE6.items()}


# ------------------------------------------------------------------ the report draws through plots.draw


def test_report_calls_the_plot_library_without_faking_the_cli():
    from grace_bench.study import report

    source = inspect.getsource(report)
    for banned in ("argparse", "Namespace", "redirect_stdout", "StringIO", "run_plot", "splitlines"):
        assert banned not in source, banned


def test_draw_returns_the_files_it_wrote(tmp_path):
    from grace_bench import plots

    written = plots.draw("spectrum", [GEOMETRY], tmp_path / "fig", formats=["png"])
    assert written == [tmp_path / "fig" / "spectrum.png"] and written[0].stat().st_size > 0
    records = load_summaries(EVAL)
    written = plots.draw("tradeoff", records, tmp_path / "fig2", formats=["png", "svg"], radar=True)
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "fig2").iterdir())
    assert {p.suffix for p in written} == {".png", ".svg"} and len(written) == 4
    with pytest.raises(UserError, match="unknown plot kind"):
        plots.draw("nope", [GEOMETRY], tmp_path)
