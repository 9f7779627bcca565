"""Protocol presets: per-dataset zero-shot heads, every preset end to end on a tiny zero-shot suite, several ε per
run (each resumable), flags that make a run ``custom``, protocols kept apart in summaries, and ``--protocol list``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from grace_bench.data.suites import DatasetSpec, Suite, register_suite
from grace_bench.errors import UserError
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.protocols import PROTOCOLS, get_protocol
from grace_bench.eval.run import run_eval
from grace_bench.utils.hashing import text_list_hash
from tests.helpers import downsampled

NAMES_A = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES_A = ["a photo of the number {}.", "a drawing of {}."]
NAMES_B = ["small digit", "medium digit", "large digit", "huge digit", "odd digit"]
TEMPLATES_B = ["a blurry photo of a {}."]


def _five_classes(n: int):
    x, y = downsampled("micro-v2", "test", n).tensors
    return torch.utils.data.TensorDataset(x, y % 5)


def register_tiny_zero_shot(n: int = 12) -> Suite:
    """Two datasets with their own class names and templates, both attacked (like the zeroshot suite)."""
    specs = (
        DatasetSpec("digits-a", "zero-shot", lambda ctx: downsampled("micro", "test", n),
                    prompts=lambda ctx: (NAMES_A, TEMPLATES_A), attacked=True),
        DatasetSpec("digits-b", "zero-shot", lambda ctx: _five_classes(n),
                    prompts=lambda ctx: (NAMES_B, TEMPLATES_B), attacked=True),
    )
    suite = Suite("tiny-zs", NAMES_A, ["{}"], specs, attack="pgd[steps=2,step=1/255]", eps="2/255", n_adv=4,
                  loader_workers=0)
    register_suite("tiny-zs", lambda: suite)
    return suite


def _cfg(tmp_path, **kw) -> EvalConfig:
    base = {"checkpoint": "tiny", "suite": "tiny-zs", "out": tmp_path / "out", "workers": 0, "batch_size": 16,
            "progress": False}
    return EvalConfig(**{**base, **kw})


def _records(tmp_path, kind: str) -> list[dict]:
    files = sorted((tmp_path / "out" / "results").rglob(f"*-{kind}-*.json"))
    return [json.loads(f.read_text()) for f in files]


def test_each_dataset_uses_its_own_head_and_records_its_prompt_hashes(tiny_clip, tmp_path):
    from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head

    register_tiny_zero_shot()
    summary = run_eval(_cfg(tmp_path), clip=tiny_clip)
    clean = {r["dataset"]["name"]: r for r in _records(tmp_path, "clean")}
    assert clean["digits-a"]["config"]["classnames"] == text_list_hash(NAMES_A)
    assert clean["digits-b"]["config"]["classnames"] == text_list_hash(NAMES_B)
    assert clean["digits-b"]["config"]["templates"] == text_list_hash(TEMPLATES_B)
    assert clean["digits-b"]["dataset"]["classes"] == 5
    x, y = _five_classes(12).tensors
    head = build_zero_shot_head(tiny_clip.model, tiny_clip.tokenizer, NAMES_B, TEMPLATES_B)
    clf = ZeroShotClassifier(tiny_clip.model, head, tiny_clip.mean, tiny_clip.std).eval()
    with torch.no_grad():
        expected = (clf(x).argmax(1) == y).float().mean().item()
    assert summary["per_dataset"]["digits-b"]["top1"] == pytest.approx(expected)
    adv = {r["dataset"]["name"]: r for r in _records(tmp_path, "adversarial")}
    assert set(adv) == {"digits-a", "digits-b"}  # attacked=True: both get the adversarial protocol
    assert adv["digits-b"]["config"]["classnames"] == text_list_hash(NAMES_B)


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_every_preset_runs_end_to_end_on_a_tiny_zero_shot_suite(name, tiny_clip, tmp_path):
    register_tiny_zero_shot()
    preset = get_protocol(name)
    summary = run_eval(_cfg(tmp_path, protocol=name, limit=3), clip=tiny_clip)
    adv = _records(tmp_path, "adversarial")
    eps_list = list(preset.eps or ["2/255"])
    assert sorted((r["dataset"]["name"], r["config"]["eps"]) for r in adv) == sorted(
        (d, e) for d in ("digits-a", "digits-b") for e in eps_list)
    for record in adv + _records(tmp_path, "clean"):
        assert record["protocol_preset"]["name"] == name
    for record in adv:  # each result records the settings it was computed with
        assert record["protocol_preset"]["settings"]["eps"] == record["config"]["eps"]
        assert record["protocol_preset"]["settings"]["seed"] == 0
    assert summary["protocol"]["preset_settings"]["eps"] == eps_list
    if preset.attack:
        assert {r["metrics"]["attack"] for r in adv} == {preset.attack}
    if preset.templates:  # the preset's templates replace each dataset's own, class names stay the dataset's
        clean = {r["dataset"]["name"]: r for r in _records(tmp_path, "clean")}
        assert clean["digits-b"]["config"]["templates"] == text_list_hash(preset.templates)
        assert clean["digits-b"]["config"]["classnames"] == text_list_hash(NAMES_B)
    suffix = "" if name == "grace" else f"-{name}"
    path = tmp_path / "out" / f"summary-{tiny_clip.fingerprint()[:12]}{suffix}.json"
    assert json.loads(path.read_text())["protocol"]["preset"] == name
    from grace_bench.eval.report import format_summary

    table = format_summary(summary)  # the default protocol's console table is unchanged; a preset names itself
    assert ("protocol:" in table) == (name != "grace") and "zero-shot average" in table  # a zero-shot suite
    if name != "grace":
        assert set(summary["zero_shot"]) == set(eps_list)
        z = summary["zero_shot"][eps_list[0]]
        robust = [summary["adversarial_by_eps"][eps_list[0]][d]["robust_acc"] for d in ("digits-a", "digits-b")]
        assert z["robust_avg"] == pytest.approx(sum(robust) / 2)


def test_several_eps_share_the_clean_pass_and_resume_each_on_its_own(tiny_clip, tmp_path, monkeypatch):
    import grace_bench.attacks.evaluate as evaluate_mod

    register_tiny_zero_shot()
    real = evaluate_mod.evaluate_adversarial
    calls: list[str] = []

    class Killed(Exception):
        pass

    def dying(*args, **kw):
        calls.append(kw["eps"])
        if kw["eps"] == "2/255":
            raise Killed
        return real(*args, **kw)

    monkeypatch.setattr(evaluate_mod, "evaluate_adversarial", dying)
    cfg = _cfg(tmp_path, eps="1/255,2/255", datasets=["digits-a"])
    with pytest.raises(Killed):
        run_eval(cfg, clip=tiny_clip)
    done = sorted((tmp_path / "out" / "results").rglob("*-adversarial-*.json"))
    assert len(done) == 1 and json.loads(done[0].read_text())["config"]["eps"] == "1/255"
    mtime = done[0].stat().st_mtime_ns
    clean = sorted((tmp_path / "out" / "results").rglob("*-clean-*.json"))
    assert len(clean) == 1
    calls.clear()
    monkeypatch.setattr(evaluate_mod, "evaluate_adversarial",
                        lambda *a, **kw: calls.append(kw["eps"]) or real(*a, **kw))
    summary = run_eval(cfg, clip=tiny_clip)
    assert calls == ["2/255"]  # the finished ε is not redone
    assert done[0].stat().st_mtime_ns == mtime
    assert sorted((tmp_path / "out" / "results").rglob("*-clean-*.json")) == clean  # one clean pass for both ε
    assert set(summary["adversarial_by_eps"]) == {"1/255", "2/255"}
    assert summary["protocol"]["preset"] == "custom" and summary["protocol"]["based_on"] == "grace"
    # the suite's ε (2/255) gives exactly grace's result, so that file is named grace; 1/255 is custom
    names = {r["config"]["eps"]: r["protocol_preset"]["name"] for r in _records(tmp_path, "adversarial")}
    assert names == {"1/255": "custom", "2/255": "grace"}


def test_flags_that_differ_from_the_preset_make_the_run_custom(tiny_clip, tmp_path):
    register_tiny_zero_shot()
    run_eval(_cfg(tmp_path, protocol="tecoa", n_adv=2, datasets=["digits-a"]), clip=tiny_clip)
    (adv,) = _records(tmp_path, "adversarial")
    assert adv["protocol_preset"]["name"] == "custom"
    assert adv["protocol_preset"]["based_on"] == "tecoa"
    assert adv["protocol_preset"]["overrides"] == ["n_adv"]
    assert adv["config"]["preset"] == "custom:tecoa" and adv["metrics"]["n"] == 2
    assert (tmp_path / "out" / f"summary-{tiny_clip.fingerprint()[:12]}-custom-tecoa.json").exists()
    (clean,) = _records(tmp_path, "clean")  # --n-adv does not change the clean pass: it is tecoa's own
    assert clean["protocol_preset"]["name"] == "tecoa" and clean["config"]["preset"] == "tecoa"
    (clean_file,) = (tmp_path / "out" / "results").rglob("*-clean-*.json")
    mtime = clean_file.stat().st_mtime_ns
    run_eval(_cfg(tmp_path, protocol="tecoa", datasets=["digits-a"]), clip=tiny_clip)  # the plain preset reuses it
    assert list((tmp_path / "out" / "results").rglob("*-clean-*.json")) == [clean_file]
    assert clean_file.stat().st_mtime_ns == mtime


def test_a_flag_equal_to_the_preset_keeps_its_name_and_result_files(tiny_clip, tmp_path):
    register_tiny_zero_shot()
    run_eval(_cfg(tmp_path, datasets=["digits-a"]), clip=tiny_clip)
    before = sorted(p.name for p in (tmp_path / "out" / "results").rglob("*.json"))
    run_eval(_cfg(tmp_path, datasets=["digits-a"], eps="2/255", seed=0, attack="pgd[steps=2,step=1/255]"),
             clip=tiny_clip)
    assert sorted(p.name for p in (tmp_path / "out" / "results").rglob("*.json")) == before
    assert {r["protocol_preset"]["name"] for r in _records(tmp_path, "adversarial")} == {"grace"}


def test_summaries_keep_protocols_apart(tiny_clip, tmp_path):
    register_tiny_zero_shot()
    tecoa = run_eval(_cfg(tmp_path, protocol="tecoa", limit=3, datasets=["digits-a"]), clip=tiny_clip)
    grace = run_eval(_cfg(tmp_path, limit=3, datasets=["digits-a"]), clip=tiny_clip)
    assert tecoa["adversarial"]["digits-a"]["attack"] == "pgd[steps=100,step=1/255]"
    assert grace["adversarial"]["digits-a"]["attack"] == "pgd[steps=2,step=1/255]"
    assert grace["adversarial"]["digits-a"]["eps"] == "2/255"
    # the grace summary never picks the tecoa clean result (1 template) for its own prompts
    assert grace["per_dataset"]["digits-a"]["result_file"] != tecoa["per_dataset"]["digits-a"]["result_file"]


def test_unknown_protocol_and_bad_eps_list_fail_before_any_work(tmp_path):
    from grace_bench.eval.plan import plan_eval

    with pytest.raises(UserError, match="unknown protocol 'tecao'; did you mean 'tecoa'"):
        plan_eval(EvalConfig(checkpoint="micro", suite="micro", out=tmp_path, protocol="tecao"))
    with pytest.raises(UserError, match="empty entry"):
        plan_eval(EvalConfig(checkpoint="micro", suite="micro", out=tmp_path, eps="2/255,"))
    with pytest.raises(UserError, match="invalid eps"):
        plan_eval(EvalConfig(checkpoint="micro", suite="micro", out=tmp_path, eps="2/255,x"))


def test_preset_attacks_parse_and_fare_runs_five_apgd_ce_restarts():
    from grace_bench.attacks.threat import parse_attack_spec

    for name in PROTOCOLS.names():
        attack = get_protocol(name).attack
        if attack:
            assert parse_attack_spec(attack).name == attack  # presets store the canonical name
    settings = parse_attack_spec(get_protocol("fare").attack).settings_dict()
    assert settings["apgd-ce"]["restarts"] == "5" and settings["apgd-t"]["targets"] == "9"


def test_protocol_list_prints_every_preset_with_sources_without_torch():
    code = ("import sys; from grace_bench.cli import main; rc = main(['eval', '--protocol', 'list']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in PROTOCOLS.names():
        assert f"\n{name}: " in "\n" + out
    assert "chs20/RobustVLM@" in out and "cvlab-columbia/ZSRobust4FoundationModel@" in out
    assert "zhyblue424/TGA-ZSR@" in out


@pytest.mark.slow  # micro-CLIP under PGD-100 / APGD-CE 5x100 + APGD-T: ~10 s and ~20 s on 2 cores
@pytest.mark.parametrize("name, args", [("tecoa", ["--limit", "3", "--datasets", "micro", "micro-v2"]),
                                        ("fare", ["--limit", "1", "--datasets", "micro"])])
def test_micro_cli_runs_a_preset_and_writes_per_eps_results_naming_it(name, args, tmp_path, capsys):
    from grace_bench.cli import main

    out = tmp_path / "out"
    assert main(["eval", "micro", "--protocol", name, "--out", str(out), "--no-progress", *args]) == 0
    printed = capsys.readouterr().out
    assert f"protocol: {name}" in printed and f"-{name}.json" in printed
    adv = [json.loads(p.read_text()) for p in sorted(out.rglob("*-adversarial-*.json"))]
    eps_list = list(get_protocol(name).eps)
    assert {r["config"]["eps"] for r in adv} == set(eps_list)
    assert {r["protocol_preset"]["name"] for r in adv} == {name}
    assert len(adv) == len(eps_list) * len({r["dataset"]["name"] for r in adv})


def test_leaderboard_builds_one_table_per_protocol_and_never_mixes(tiny_clip, tmp_path):
    from grace_bench.leaderboard.build import build_leaderboard, build_per_protocol

    register_tiny_zero_shot()
    run_eval(_cfg(tmp_path, limit=3), clip=tiny_clip)
    tecoa = run_eval(_cfg(tmp_path, protocol="tecoa", limit=3), clip=tiny_clip)
    with pytest.raises(UserError, match=r"several protocols \(grace, tecoa\)"):
        build_leaderboard(tmp_path / "out", tmp_path / "board")
    boards = build_per_protocol(tmp_path / "out", tmp_path / "board")
    assert sorted(b.files[0].parent.name for b in boards) == ["grace", "tecoa"]
    table = (tmp_path / "board" / "tecoa" / "zero_shot.md").read_text()
    robust = [tecoa["adversarial"][d]["robust_acc"] for d in ("digits-a", "digits-b")]
    avg = f"{100 * sum(robust) / 2:.2f}"
    assert any(line.startswith("| ") and line.split("|")[-3].strip() == avg for line in table.splitlines())
    assert "PGD 100 steps of 1/255" in (tmp_path / "board" / "tecoa" / "leaderboard.md").read_text()
    assert "PGD 2 steps of 1/255" in (tmp_path / "board" / "grace" / "leaderboard.md").read_text()
    assert (tmp_path / "board" / "grace" / "zero_shot.md").exists()  # a zero-shot suite: under grace too


def test_zero_shot_table_script_quotes_the_papers_with_sources(tiny_clip, tmp_path, capsys):
    from analysis.zero_shot_table import main

    register_tiny_zero_shot()
    run_eval(_cfg(tmp_path, protocol="tga-zsr", limit=3), clip=tiny_clip)
    assert main([str(tmp_path / "out"), "--protocol", "tga-zsr", "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| digits-a | digits-b | Average | Average w/o ImageNet |" in text
    assert "| TGA-ZSR [TGA-ZSR] (quoted) | — | — | 42.09 | — |" in text
    assert "zhyblue424/TGA-ZSR@663fe573dc9609893bb47b2d8303c034d9dd2ded README.md:107" in text
    assert "[FARE]" not in text  # FARE's own numbers are quoted only under its protocol


def test_summary_files_of_every_protocol_load_and_old_ones_count_as_grace(tmp_path):
    from grace_bench.results.records import SUMMARY_NAME, SummaryRecord

    assert SUMMARY_NAME.match("summary-0123456789ab.json").group("family") is None
    assert SUMMARY_NAME.match("summary-0123456789ab-custom-tecoa.json").group("family") == "custom-tecoa"
    assert SUMMARY_NAME.match("summary-0123456789ab-../x.json") is None
    old = SummaryRecord.from_json({"protocol": {"attack": "apgd-ce"}}, tmp_path / "summary-0123456789ab.json")
    assert old.protocol_family == "grace"


def test_zero_shot_table_keeps_the_papers_dataset_order_and_averages_without_imagenet():
    from grace_bench.eval.summary import zero_shot_aggregates
    from grace_bench.leaderboard.zero_shot import zero_shot_markdown

    per = {"imagenet1k": {"top1": 0.6}, "pets": {"top1": 0.8}, "cifar10": {"top1": 0.9}}
    adv = {"imagenet1k": {"robust_acc": 0.2, "n": 5}, "pets": {"robust_acc": 0.4, "n": 5},
           "cifar10": {"robust_acc": 0.3, "n": 5}}
    z = zero_shot_aggregates(per, {"1/255": adv}, ["pets", "cifar10", "imagenet1k"])["1/255"]
    assert z["order"] == ["pets", "cifar10", "imagenet1k"]
    assert z["robust_avg"] == pytest.approx(0.3) and z["robust_avg_without_imagenet"] == pytest.approx(0.35)
    assert z["clean_avg_without_imagenet"] == pytest.approx(0.85)
    text = zero_shot_markdown([{"label": "m", "zero_shot": {"1/255": z}}])
    assert "| model | pets | cifar10 | imagenet1k | Average | Average w/o ImageNet |" in text
    assert "| m | 40.00 | 30.00 | 20.00 | 30.00 | 35.00 |" in text
