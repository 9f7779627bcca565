"""The analysis/ scripts: Tables 6-8 (as subprocesses and in-process) and the figure rebuild, on synthetic
summaries written in the eval harness's schema (``tests/test_by_method.eval_summary``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import figures, table6_main, table7_lora, table8_ablations
from analysis.tables import entry, parse_labels_map
from grace_bench.errors import UserError
from grace_bench.plots.api import slug
from tests.test_by_method import ROLES, eval_summary, fingerprint, random_seeds
from tests.test_leaderboard import write_geometry, write_landscape_2d

REPO = Path(__file__).resolve().parents[1]
GRACE_DOC = REPO / "docs" / "grace.md"  # the project's own account of the method


def table_rows(markdown: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Header and {method: {column: cell}} of the first Markdown table in ``markdown``."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head = split[0]
    return head, {r[0]: dict(zip(head, r)) for r in split[2:]}


def note(markdown: str, start: str) -> str:
    found = [ln for ln in markdown.splitlines() if ln.startswith(f"- {start}")]
    assert len(found) == 1, markdown
    return found[0]


def pm(values: np.ndarray) -> str:
    """Expected 'mean ± std' cell (percent) computed with numpy."""
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "analysis" / name), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def study(tmp_path):
    """zero-shot (1 seed), ft (2), tecoa (2), grace (3, geometry for two), a WiSE-FT α=0.25 point."""
    rng = np.random.default_rng(11)
    root = tmp_path / "results"
    vals = {"zero-shot": random_seeds(root, "zero-shot", 1, rng), "ft": random_seeds(root / "ft", "ft", 2, rng),
            "tecoa": random_seeds(root / "tecoa", "tecoa", 2, rng), "grace": random_seeds(root, "grace", 3, rng),
            "wise-ft α=0.25": random_seeds(root, "wise-ft α=0.25", 1, rng)}
    write_geometry(root, "grace-s0", scale=1.0)
    write_geometry(root, "grace-s1", scale=2.0)
    return root, vals


def test_table6_script_with_paper_columns(study, tmp_path):
    root, vals = study
    out, js = tmp_path / "tables" / "t6.md", tmp_path / "tables" / "t6.json"
    proc = run_script("table6_main.py", root, "--out", out, "--json", js, "--paper")
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    assert proc.stdout.startswith(md)
    head, rows = table_rows(md)
    robust = "robust (APGD-CE 1×100, ε=4/255 ℓ∞)"  # named after the attack the summaries recorded
    assert head[:8] == ["method", "n", "ID", "OOD avg", "Adv", "HM", robust, "Nat-adv"]
    assert head[-4:] == ["paper ID", "paper OOD avg", "paper Adv", "paper HM"]
    assert {"λ_max", "weight drift"} <= set(head)
    assert list(rows) == ["zero-shot", "ft", "tecoa", "grace"]  # the paper's order, absent rows not invented
    g = vals["grace"]
    assert rows["grace"]["n"] == "3"
    assert rows["grace"]["ID"] == pm(g[:, 0])
    assert rows["grace"]["OOD avg"] == pm(g[:, 1:4].mean(axis=1))
    assert rows["grace"][robust] == pm(g[:, 5])
    assert rows["grace"]["λ_max"] == f"{np.mean([30.0, 60.0]):.4g} ± {np.std([30.0, 60.0], ddof=1):.2g} (2/3)"
    assert rows["ft"]["λ_max"] == "—"
    assert rows["zero-shot"]["ID"] == f"{100 * vals['zero-shot'][0, 0]:.2f}"  # one seed: no ± std
    assert [rows["grace"][f"paper {c}"] for c in ("ID", "OOD avg", "Adv", "HM")] == ["74.21", "57.01", "22.44",
                                                                                   "39.69"]
    assert rows["ft"]["paper ID"] == "74.86"
    assert note(md, "Not in the results").endswith(": wise-ft, flyp, fare, pmg-aft.")
    assert "wise-ft α=0.25" in note(md, "Other labels")
    assert "Robust = APGD-CE 1×100 (apgd-ce) Linf ε=4/255 on n=250" in note(md, "Protocol")
    assert "within 0.05 (checked)" in note(md, "paper columns")
    data = json.loads(js.read_text())
    assert [r["label"] for r in data["rows"]] == list(rows)
    assert data["missing"] == ["wise-ft", "flyp", "fare", "pmg-aft"]
    grace = data["rows"][3]
    ood = g[:, 1:4].mean(axis=1)
    adv = (g[:, 5] + g[:, 4]) / 2
    assert grace["hm_of_means"] == pytest.approx(3 / (1 / g[:, 0].mean() + 1 / ood.mean() + 1 / adv.mean()))
    assert grace["hm_mean_of_seeds"] == pytest.approx(np.mean(3 / (1 / g[:, 0] + 1 / ood + 1 / adv)))
    assert data["paper"]["rows"]["grace"]["hm_recomputed"] == pytest.approx(39.69, abs=0.05)


def test_script_errors_exit_2_in_one_line(study):
    root, _ = study
    eval_summary(root, "grace", 9, dict(zip(ROLES, [0.9, 0.5, 0.3, 0.4, 0.2])), 0.1, protocol={"n_adv": 100})
    proc = run_script("table8_ablations.py", root)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: label 'grace' pools summaries with different protocols")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert run_script("table8_ablations.py", root, "--allow-mixed").returncode == 0


def test_table7_rows_and_tuning_column(study, tmp_path, capsys):
    root, vals = study
    rng = np.random.default_rng(5)
    lora = {"ft-lora": random_seeds(root, "ft-lora", 2, rng), "tecoa-lora": random_seeds(root, "tecoa-lora", 3, rng)}
    assert table7_lora.main([str(root), "--per-dataset", "--hm-of-means"]) == 0
    md = capsys.readouterr().out
    head, rows = table_rows(md)
    assert list(rows) == ["ft-lora", "tecoa-lora", "grace", "ft", "tecoa"]
    assert head[:3] == ["method", "tuning", "n"]
    assert head[head.index("HM") + 1] == "HM(means)"
    assert head[-5:] == list(ROLES)[:1] + ["micro-v2", "micro-sketch", "micro-r", "micro-a"]
    assert rows["tecoa"]["tuning"] == "full (reference)" and rows["ft-lora"]["tuning"] == "LoRA"
    assert rows["tecoa-lora"]["micro-sketch"] == pm(lora["tecoa-lora"][:, 2])
    assert rows["ft"]["n"] == "2" and rows["ft"]["Nat-adv"] == pm(vals["ft"][:, 4])
    assert not [ln for ln in md.splitlines() if ln.startswith("- Not in the results")]


def test_table8_missing_rows_and_labels_map(tmp_path, capsys):
    root = tmp_path / "res"
    rng = np.random.default_rng(2)
    gv = random_seeds(root, "runs/abl-gv", 2, rng)
    random_seeds(root, "grace", 1, rng)
    mapping = tmp_path / "labels.json"
    mapping.write_text(json.dumps({"runs/abl-gv": "grace-gv"}))
    out = tmp_path / "t8.md"
    assert table8_ablations.main([str(root), "--labels-map", str(mapping), "--out", str(out)]) == 0
    md = out.read_text()
    assert capsys.readouterr().out.startswith(md)
    _, rows = table_rows(md)
    assert list(rows) == ["grace-gv", "grace"]
    assert rows["grace-gv"]["configuration"] == "+ GV only"
    assert rows["grace-gv"]["Adv"] == pm((gv[:, 5] + gv[:, 4]) / 2)
    assert note(md, "Not in the results").endswith(": grace-lora-ft, grace-awp-uniform, grace-awp-curriculum.")
    # no label of the table present: a clear error, nothing written
    code = entry(lambda: table8_ablations.main([str(root), "--out", str(tmp_path / "none.md"),
                                                "--labels-map", '{"grace": "other"}']))
    assert code == 2 and not (tmp_path / "none.md").exists()
    assert "error: none of grace-lora-ft" in capsys.readouterr().err


def test_labels_map_parsing(tmp_path):
    assert parse_labels_map('{"a": "b"}') == {"a": "b"}
    assert parse_labels_map(None) == {}
    for bad in ('{"a": 1}', "{nope", str(tmp_path / "absent.json")):
        with pytest.raises(UserError, match="--labels-map"):
            parse_labels_map(bad)


def test_paper_hm_recomputes():
    recomputed = table6_main.check_paper_hm()
    assert set(recomputed) == set(table6_main.PAPER_TABLE6)
    for label, (_, _, _, hm) in table6_main.PAPER_TABLE6.items():
        assert abs(recomputed[label] - hm) <= 0.05
    broken = {**table6_main.PAPER_TABLE6, "grace": (74.21, 57.01, 24.44, 39.69)}  # one mistyped digit
    with pytest.raises(ValueError, match="paper row grace"):
        table6_main.check_paper_hm(broken)


def test_paper_numbers_match_the_method_doc():
    """The paper's Table 6 is written once in docs/grace.md; both code copies must equal it."""
    from grace_bench.study.claims import PAPER_TABLE6 as STUDY_TABLE6

    text = GRACE_DOC.read_text().split("## The paper's headline numbers", 1)[1].split("\n## ", 1)[0]
    names = {"zero-shot": "zero-shot", "FT": "ft", "WiSE-FT": "wise-ft", "TeCoA": "tecoa", "PMG-AFT": "pmg-aft",
             "GRACE": "grace"}
    found = {}
    for m in re.finditer(r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M):
        found[names[m.group(1)]] = tuple(float(m.group(i)) for i in range(2, 6))
    assert len(found) == 6
    assert found == table6_main.PAPER_TABLE6
    assert {k: (v["id"], v["ood_avg"], v["adv"], v["hm"]) for k, v in STUDY_TABLE6.items()} == found


def test_figures_draw_what_exists_and_skip_the_rest(study, tmp_path, capsys):
    root, _ = study
    write_landscape_2d(root, "grace", 1.0)
    out = tmp_path / "fig"
    assert figures.main([str(root), "--out", str(out), "--format", "png", "--no-surface"]) == 0
    printed = capsys.readouterr().out
    fps = [fingerprint(f"grace-s{s}")[:7] for s in (0, 1)]
    cka = [f"cka-layers-{slug(f'grace ({fp})')}.png" for fp in fps]
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if not n.startswith("metric-")] == sorted(
        ["landscape-1d.png", "landscape-2d.png", "spectrum.png", "curvature.png", *cka, "cka-methods.png",
         "tradeoff.png", "tradeoff-radar.png"])
    assert {"metric-lambda_max.png", "metric-trace.png", "metric-cka_to_ref.png"} <= set(names)  # `plot metrics`
    for stem in ("landscape-1d", "landscape-2d", "spectrum", "curvature", "cka-methods", "tradeoff",
                 "tradeoff-radar"):
        assert (out / f"{stem}.png").stat().st_size > 1000
    assert "note: skipped wise: fewer than two summaries record a WiSE-FT alpha" in printed
    assert "note: skipped training: no runs/NAME/log.jsonl" in printed
    last = printed.strip().splitlines()[-1]
    assert last.startswith("drew landscape, spectrum, curvature, cka, tradeoff, metrics into")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no figure could be drawn"):
        figures.main([str(empty), "--out", str(tmp_path / "nothing")])
